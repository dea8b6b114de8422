"""Shared by shakespeare_lstm.py and shakespeare_gru.py: a character-level recurrent language
model on the 42 works of Shakespeare, with the same data, windows and budget as the GPT configs
so validation losses compare at equal steps."""
from dlx.train.config import base_config


def recurrent_lm_config(cell: str, arg: str | None):
    config = base_config()
    config.task = "language_model"
    config.data.name = "shakespeare"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.tokenizer = "char"
    config.data.seq_len = 256
    config.data.batch_size = 64
    config.data.eval_batch_size = 64
    config.model = dict(name="recurrent", cell=cell, vocab_size=0,  # 0: the tokenizer's
                        embed_dim=384, hidden_dim=512, num_layers=2, dropout=0.2)
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.end_lr_factor = 0.1
    config.optimizer.weight_decay = 0.01
    config.optimizer.clip_global_norm = 1.0
    config.train_steps = 5000
    config.eval_every_epochs = 0.0
    config.eval_every_steps = 500
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = 500
    config.decoding.max_new_tokens = 300
    if arg == "small":
        config.model.update(embed_dim=128, hidden_dim=256, num_layers=2, dropout=0.1)
        config.data.seq_len = 128
        config.data.batch_size = 32
        config.train_steps = 2000
        config.eval_every_steps = 250
    elif arg == "test":
        config.model.update(embed_dim=16, hidden_dim=32, num_layers=1, dropout=0.0)
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
        raise ValueError(f"unknown variant '{arg}' of shakespeare_{cell}; use small or test")
    return config
