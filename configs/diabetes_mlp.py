"""Regression on scikit-learn's diabetes data (442 patients, 10 features): MSE, RMSE, R^2."""

from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config("regression")
    config.data.name = "diabetes"
    config.data.batch_size = 32
    config.data.eval_batch_size = 96
    config.model = dict(name="mlp", num_outputs=1, hidden=(64,), activation="relu")
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-2
    config.num_epochs = 300.0
    config.log_every_steps = 50
    config.eval_every_epochs = 25.0
    config.checkpoint_every_epochs = 100.0
    if arg:
        raise ValueError(f"diabetes_mlp has no variant '{arg}'")
    return config
