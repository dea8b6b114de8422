"""Token lag (dlx/tasks/token_lag.py): a small GPT-style decoder predicts, at every position, the
token 3 positions back in a string of random tokens (16 symbols); trained on strings of 32
tokens, scored on strings of 64. The positional encoding is the model field `position`
(learned | sinusoidal | rope | none); learned positions have 64 rows, of which the last 32 are
never trained. `experiments/positions.py` compares them. Variants: `:test` (tiny).

    python launch.py --config configs/token_lag.py --workdir runs/token_lag \
        --config.model.position=rope
"""

from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config("token_lag")
    # The runner's split bookkeeping needs a data set; the strings are generated, none of its
    # examples are read (see the task's docstring).
    config.data.name = "digits"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.batch_size = 64
    config.data.eval_batch_size = 256
    config.lag.update(symbols=16, lag=3, train_len=32, eval_len=64, eval_examples=512)
    config.model = dict(
        name="transformer",
        kind="decoder",
        vocab_size=0,  # 0: symbols + 1
        num_layers=2,
        embed_dim=64,
        num_heads=4,
        max_len=64,
        position="learned",
    )
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 100
    config.optimizer.clip_global_norm = 1.0
    config.train_steps = 2000
    config.eval_every_epochs = 0.0
    config.eval_every_steps = 500
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 50
    if arg == "test":
        config.lag.update(symbols=8, lag=2, train_len=8, eval_len=16, eval_examples=64)
        config.model.update(num_layers=1, embed_dim=16, num_heads=2, max_len=16)
        config.data.batch_size = 32
        config.data.eval_batch_size = 64
        config.optimizer.learning_rate = 3e-3
        config.optimizer.warmup_steps = 2
        config.train_steps = 20
        config.eval_every_steps = 10
        config.checkpoint_every_steps = 10
        config.log_every_steps = 5
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of token_lag; use test")
    return config
