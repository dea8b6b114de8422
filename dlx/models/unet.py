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

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers.images import conv, upsample_conv
from dlx.layers.linear import dense
from dlx.models.receptive_field import Layer
from dlx.schema import Fixed, Float, Int, Seq

NORM_AXES = ("norm",)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """[B] steps -> [B, dim] sinusoids (the Transformer's positional encoding of t)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class GroupNorm(nn.Module):
    """`nn.GroupNorm` over [B, ..., C] (the same parameters, `scale` and `bias`, and numbers up to
    float rounding) with its statistics summed in two stages, over the positions for each channel
    and then over each group's channels, and a hand-written gradient of one reduction pass and
    one elementwise pass (`_group_norm`). BENCHMARKS.md, tuning notes, has the measurements."""

    groups: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES), (channels,)
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES), (channels,)
        )
        return _group_norm(x, scale, bias, self.groups, self.epsilon)


def _group_sums(values: jax.Array, groups: int) -> jax.Array:
    """[B, C] per-channel values -> [B, C]: each channel's group total, repeated per channel."""
    batch, channels = values.shape
    totals = values.reshape(batch, groups, channels // groups).sum(-1)
    return jnp.repeat(totals, channels // groups, axis=1)


def _norm_statistics(x: jax.Array, groups: int, epsilon: float):
    """(mean, 1/std), each [B, C] (the group's value for each channel)."""
    positions = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * (x.shape[-1] // groups)
    mean = _group_sums(jnp.sum(x, axis=positions), groups) / count
    mean_square = _group_sums(jnp.sum(jnp.square(x), axis=positions), groups) / count
    return mean, jax.lax.rsqrt(jnp.maximum(mean_square - jnp.square(mean), 0.0) + epsilon)


def _per_channel(values: jax.Array, ndim: int) -> jax.Array:
    """[B, C] -> [B, 1, ..., 1, C], to broadcast against the activations."""
    return values.reshape(values.shape[0], *(1,) * (ndim - 2), values.shape[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups: int, epsilon: float):
    mean, inverse = _norm_statistics(x, groups, epsilon)
    multiplier = inverse * scale
    return x * _per_channel(multiplier, x.ndim) + _per_channel(bias - mean * multiplier, x.ndim)


def _group_norm_forward(x, scale, bias, groups, epsilon):
    mean, inverse = _norm_statistics(x, groups, epsilon)
    multiplier = inverse * scale
    y = x * _per_channel(multiplier, x.ndim) + _per_channel(bias - mean * multiplier, x.ndim)
    return y, (x, scale, mean, inverse)


def _group_norm_backward(groups, epsilon, residuals, g):
    """With x_hat = (x - mean) / std: d bias = sum g, d scale = sum g x_hat, and
    dx = (scale g - mean_group(scale g) - x_hat mean_group(scale g x_hat)) / std."""
    x, scale, mean, inverse = residuals
    positions = tuple(range(1, x.ndim - 1))
    x_hat = (x - _per_channel(mean, x.ndim)) * _per_channel(inverse, x.ndim)
    g_sums, g_x_hat_sums = jnp.sum(g, axis=positions), jnp.sum(g * x_hat, axis=positions)
    count = math.prod(x.shape[1:-1]) * (x.shape[-1] // groups)
    g_mean = _group_sums(g_sums * scale, groups) / count
    g_x_hat_mean = _group_sums(g_x_hat_sums * scale, groups) / count
    dx = (
        g * _per_channel(scale * inverse, x.ndim)
        - _per_channel(g_mean * inverse, x.ndim)
        - x_hat * _per_channel(g_x_hat_mean * inverse, x.ndim)
    )
    return dx, jnp.sum(g_x_hat_sums, axis=0), jnp.sum(g_sums, axis=0)


_group_norm.defvjp(_group_norm_forward, _group_norm_backward)


def group_norm(groups: int) -> GroupNorm:
    return GroupNorm(groups, epsilon=1e-5)


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
        schema.check_fields("unet", self, FIELD_RULES)
        levels = len(self.channels)
        height, width, _ = self.image_shape
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


def layer_stack(model: Model) -> list[Layer]:
    """The 3x3 convolutions of the down path to the bottleneck, for the receptive-field table of
    model_summary.txt. Where a level has self-attention (`attention_levels`, and always in the
    bottleneck) a pixel sees the whole map: these are the fields of the convolutions alone."""
    layers = [Layer("stem", 3)]
    for level in range(len(model.channels)):
        for block in range(model.blocks):
            layers += [Layer(f"level{level}_block{block}_conv{i}", 3) for i in range(2)]
        if level < len(model.channels) - 1:
            layers.append(Layer(f"down_{level}", 3, 2))
    layers += [Layer(f"bottleneck_block{b}_conv{i}", 3) for b in range(2) for i in range(2)]
    return layers
