"""Normalisation layers of Transformers: LayerNorm and RMSNorm, by name (`make_norm`).

Norm parameters are named ("norm",), which the sharding rules leave replicated (they are tiny).
Statistics are computed in at least float32 whatever the input dtype, and the variance is the
two-pass E[(x - mean)^2] (as PyTorch computes it), not E[x^2] - mean^2.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from dlx.errors import ConfigError
from dlx.layers.linear import accumulation_dtype


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""

    epsilon: float = 1e-5
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        h = x.astype(accumulation_dtype(x.dtype))
        mean = h.mean(-1, keepdims=True)
        centred = h - mean
        h = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.epsilon)
        h = h * self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (features,)
        )
        if self.use_bias:
            h = h + self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (features,)
            )
        return h.astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (no centring, no bias)."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(accumulation_dtype(x.dtype))
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + self.epsilon)
        h = h * self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],)
        )
        return h.astype(x.dtype)


NORMS = ("layer", "rms")


def make_norm(kind: str, epsilon: float, use_bias: bool, name: str | None = None) -> nn.Module:
    if kind == "layer":
        return LayerNorm(epsilon, use_bias, name=name)
    if kind == "rms":
        return RMSNorm(epsilon, name=name)
    raise ConfigError(f"unknown norm '{kind}'; choose from {NORMS}")
