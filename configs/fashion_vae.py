"""Variational autoencoder on Fashion-MNIST (task `vae`, dense `autoencoder` with
`variational=True`): 784-512-256-32 and back, Bernoulli likelihood on dynamically binarized
pixels, KL warm-up over the first 2,000 steps; eval reports the negative ELBO and the
importance-sampled NLL (k = 100), in nats per image.

Variants: `:2d` a 2-D latent (its posterior means as a figure); `:test` tiny.

    python launch.py --config configs/fashion_vae.py --workdir runs/fashion_vae
    python launch.py sample --workdir runs/fashion_vae --num_samples 64
"""

from configs._short import short_run
from dlx.train.config import base_config

VARIANTS = ("2d", "test")


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"fashion_vae has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("vae")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.data.eval_batch_size = 1000
    config.model = dict(
        name="autoencoder", kind="dense", latent_dim=32, hidden=(512, 256), variational=True
    )
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.vae.kl_warmup_steps = 2000
    config.vae.importance_samples = 100
    config.num_epochs = 20.0
    config.eval_every_epochs = 5.0
    config.log_every_steps = 100
    if arg == "2d":
        config.model.latent_dim = 2
    if arg == "test":
        config.model.update(latent_dim=4, hidden=(32, 16))
        config.vae.kl_warmup_steps = 4
        config.vae.importance_samples = 5
        short_run(config)
    return config
