"""LoRA fine-tuning of SmolLM2-135M-Instruct (`init_from="smollm2"`, the GGUF the Makefile
installs, dequantised to float32) on Shakespeare, in a budget of these 2-core machines: rank-8
adapters on every attention and MLP projection of the 30 layers (the 135 M base weights frozen
and left out of the checkpoints), windows of 128 of the checkpoint's own BPE tokens, 150 steps
of 8 windows. Eval is on the first validation play (`validation[:1]`, Macbeth) with samples
from a Shakespearean prompt. Variant `:base` is the model before fine-tuning: one step at
learning rate 0 (LoRA's B starts at zero, so the run evaluates and samples the base model).

    python launch.py --config configs/shakespeare_smollm2_lora.py --workdir runs/smollm2_lora
    python launch.py --config configs/shakespeare_smollm2_lora.py:base --workdir runs/smollm2_base
"""

from dlx.train.config import base_config

PROJECTIONS = r"h_\d+/(attn/(query|kv|proj)|mlp/(gate|up|down))"


def get_config(arg: str | None = None):
    if arg not in (None, "", "base"):
        raise ValueError(f"unknown variant '{arg}' of shakespeare_smollm2_lora; use base")
    config = base_config("language_model")
    config.init_from = "smollm2"
    config.data.name = "shakespeare"
    config.data.train_split = "train"
    config.data.eval_split = "validation[:1]"
    config.data.tokenizer = "pretrained"
    config.data.seq_len = 128
    config.data.batch_size = 8
    config.data.eval_batch_size = 32
    config.model = dict(name="transformer")
    config.lora.update(rank=8, alpha=16.0, dropout=0.05, targets=PROJECTIONS)
    config.optimizer.frozen = "model/.*"
    config.checkpoint_frozen = False
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 15
    config.optimizer.end_lr_factor = 0.1
    config.optimizer.clip_global_norm = 1.0
    config.train_steps = 150
    config.eval_every_epochs = 0.0
    config.eval_every_steps = 150
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = 50
    config.log_every_steps = 10
    config.keep_checkpoints = 1
    config.decoding.update(
        prompt="ROMEO:\n", num_samples=2, max_new_tokens=60, temperature=0.8, top_k=40
    )
    if arg == "base":
        config.optimizer.update(learning_rate=0.0, schedule="constant", warmup_steps=0)
        config.train_steps = 1
        config.eval_every_steps = 1
        config.checkpoint_every_steps = 1
    return config
