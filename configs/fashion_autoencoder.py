"""Autoencoders on Fashion-MNIST (task `autoencoder`, model `autoencoder`).

Variants: default a dense AE (784-512-256-32 and back, Bernoulli cross-entropy); `:conv` the
convolutional AE (32/64 channels, latent 32); `:denoise` the dense AE trained on inputs with
Gaussian noise (std 0.3); `:anomaly` the conv AE trained without class 0 (T-shirt/top), whose
eval reports the AUROC of reconstruction error for that class against the rest; `:test` tiny.

    python launch.py --config configs/fashion_autoencoder.py:conv --workdir runs/fashion_cae
"""

from configs._short import short_run
from dlx.train.config import base_config

VARIANTS = ("conv", "denoise", "anomaly", "test")


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"fashion_autoencoder has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("autoencoder")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.data.eval_batch_size = 1000
    config.model = dict(name="autoencoder", kind="dense", latent_dim=32, hidden=(512, 256))
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.num_epochs = 10.0
    config.log_every_steps = 100
    if arg in ("conv", "anomaly"):
        config.model.update(kind="conv", hidden=(32, 64))
    if arg == "denoise":
        config.autoencoder.noise_std = 0.3
    if arg == "anomaly":
        config.autoencoder.holdout_class = 0
    if arg == "test":
        config.model.update(latent_dim=8, hidden=(32, 16))
        config.data.eval_batch_size = 1000
        short_run(config)
    return config
