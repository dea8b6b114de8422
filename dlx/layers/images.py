"""Image building blocks for encoders, decoders and generators: strided convolutions down,
nearest-neighbour upsampling followed by a convolution up (a "resize-convolution": no
checkerboard artifacts, and on XLA:CPU no transposed convolution, a known slow path).
Parameters carry the conv layers' logical axis names."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers import initializers

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")


def conv(features: int, *, kernel: int = 3, stride: int = 1, init: str = "he_normal",
         use_bias: bool = True, name: str | None = None) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=stride, padding="SAME", use_bias=use_bias,
                   name=name,
                   kernel_init=nn.with_logical_partitioning(initializers.get(init), CONV_AXES),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of [B, H, W, C] by `factor` in H and W (a broadcast and a
    reshape: no gather, no transposed convolution)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


def image_grid(images, columns: int | None = None, pad: int = 1):
    """[N, H, W, C] in [0, 1] -> one [rows*(H+pad), columns*(W+pad), C] numpy image."""
    import numpy as np
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + col * (w + pad):pad + col * (w + pad) + w] = image
    return np.clip(grid, 0.0, 1.0)


def save_image(path: str, image) -> None:
    """A [H, W, 1 or 3] image in [0, 1] as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    image = image[..., 0] if image.shape[-1] == 1 else image
    plt.imsave(path, image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
