"""DDPM on Fashion-MNIST (task `diffusion`, model `unet`): a U-Net of 32/64/128 channels at
32/16/8 pixels (images padded from 28), attention at 8x8, 1,000 steps of a linear noise
schedule, Adam 2e-4, EMA 0.999; eval draws DDIM samples (50 steps) from the EMA weights.

Variants: `:cosine` the cosine schedule; `:test` tiny.

    python launch.py --config configs/fashion_ddpm.py --workdir runs/fashion_ddpm
    python launch.py sample --workdir runs/fashion_ddpm --num_samples 64 --seed 1
"""

from configs._short import short_run
from dlx.train.config import base_config

VARIANTS = ("cosine", "test")


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"fashion_ddpm has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("diffusion")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 64
    config.data.eval_batch_size = 1000
    config.model = dict(name="unet", channels=(32, 64, 128), attention_levels=(2,))
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-4
    config.optimizer.clip_global_norm = 1.0
    config.num_epochs = 5.0
    config.log_every_steps = 100
    if arg == "cosine":
        config.diffusion.schedule = "cosine"
    if arg == "test":
        config.model.update(channels=(8, 16), attention_levels=(1,), time_dim=16, groups=4)
        config.diffusion.update(timesteps=20, sample_steps=5)
        config.data.eval_batch_size = 256
        # the eval runs the U-Net once per image: 256 of them keep a 4-step test run short
        short_run(config, steps=4, eval_every=4, checkpoint_every=2, eval_examples=256)
    return config
