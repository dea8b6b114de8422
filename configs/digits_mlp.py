"""scikit-learn digits (8x8), a small MLP: trains in seconds; the test suite's workhorse."""

from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.data.name = "digits"
    config.data.batch_size = 64
    config.data.eval_batch_size = 120
    config.model = dict(name="mlp", num_outputs=10, hidden=(64, 64), activation="relu")
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 3e-3
    config.num_epochs = 10.0
    config.log_every_steps = 10
    if arg:
        raise ValueError(f"digits_mlp has no variant '{arg}'")
    return config
