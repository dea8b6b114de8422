"""Convolutional classifier: [Conv -> (BatchNorm) -> activation -> pool] x stages -> flatten ->
[Dense -> activation -> (Dropout)] -> linear head.

Speed on XLA:CPU (2 cores, batch 128 of 28x28x1, measured against PyTorch):
- A pool's window equals its stride, so it is a reshape into windows. The max pool's gradient is
  a custom VJP made of elementwise selects; `nn.max_pool`'s select_and_scatter took ~45% of the
  train step.
- Without batch norm and with an activation in `_COMMUTES_WITH_MAX`, the max pool runs on the raw
  conv output and the bias and activation on the pooled map: the same numbers, one pass less
  over the full-size map (34 -> 30 ms).
- The convolution is `lax.conv_general_dilated`, as in `nn.Conv`. By default XLA:CPU hands it to
  YNNPACK, whose kernel gradient is slow (25 ms of a 60 ms step); the runner's
  `CPU_COMPILER_OPTIONS` leave convolutions to Eigen and the step takes 30 ms (PyTorch, 2
  threads: ~40 ms). im2col as one matmul, shifted-slice sums, NCHW and channel-major layouts,
  and custom kernel-gradient VJPs were all slower (45-120 ms).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlx.errors import ConfigError
from dlx.layers import activations, initializers
from dlx.layers.linear import batch_norm, dense
from dlx.models import parameter_counts
from dlx.models.receptive_field import Layer, receptive_fields

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
ACTIVATION_AXES = ("batch", "height", "width", "conv_out")

# Non-decreasing f: f(max(a) + b) == max(f(a + b)) bit for bit, and the gradient goes to the same
# element unless rounding ties two a + b that differ in a.
_COMMUTES_WITH_MAX = frozenset({"linear", "relu", "leaky_relu", "step"})


def _window_taps(x: jax.Array, size: int) -> list[jax.Array]:
    """The size*size strided views x[:, i::size, j::size, :], in row-major window order."""
    b, h, w, c = x.shape
    windows = x.reshape(b, h // size, size, w // size, size, c)
    return [windows[:, :, i, :, j] for i in range(size) for j in range(size)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, size: int) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_taps(x, size))


def _max_pool_fwd(x, size):
    y = _max_pool(x, size)
    return y, (x, y)


def _max_pool_bwd(size, residuals, g):
    # Each window's gradient goes to its first maximum in row-major order, as nn.max_pool's
    # select_and_scatter does, so ties (e.g. zeros after a ReLU) route identically.
    x, y = residuals
    taken = jnp.zeros(y.shape, bool)
    hits = []
    for tap in _window_taps(x, size):
        hits.append((tap == y) & ~taken)
        taken = taken | hits[-1]
    # One select over the stacked masks: ~10 ms/step faster than stacking per-tap selects.
    rows = [jnp.stack(hits[i * size:(i + 1) * size], axis=3) for i in range(size)]
    mask = jnp.stack(rows, axis=2)
    return (jnp.where(mask, g[:, :, None, :, None], 0).reshape(x.shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def pool2d(x: jax.Array, kind: str, size: int) -> jax.Array:
    """Non-overlapping `size` x `size` max or average pool of NHWC `x`, VALID padding (as
    `nn.max_pool(x, (size, size), strides=(size, size))`)."""
    _, h, w, _ = x.shape
    x = x[:, :h - h % size, :w - w % size]
    if kind == "max":
        return _max_pool(x, size)
    b, h, w, c = x.shape
    return x.reshape(b, h // size, size, w // size, size, c).mean(axis=(2, 4))


class Conv(nn.Module):
    """2-D convolution (NHWC input, HWIO kernel) whose parameters carry logical axis names.

    `then` (e.g. a max pool, which commutes with adding the bias) runs before the bias is added.
    """
    features: int
    kernel_size: int
    strides: int = 1
    padding: str = "SAME"
    kernel_init: str = "he_normal"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array,
                 then: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            initializers.get(self.kernel_init), CONV_AXES), shape)
        y = lax.conv_general_dilated(x, kernel, (self.strides, self.strides), self.padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = nn.with_logical_constraint(y, ACTIVATION_AXES)
        if then is not None:
            y = then(y)
        if self.use_bias:
            y = y + self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, ("conv_out",)), (self.features,))
        return y


class Model(nn.Module):
    num_outputs: int = 10
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    strides: int = 1
    padding: str = "SAME"
    pool: str = "max"          # max, avg or none
    pool_size: int = 2
    dense: Sequence[int] = (128,)
    activation: str = "relu"
    kernel_init: str = "he_normal"  # "init" would shadow Module.init
    batch_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.pool not in ("max", "avg", "none"):
            raise ConfigError(f"cnn pool must be max, avg or none, got '{self.pool}'")
        if self.padding not in ("SAME", "VALID"):
            raise ConfigError(f"cnn padding must be SAME or VALID, got '{self.padding}'")
        activations.get(self.activation)
        initializers.get(self.kernel_init)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        pool = functools.partial(pool2d, kind=self.pool, size=self.pool_size)
        # Pooling first saves a pass over the full-size map (~10% of the step); batch norm's
        # scale may be negative, which would turn the max into a min.
        pool_first = (self.pool == "max" and not self.batch_norm
                      and self.activation in _COMMUTES_WITH_MAX)
        for features in self.features:
            conv = Conv(features, self.kernel_size, self.strides, self.padding, self.kernel_init,
                        use_bias=not self.batch_norm)  # batch norm's offset makes a bias redundant
            if pool_first:
                x = act(conv(x, then=pool))
                continue
            x = conv(x)
            if self.batch_norm:
                x = batch_norm(train)(x)
            x = act(x)
            if self.pool != "none":
                x = pool(x)
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = dense(width, ("embed", "mlp"), self.kernel_init)(x)
            x = nn.with_logical_constraint(act(x), ("batch", "mlp"))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def layer_stack(model: Model) -> list[Layer]:
    """The model's convolutions and pools, for the receptive-field calculator."""
    layers = []
    for i, _ in enumerate(model.features):
        layers.append(Layer(f"conv_{i}", model.kernel_size, model.strides, model.padding))
        if model.pool != "none":
            layers.append(Layer(f"{model.pool}_pool_{i}", model.pool_size, model.pool_size,
                                "VALID"))
    return layers


