"""Vision Transformer inputs: images cut into patches and projected (`PatchEmbedding`), and the
positions of the patch grid, fixed 2-D sinusoidal (`sinusoidal_2d`) or learned
(`LearnedPositions2D`).

The patch embedding is the stride-p, p x p convolution of ViT, computed as a reshape of the
image into patches and one dense projection of each patch: the same kernel ([p, p, C, width],
HWIO) and the same numbers to float rounding. On XLA:CPU (2 cores, batch 128 of 28x28x1, width
128) the forward took 0.29 ms against the convolution's 0.66 (patch 4; 0.28 vs 0.49 for patch
7), the forward with the kernel gradient 0.57-0.60 ms against 0.61-0.76: never slower, and a
small part of a ViT step either way.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers.linear import INIT_STDDEV
from dlx.layers.positional import sinusoidal

PATCH_AXES = ("patch_height", "patch_width", "patch_channels")


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, H/p, W/p, p, p, C]: the patches in row-major grid order, each laid out
    as a conv kernel's window (rows, columns, channels). H and W must be multiples of p."""
    b, h, w, c = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"a {h}x{w} image does not split into {patch_size}x{patch_size} patches")
    grid_h, grid_w = h // patch_size, w // patch_size
    patches = images.reshape(b, grid_h, patch_size, grid_w, patch_size, c)
    return patches.transpose(0, 1, 3, 2, 4, 5)


class PatchEmbedding(nn.Module):
    """[B, H, W, C] -> [B, (H/p) * (W/p), features]: each p x p patch, in row-major grid order,
    projected to `features` (params "kernel" [p, p, C, features], "bias" [features]: a conv's
    HWIO kernel; initialised N(0, 1/fan-in), LeCun's scale, as a conv's default)."""

    features: int
    patch_size: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p, channels = self.patch_size, images.shape[-1]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.normal(1.0 / math.sqrt(p * p * channels)), (*PATCH_AXES, "embed")
            ),
            (p, p, channels, self.features),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            (self.features,),
        )
        patches = patchify(images, p)
        tokens = jax.lax.dot_general(
            patches, kernel.astype(images.dtype), (((3, 4, 5), (0, 1, 2)), ((), ()))
        )
        b, grid_h, grid_w, _ = tokens.shape
        return tokens.reshape(b, grid_h * grid_w, self.features) + bias


def sinusoidal_2d(grid_h: int, grid_w: int, features: int, base: float = 10000.0) -> jax.Array:
    """[grid_h * grid_w, features], row-major over the grid: the first half of the features is
    the 1-D sinusoidal encoding (`positional.sinusoidal`) of the patch's row, the second half that
    of its column (MAE / MoCo v3). `features` must be even."""
    if features % 2:
        raise ValueError(f"2-D sinusoidal positions need an even width, got {features}")
    rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
    half = features // 2
    return jnp.concatenate(
        [sinusoidal(rows.reshape(-1), half, base), sinusoidal(cols.reshape(-1), half, base)],
        axis=-1,
    )


class LearnedPositions2D(nn.Module):
    """One learned vector per patch of a grid_h x grid_w grid, plus `extra_tokens` before them (a
    class token's): param "embedding" [extra_tokens + grid_h * grid_w, features] (logical names
    ("position", "embed"), N(0, 0.02)), rows in token order, the layout of torchvision's and
    timm's `pos_embedding` / `pos_embed`. Returns the table, to add to the tokens."""

    grid_h: int
    grid_w: int
    features: int
    extra_tokens: int = 0

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(INIT_STDDEV), ("position", "embed")
            ),
            (self.extra_tokens + self.grid_h * self.grid_w, self.features),
        )
