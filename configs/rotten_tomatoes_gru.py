"""Sentiment of Rotten Tomatoes snippets with a bidirectional GRU trained from scratch: the
baseline the pretrained encoder is measured against (configs/rotten_tomatoes_minilm.py). Only
MiniLM's WordPiece tokenizer is borrowed (its 30,522-id vocabulary); the 128-wide embeddings
and the recurrent weights start random. 8 epochs of AdamW 2e-3 with dropout. Variants: `:test`.

    python launch.py --config configs/rotten_tomatoes_gru.py --workdir runs/rt_gru
"""

from configs._short import short_run
from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config("text_classification")
    config.data.name = "rotten_tomatoes"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.tokenizer = "minilm"
    config.data.max_length = 64
    config.data.batch_size = 64
    config.data.eval_batch_size = 256
    config.model = dict(
        name="recurrent",
        cell="gru",
        vocab_size=0,  # the tokenizer's
        embed_dim=128,
        hidden_dim=128,
        num_layers=1,
        bidirectional=True,
        dropout=0.3,
    )
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule = "linear"
    config.optimizer.warmup_steps = 100
    config.num_epochs = 8.0
    config.eval_every_epochs = 1.0
    config.checkpoint_every_epochs = 2.0
    config.keep_checkpoints = 1
    if arg == "test":
        config.model.update(embed_dim=16, hidden_dim=16)
        config.data.max_length = 32
        config.optimizer.warmup_steps = 0
        short_run(config, steps=2, eval_every=2, checkpoint_every=2, eval_examples=128)
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of rotten_tomatoes_gru; use test")
    return config
