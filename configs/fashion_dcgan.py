"""DCGAN on Fashion-MNIST (task `gan`, model `dcgan`): latent 64, width 64, Adam 2e-4 with
b1 = 0.5 for both players, batch 64.

Variants: `:test` tiny.

    python launch.py --config configs/fashion_dcgan.py --workdir runs/fashion_dcgan
    python launch.py sample --workdir runs/fashion_dcgan --num_samples 64 --seed 1
"""

from configs._short import short_run
from dlx.train.config import base_config


def get_config(arg: str | None = None):
    if arg and arg != "test":
        raise ValueError(f"fashion_dcgan has no variant '{arg}'; use test")
    config = base_config("gan")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 64
    config.data.eval_batch_size = 1000
    config.model = dict(name="dcgan", latent_dim=64, width=64)
    config.num_epochs = 5.0
    config.log_every_steps = 100
    if arg == "test":
        config.model.update(latent_dim=8, width=8)
        short_run(config)
    return config
