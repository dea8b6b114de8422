"""What the Shakespeare character-level LM configs share: data, windows, schedule, durations
and the sizes of the `:small` and `:test` variants, so GPT, LSTM and GRU runs compare at equal
steps. Each config adds its model and optimizer values."""

from dlx.train.config import base_config

VARIANTS = ("small", "test")


def shakespeare_lm_config(arg: str | None, config_name: str):
    if arg and arg not in VARIANTS:
        raise ValueError(f"unknown variant '{arg}' of {config_name}; use small or test")
    config = base_config("language_model")
    config.data.name = "shakespeare"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.tokenizer = "char"
    config.data.seq_len = 256
    config.data.batch_size = 64
    config.data.eval_batch_size = 64
    config.optimizer.name = "adamw"
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.end_lr_factor = 0.1
    config.optimizer.clip_global_norm = 1.0
    config.train_steps = 5000
    config.eval_every_epochs = 0.0
    config.eval_every_steps = 500
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = 500
    config.decoding.max_new_tokens = 300
    if arg == "small":
        config.data.seq_len = 128
        config.data.batch_size = 32
        config.train_steps = 2000
        config.eval_every_steps = 250
    elif arg == "test":
        config.data.seq_len = 32
        config.data.batch_size = 16
        # One of the four validation works in 13 batches: the whole split in batches of 16 is
        # 868 evaluation steps, most of a tiny run's time.
        config.data.eval_split = "validation[:1]"
        config.data.eval_batch_size = 256
        config.optimizer.warmup_steps = 2
        config.train_steps = 6
        config.eval_every_steps = 3
        config.checkpoint_every_steps = 3
        config.log_every_steps = 2
        config.decoding.max_new_tokens = 20
    return config
