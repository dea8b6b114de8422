"""Sentiment of Rotten Tomatoes snippets (fresh / rotten; 10,248 / 1,280 / 1,280, seeded) from
all-MiniLM-L6-v2 (`init_from="minilm"`: 6 layers, 384 wide, 22.6 M parameters; the architecture
and the WordPiece tokenizer come from the checkpoint, the 2-way head over the mean of the token
states is new). Variants:

  (none)    full fine-tuning: AdamW 1e-4, 3 epochs, linear decay after 10% warm-up
  :lora     LoRA adapters (rank 8, alpha 16) on every attention and MLP projection, the
            encoder frozen (checkpoints hold the adapters and the head only), AdamW 1e-3
  :frozen   the encoder frozen, the head alone trained: logistic regression on the frozen
            mean-pooled features (Adam 1e-2, 3 epochs; the backward pass stops at the head)
  :test     two steps on a few hundred snippets (also `:lora,test`, `:frozen,test`)

    python launch.py --config configs/rotten_tomatoes_minilm.py --workdir runs/rt_minilm
"""

from configs._short import short_run
from dlx.train.config import base_config

ATTENTION_AND_MLP = r"h_\d+/(attn/(qkv|proj)|mlp/(fc|proj))"


def get_config(arg: str | None = None):
    config = base_config("text_classification")
    config.data.name = "rotten_tomatoes"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.max_length = 64  # 99.9% of the snippets are shorter
    config.data.batch_size = 32
    config.data.eval_batch_size = 256
    config.init_from = "minilm"
    config.model = dict(name="transformer", pooling="mean")
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule = "linear"
    config.optimizer.warmup_steps = 96  # 10% of the 3 epochs' 961 steps
    config.num_epochs = 3.0
    config.eval_every_epochs = 1.0
    config.checkpoint_every_epochs = 1.0
    config.keep_checkpoints = 1
    parts = [part for part in (arg or "").split(",") if part]
    test = "test" in parts
    variant = "".join(part for part in parts if part != "test")
    if variant == "lora":
        config.lora.update(rank=8, alpha=16.0, dropout=0.1, targets=ATTENTION_AND_MLP)
        config.optimizer.frozen = r"model/(?!classifier/).*"
        config.optimizer.learning_rate = 1e-3
        config.checkpoint_frozen = False
    elif variant == "frozen":
        config.optimizer.frozen = r"(?!classifier/).*"
        config.optimizer.name = "adam"
        config.optimizer.learning_rate = 1e-2
        config.optimizer.weight_decay = 0.0
        config.optimizer.schedule = "constant"
        config.optimizer.warmup_steps = 0
        config.checkpoint_frozen = False
    elif variant:
        raise ValueError(f"unknown variant '{variant}' of rotten_tomatoes_minilm; use lora, frozen")
    if test:
        config.data.max_length = 32
        config.data.eval_batch_size = 64
        config.optimizer.warmup_steps = 0
        short_run(config, steps=2, eval_every=2, checkpoint_every=2, eval_examples=128)
    return config
