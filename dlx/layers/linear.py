"""Dense, conv and batch-norm layers whose parameters carry logical axis names, and
`Projection`, the dense layer of any rank that attention and the Transformer MLPs are built from."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers import initializers


def accumulation_dtype(dtype) -> jnp.dtype:
    """The dtype sums and statistics of `dtype` values are taken in: float32 for bfloat16 and
    float32, float64 for float64 (a model run in float64 as a numerical reference stays so)."""
    return jnp.promote_types(dtype, jnp.float32)


def dense(
    features: int,
    names: tuple[str, str],
    init: str = "lecun_normal",
    name: str | None = None,
    use_bias: bool = True,
) -> nn.Dense:
    return nn.Dense(
        features,
        name=name,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(initializers.get(init), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
    )


def conv(features: int, kernel_size: int, strides: int, padding: str, init: str) -> nn.Conv:
    names = ("conv_height", "conv_width", "conv_in", "conv_out")
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=strides,
        padding=padding,
        kernel_init=nn.with_logical_partitioning(initializers.get(init), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
    )


def batch_norm(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
    )


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
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.stddev), (*self.in_names, *self.out_names)
            ),
            (*in_shape, *features),
        )
        batch_dims = x.ndim - num_in
        # Computes in x's dtype (the kernel is cast to it), accumulating in at least float32: on
        # CPUs with AMX, bf16 dots run several times faster with a float32 result than without.
        y = jax.lax.dot_general(
            x,
            kernel.astype(x.dtype),
            ((tuple(range(batch_dims, x.ndim)), tuple(range(num_in))), ((), ())),
            preferred_element_type=accumulation_dtype(x.dtype),
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, tuple(self.out_names)),
                features,
            )
            y = y + bias
        return y.astype(x.dtype)
