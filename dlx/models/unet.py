"""A U-Net for denoising diffusion (Ho et al., 2020), sized for small images: it predicts the
noise in a noisy image x_t given the step t.

    Model(channels=(32, 64, 128))(x_t [B, H, W, C], t [B]) -> predicted noise [B, H, W, C]

Levels at H, H/2, H/4 ... with `channels[i]` channels each; per level `blocks` residual blocks
(group norm, SiLU, 3x3 conv, the step's embedding added, group norm, SiLU, dropout, 3x3 conv,
a 1x1 conv on the skip when the width changes) and self-attention over the positions at the
levels in `attention_levels`; a residual-attention-residual middle; the same levels back up, each
taking the skip of its level. Down: strided 3x3 conv; up: nearest-neighbour upsampling + 3x3 conv
(`upsample_conv`). The step t enters as a sinusoidal embedding through a two-layer MLP. H and W
must be divisible by 2^(levels - 1) (Fashion-MNIST is padded from 28 to 32 by the diffusion task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError
from dlx.layers.images import conv, upsample_conv
from dlx.layers.linear import dense
from dlx.schema import Fixed, Float, Int, Seq

NORM_AXES = ("norm",)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """[B] steps -> [B, dim] sinusoids (the Transformer's positional encoding of t)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def group_norm(groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=1e-5,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES),
    )


class ResidualBlock(nn.Module):
    features: int
    groups: int
    dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, time: jax.Array, train: bool) -> jax.Array:
        h = conv(self.features)(nn.silu(group_norm(self.groups)(x)))
        h = h + dense(self.features, ("mlp", "embed"))(time)[:, None, None, :]
        h = nn.silu(group_norm(self.groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.features, init="lecun_normal")(h)
        skip = x if x.shape[-1] == self.features else conv(self.features, kernel=1)(x)
        return skip + h


class SelfAttention(nn.Module):
    """Single-head attention over the H*W positions, residual."""

    groups: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = group_norm(self.groups)(x).reshape(b, height * width, c)
        q, k, v = (dense(c, ("embed", "mlp"))(h) for _ in range(3))
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c), axis=-1)
        out = dense(c, ("mlp", "embed"))(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, height, width, c)


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    channels=Seq(Int(low=1), min_len=1),
    blocks=Int(low=1),
    attention_levels=Seq(Int(low=0)),
    time_dim=Int(low=1),
    groups=Int(low=1),
    dropout=Float(0, 1, high_open=True),
    image_shape=Fixed(Int(low=1), Int(low=1), Int(low=1)),
)


class Model(nn.Module):
    channels: Sequence[int] = (32, 64, 128)
    blocks: int = 1
    attention_levels: Sequence[int] = (2,)
    time_dim: int = 128
    groups: int = 8
    dropout: float = 0.0
    image_shape: Sequence[int] = (32, 32, 1)

    def __post_init__(self):
        levels = len(self.channels)
        height, width, _ = self.image_shape
        if levels < 1 or min(self.channels) < 1 or self.blocks < 1:
            raise ConfigError("unet needs at least one level, channels >= 1 and blocks >= 1")
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ConfigError(
                f"unet halves the image {levels - 1} times: model.image_shape "
                f"{tuple(self.image_shape)} must divide by {2 ** (levels - 1)}"
            )
        if any(c % self.groups for c in self.channels):
            raise ConfigError(
                f"every unet channel count must divide into model.groups="
                f"{self.groups} groups, got {tuple(self.channels)}"
            )
        if any(not 0 <= level < levels for level in self.attention_levels):
            raise ConfigError(
                f"model.attention_levels {tuple(self.attention_levels)} must be "
                f"levels 0..{levels - 1}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, *, train: bool = False) -> jax.Array:
        time = timestep_embedding(t, self.time_dim)
        time = dense(4 * self.time_dim, ("embed", "mlp"))(time)
        time = nn.silu(time)  # the blocks project it to their own widths
        block = lambda features: ResidualBlock(features, self.groups, self.dropout)  # noqa: E731
        h = conv(self.channels[0])(x)
        skips = []
        for level, features in enumerate(self.channels):
            for _ in range(self.blocks):
                h = block(features)(h, time, train)
                if level in self.attention_levels:
                    h = SelfAttention(self.groups)(h)
            skips.append(h)
            if level < len(self.channels) - 1:
                h = conv(features, stride=2)(h)
        h = block(self.channels[-1])(h, time, train)
        h = SelfAttention(self.groups)(h)
        h = block(self.channels[-1])(h, time, train)
        for level in reversed(range(len(self.channels))):
            features = self.channels[level]
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for _ in range(self.blocks):
                h = block(features)(h, time, train)
                if level in self.attention_levels:
                    h = SelfAttention(self.groups)(h)
            if level > 0:
                h = upsample_conv(self.channels[level - 1])(h)
        h = nn.silu(group_norm(self.groups)(h))
        return conv(x.shape[-1], init="zeros")(h)
