"""Normalisation and feed-forward blocks of Transformers: LayerNorm, RMSNorm, the GELU MLP and
the SwiGLU MLP, plus `Projection`, the dense layer of any rank they and attention are built from.

Every parameter carries logical axis names. Norm parameters are named ("norm",), which the
sharding rules leave replicated (they are tiny); projections name their input and output axes
("embed", "mlp", "heads", "head_dim" ...).

Statistics are computed in float32 whatever the input dtype, and the variance is the two-pass
E[(x - mean)^2] (as PyTorch computes it), not E[x^2] - mean^2.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError

INIT_STDDEV = 0.02  # GPT-2's initializer_range


class Projection(nn.Module):
    """y = x @ kernel (+ bias), contracting the last `len(in_names)` axes of x into
    `features`. Kernel shape: in_shape + features; its logical names: in_names + out_names.

    E.g. the fused query/key/value projection is Projection((3, heads, head_dim),
    in_names=("embed",), out_names=("qkv", "heads", "head_dim")).
    """
    features: int | Sequence[int]
    in_names: Sequence[str]
    out_names: Sequence[str]
    use_bias: bool = True
    stddev: float = INIT_STDDEV

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        num_in = len(self.in_names)
        if len(self.out_names) != len(features):
            raise ValueError(f"{len(features)} output axes but names {self.out_names}")
        in_shape = x.shape[-num_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(self.stddev), (*self.in_names, *self.out_names)),
            (*in_shape, *features))
        batch_dims = x.ndim - num_in
        # Computes in x's dtype (the kernel is cast to it), accumulating in float32: on CPUs
        # with AMX, bf16 dots run several times faster with a float32 result than without.
        y = jax.lax.dot_general(
            x, kernel.astype(x.dtype),
            ((tuple(range(batch_dims, x.ndim)), tuple(range(num_in))), ((), ())),
            preferred_element_type=jnp.float32)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, tuple(self.out_names)), features)
            y = y + bias
        return y.astype(x.dtype)


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
    epsilon: float = 1e-5
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        h = x.astype(jnp.float32)
        mean = h.mean(-1, keepdims=True)
        centred = h - mean
        h = centred * jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + self.epsilon)
        h = h * self.param("scale", nn.with_logical_partitioning(
            nn.initializers.ones, ("norm",)), (features,))
        if self.use_bias:
            h = h + self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, ("norm",)), (features,))
        return h.astype(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (no centring, no bias)."""
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt((h * h).mean(-1, keepdims=True) + self.epsilon)
        h = h * self.param("scale", nn.with_logical_partitioning(
            nn.initializers.ones, ("norm",)), (x.shape[-1],))
        return h.astype(x.dtype)


NORMS = ("layer", "rms")


def make_norm(kind: str, epsilon: float, use_bias: bool, name: str | None = None) -> nn.Module:
    if kind == "layer":
        return LayerNorm(epsilon, use_bias, name=name)
    if kind == "rms":
        return RMSNorm(epsilon, name=name)
    raise ConfigError(f"unknown norm '{kind}'; choose from {NORMS}")


class GeluMLP(nn.Module):
    """fc (embed -> mlp), GELU, proj (mlp -> embed): GPT-2's MLP. `approximate=True` is the tanh
    form GPT-2 calls "gelu_new"."""
    hidden: int
    use_bias: bool = True
    approximate: bool = True
    out_stddev: float = INIT_STDDEV

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="fc")(x)
        h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=self.approximate),
                                       ("batch", "length", "mlp"))
        return Projection(x.shape[-1], ("mlp",), ("embed",), self.use_bias, self.out_stddev,
                          name="proj")(h)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): Llama's MLP."""
    hidden: int
    use_bias: bool = False
    out_stddev: float = INIT_STDDEV

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="gate")(x)
        up = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="up")(x)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection(x.shape[-1], ("mlp",), ("embed",), self.use_bias, self.out_stddev,
                          name="down")(h)


MLPS = ("gelu", "swiglu")


def make_mlp(kind: str, hidden: int, use_bias: bool, out_stddev: float,
             name: str | None = None) -> nn.Module:
    if kind == "gelu":
        return GeluMLP(hidden, use_bias, out_stddev=out_stddev, name=name)
    if kind == "swiglu":
        return SwiGLU(hidden, use_bias, out_stddev, name=name)
    raise ConfigError(f"unknown mlp '{kind}'; choose from {MLPS}")