def summarize(model: Model, input_shape: tuple[int, ...]) -> str:
    """A table: per layer its output shape, parameters and receptive field (in input pixels)."""
    counts = parameter_counts(model, input_shape)
    _, height, width, channels = input_shape
    rows = [("input", f"{height}x{width}x{channels}", 0, "1x1")]
    stack = layer_stack(model)
    stages = iter(range(len(model.features)))
    for along_h, along_w in zip(receptive_fields(stack, height), receptive_fields(stack, width)):
        params, name = 0, along_h.name
        if name.startswith("conv"):
            stage = next(stages)
            channels = model.features[stage]
            params = counts[f"Conv_{stage}"] + counts.get(f"BatchNorm_{stage}", 0)
            name += f" ({'bn, ' if model.batch_norm else ''}{model.activation})"
        rows.append((name, f"{along_h.size}x{along_w.size}x{channels}", params,
                     f"{along_h.receptive_field}x{along_w.receptive_field}"))
        height, width = along_h.size, along_w.size
    rows.append(("flatten", f"{height * width * channels}", 0, ""))
    for i, out in enumerate(model.dense):
        rows.append((f"dense_{i} ({model.activation})", f"{out}", counts[f"Dense_{i}"], ""))
    rows.append(("head", f"{model.num_outputs}", counts["head"], ""))
    lines = [f"{'layer':<24}{'output':>14}{'params':>12}{'receptive field':>18}"]
    lines += [f"{name:<24}{shape:>14}{params:>12,}{field:>18}"
              for name, shape, params, field in rows]
    lines.append(f"total parameters: {sum(counts.values()):,}")
    return "\n".join(lines)
