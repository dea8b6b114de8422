"""word2vec on Shakespeare's works and the King James Bible (task `word2vec`, model `word2vec`):
skip-gram with negative sampling, 100 dimensions, window 5, 5 noise words, subsampling 1e-3,
words seen at least 5 times, 5 epochs (gensim's defaults); pairs drawn on the fly.

Variants: `:cbow` CBOW in place of skip-gram; `:test` tiny (Shakespeare alone, 50 steps).

    python launch.py --config configs/word2vec.py --workdir runs/word2vec
    python -m dlx.word_vectors neighbors king --vectors runs/word2vec/vectors.npz
"""

from dlx.train.config import base_config

VARIANTS = ("cbow", "test")


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"word2vec has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("word2vec")
    config.data.name = "shakespeare"
    config.data.eval_split = "validation"
    # 4096 pairs a step: 2.4x the pairs/s of 1024 on 2 CPU cores (the dense Adam update of
    # both tables is the step's cost) and better vectors after one epoch (bench/word2vec.py)
    config.data.batch_size = 4096
    config.data.eval_batch_size = 1024
    config.model = dict(name="word2vec", features=100)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 4e-3
    config.optimizer.schedule = "linear"
    config.num_epochs = 5.0  # gensim's default; ~80 s on 2 CPU cores
    config.eval_every_epochs = 1.0
    config.log_every_steps = 200
    if arg == "cbow":
        config.word2vec.mode = "cbow"
    if arg == "test":
        config.word2vec.extra_corpora = ()
        config.model.features = 16
        config.data.batch_size = 256
        config.word2vec.eval_pairs = 512
        config.train_steps = 50
        config.eval_every_steps = 25
        config.checkpoint_every_steps = 25
        config.log_every_steps = 10
    return config
