"""Character-level GPT on the 42 works of Shakespeare (nanoGPT-sized: 6 layers, 384 wide,
6 heads, context 256; ~10.7 M parameters). That size wants an accelerator: on a 2-core CPU a
step takes seconds. Variants: `:small` (4 layers, 128 wide, context 128: trains in minutes on
2 cores), `:test` (tiny, a few steps).

    python launch.py --config configs/shakespeare_gpt.py:small --workdir runs/gpt_small
    python launch.py sample --workdir runs/gpt_small --prompt "ROMEO:" --max_new_tokens 300
"""
from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.task = "language_model"
    config.data.name = "shakespeare"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.tokenizer = "char"
    config.data.seq_len = 256
    config.data.batch_size = 64
    config.data.eval_batch_size = 64
    config.model = dict(name="transformer", kind="decoder", vocab_size=0,  # 0: the tokenizer's
                        num_layers=6, embed_dim=384, num_heads=6, max_len=256, dropout=0.2)
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b2 = 0.99
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.end_lr_factor = 0.1
    config.optimizer.weight_decay = 0.1
    config.optimizer.clip_global_norm = 1.0
    config.train_steps = 5000
    config.eval_every_epochs = 0.0
    config.eval_every_steps = 500
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = 500
    config.log_every_steps = 50
    config.decoding.prompt = "\n"
    config.decoding.max_new_tokens = 300
    if arg == "small":
        config.model.update(num_layers=4, embed_dim=128, num_heads=4, max_len=128, dropout=0.1)
        config.data.seq_len = 128
        config.data.batch_size = 32
        config.data.eval_batch_size = 64
        config.optimizer.learning_rate = 2e-3
        config.train_steps = 2000
        config.eval_every_steps = 250
        config.checkpoint_every_steps = 500
    elif arg == "test":
        config.model.update(num_layers=2, embed_dim=32, num_heads=2, max_len=32, dropout=0.0)
        config.data.seq_len = 32
        config.data.batch_size = 16
        config.data.eval_batch_size = 16
        config.optimizer.warmup_steps = 2
        config.train_steps = 6
        config.eval_every_steps = 3
        config.checkpoint_every_steps = 3
        config.log_every_steps = 2
        config.decoding.max_new_tokens = 20
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of shakespeare_gpt; use small or test")
    return config
