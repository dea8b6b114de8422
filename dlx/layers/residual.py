"""Residual-network building blocks: convolutions with PyTorch's symmetric padding, batch norm
(optionally fused with the residual add and the ReLU), the basic and bottleneck residual blocks,
stochastic depth and global average pooling. NHWC activations, HWIO kernels.

Batch norm comes in two formulations with the same variables (`nn.BatchNorm`'s: params `scale`,
`bias`; batch_stats `mean`, `var`) and the same numbers:
- "plain": the statistics and normalisation as jnp expressions, differentiated by JAX (what
  `nn.BatchNorm` computes); for GPU and TPU, whose compilers fuse it well.
- "fused": in training, one custom-VJP op computes relu(batch_norm(x) + residual): the
  statistics as sums of x and x^2, the gradient in closed form (sums of g and g x, then one
  elementwise pass), and the ReLU written so that XLA:CPU stores each block's output once
  (`add_relu`). A ResNet-20 train step on 2 CPU cores: 18% less time than "plain", ResNet-56
  22% (BENCHMARKS.md, tuning notes).
"auto" picks "fused" on the CPU backend and "plain" elsewhere (`resolve_formulation`).

Batch statistics are means over the batch rows: under the runner's jit over a device mesh, with
the batch sharded over `data`/`fsdp`, they are means over the global batch (the partitioner
inserts the all-reduce), so batch norm is synchronised across devices without an axis name.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError
from dlx.layers import activations

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
ACTIVATION_AXES = ("batch", "height", "width", "conv_out")
NORM_AXES = ("norm",)
FORMULATIONS = ("auto", "fused", "plain")
SHORTCUTS = ("pad", "projection")

# torchvision's ResNet initialisation: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def resolve_formulation(formulation: str) -> str:
    """The formulation to run, "fused" or "plain"; "auto" is "fused" on the CPU backend."""
    if formulation not in FORMULATIONS:
        raise ConfigError(f"batch-norm formulation '{formulation}' is not one of {FORMULATIONS}")
    if formulation == "auto":
        return "fused" if jax.default_backend() == "cpu" else "plain"
    return formulation


def conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
    """A bias-free convolution padded by `kernel // 2` zeros on every side (PyTorch's
    `padding=k//2`, which for stride 2 differs from lax's SAME), kernel named CONV_AXES."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=nn.with_logical_partitioning(conv_init, CONV_AXES),
        name=name,
    )


def constrain(x: jax.Array) -> jax.Array:
    """Keeps an [B, H, W, C] activation batch-sharded under the runner's mesh."""
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


# ------------------------------------------------------------------------------------------------
# Batch norm
# ------------------------------------------------------------------------------------------------
def _reduce_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _count(x: jax.Array) -> int:
    return x.size // x.shape[-1]


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance, E[x^2] - E[x]^2 as `nn.BatchNorm` computes them."""
    axes, n = _reduce_axes(x), _count(x)
    mean = jnp.sum(x, axes) / n
    mean_square = jnp.sum(x * x, axes) / n
    return mean, jnp.maximum(mean_square - mean * mean, 0.0)


def add_relu(
    y: jax.Array, residual: jax.Array | None, relu: bool, materialize: bool = False
) -> jax.Array:
    """relu(y + residual) (each part optional). With `materialize` the ReLU is a select on
    `y > 0` instead of a maximum with 0 (the same numbers): XLA:CPU then writes the result once
    and its consumers read it. As maximum(., 0), an op XLA deems free to duplicate, the residual
    stream's whole chain of adds was recomputed inside every consumer (each later block, each
    kernel gradient's transposed copy; BENCHMARKS.md, tuning notes).
    """
    if residual is not None:
        y = y + residual
    if not relu:
        return y
    return jnp.where(y > 0, y, 0.0) if materialize else jnp.maximum(y, 0.0)


def _normalize(x, mean, var, scale, bias, epsilon):
    multiplier = jax.lax.rsqrt(var + epsilon) * scale
    return x * multiplier + (bias - mean * multiplier)


def fused_batch_norm(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    residual: jax.Array | None = None,
    *,
    relu: bool = False,
    epsilon: float = 1e-5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(relu(batch_norm(x) + residual), mean, var) in training: `x` normalised by its own
    per-channel batch statistics (all axes but the last); `residual` may be None. The returned
    statistics are for the running averages: no gradient flows through them (as if
    stop_gradient'ed). The output's gradient is computed in closed form (`_fused_backward`)."""
    return _fused(x, scale, bias, residual, relu, epsilon, residual is not None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(x, scale, bias, residual, relu: bool, epsilon: float, has_residual: bool):
    del has_residual
    mean, var = _statistics(x)
    y = _normalize(x, mean, var, scale, bias, epsilon)
    return add_relu(y, residual, relu, materialize=True), mean, var


def _fused_forward(x, scale, bias, residual, relu, epsilon, has_residual):
    del has_residual
    mean, var = _statistics(x)
    out = add_relu(_normalize(x, mean, var, scale, bias, epsilon), residual, relu, True)
    inverse = jax.lax.rsqrt(var + epsilon)
    return (out, mean, var), (x, scale, mean, inverse, out if relu else None)


def _fused_backward(relu, epsilon, has_residual, residuals, cotangents):
    """With x_hat = (x - mean) * inverse and g the gradient at the normalised output:
    d bias = sum g, d scale = S = sum g x_hat, dx = scale * inverse * (g - sum g / n - x_hat S / n),
    written as dx = g a + x c + d per channel. The sums read only g and x (S comes from
    sum g x, not from a materialised x_hat), and dx is one elementwise pass over g and x."""
    del epsilon
    x, scale, mean, inverse, out = residuals
    g = cotangents[0]  # the statistics' cotangents are dropped (see fused_batch_norm)
    if relu:
        g = jnp.where(out > 0, g, 0.0)
    axes, n = _reduce_axes(x), _count(x)
    sum_g = jnp.sum(g, axes)
    sum_g_x_hat = (jnp.sum(g * x, axes) - mean * sum_g) * inverse
    a = scale * inverse
    c = -a * inverse * sum_g_x_hat / n
    d = -a * sum_g / n - c * mean
    dx = g * a + (x * c + d)
    return dx, sum_g_x_hat, sum_g, g if has_residual else None


_fused.defvjp(_fused_forward, _fused_backward)


class BatchNorm(nn.Module):
    """Batch norm over the last axis, `nn.BatchNorm`'s variables and conventions (running
    averages kept as momentum * average + (1 - momentum) * batch value, biased variance,
    not updated at init), with the residual add and ReLU that follow it in a residual block
    taken as arguments so the fused formulation can compute them in the same op:
    `relu(norm(x) + residual)`."""

    momentum: float = 0.9
    epsilon: float = 1e-5
    formulation: str = "auto"
    zero_init: bool = False  # scale starts at 0: the block starts as its shortcut

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        residual: jax.Array | None = None,
        relu: bool = False,
    ) -> jax.Array:
        features = x.shape[-1]
        scale_init = nn.initializers.zeros if self.zero_init else nn.initializers.ones
        scale = self.param(
            "scale", nn.with_logical_partitioning(scale_init, NORM_AXES), (features,)
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES), (features,)
        )
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        fused = resolve_formulation(self.formulation) == "fused"
        if not train:
            y = _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
            return add_relu(y, residual, relu, materialize=fused)
        if fused:
            out, mean, var = fused_batch_norm(
                x, scale, bias, residual, relu=relu, epsilon=self.epsilon
            )
        else:
            mean, var = _statistics(x)
            out = add_relu(_normalize(x, mean, var, scale, bias, self.epsilon), residual, relu)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
            ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
        return out


# ------------------------------------------------------------------------------------------------
# Stochastic depth, pooling
# ------------------------------------------------------------------------------------------------
def drop_path(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Each example's `x` (the residual branch) zeroed with probability `rate`, the kept ones
    scaled by 1 / (1 - rate) so the expectation is unchanged (stochastic depth, Huang et al.
    2016, in the per-example form)."""
    keep = 1.0 - rate
    threshold = jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
    kept = activations.random_bits(key, (x.shape[0],)) < threshold
    return x * (kept / keep).astype(x.dtype).reshape(-1, *(1,) * (x.ndim - 1))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C], the mean over the positions."""
    return jnp.mean(x, axis=(1, 2))


def pad_shortcut(x: jax.Array, features: int, stride: int) -> jax.Array:
    """He et al.'s option A shortcut: subsample by `stride` and append zero channels up to
    `features` (no parameters)."""
    x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    """Shared fields and the shortcut/merge of `BasicBlock` and `Bottleneck`."""

    features: int  # the block's inner width; it outputs features * expansion channels
    strides: int = 1
    shortcut: str = "projection"  # "pad" (option A) or "projection" (1x1 conv + BN, option B)
    formulation: str = "auto"
    zero_init_residual: bool = False  # last BN's scale starts at 0
    drop_rate: float = 0.0  # stochastic depth: probability of skipping the residual branch

    expansion = 1
    reports_activations = True  # its output is a hidden layer's (dlx.layers.activations)


# Module-level helpers of the blocks' compact methods (methods of a Module would show up as
# calls in its `tabulate` table, and one returning a submodule as a bogus row).
def _norm(block: _Block, name: str, zero_init: bool = False) -> BatchNorm:
    return BatchNorm(formulation=block.formulation, zero_init=zero_init, name=name)


def _shortcut(block: _Block, x: jax.Array, train: bool) -> jax.Array:
    out = block.features * block.expansion
    if block.strides == 1 and x.shape[-1] == out:
        return x
    if block.shortcut == "pad":
        return pad_shortcut(x, out, block.strides)
    if block.shortcut != "projection":
        raise ConfigError(f"shortcut '{block.shortcut}' is not one of {SHORTCUTS}")
    h = constrain(conv(out, 1, block.strides, name="shortcut_conv")(x))
    return _norm(block, "shortcut_bn")(h, train=train)


def _merge(block: _Block, h: jax.Array, x: jax.Array, name: str, train: bool) -> jax.Array:
    """relu(norm(h) * drop-path mask + shortcut(x)), the block's output."""
    shortcut = _shortcut(block, x, train)
    norm = _norm(block, name, block.zero_init_residual)
    if train and block.drop_rate > 0:
        branch = drop_path(norm(h, train=train), block.drop_rate, block.make_rng("dropout"))
        fused = resolve_formulation(block.formulation) == "fused"
        return constrain(add_relu(branch, shortcut, relu=True, materialize=fused))
    return constrain(norm(h, train=train, residual=shortcut, relu=True))


class BasicBlock(_Block):
    """3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN -> + shortcut -> ReLU."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = constrain(conv(self.features, 3, self.strides, name="conv1")(x))
        h = constrain(_norm(self, "bn1")(h, train=train, relu=True))
        h = constrain(conv(self.features, 3, name="conv2")(h))
        return _merge(self, h, x, "bn2", train)


class Bottleneck(_Block):
    """1x1 conv -> BN -> ReLU -> 3x3 conv (stride) -> BN -> ReLU -> 1x1 conv (4x wider) -> BN
    -> + shortcut -> ReLU (the stride on the 3x3 conv, as torchvision's ResNet v1.5)."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = constrain(conv(self.features, 1, name="conv1")(x))
        h = constrain(_norm(self, "bn1")(h, train=train, relu=True))
        h = constrain(conv(self.features, 3, self.strides, name="conv2")(h))
        h = constrain(_norm(self, "bn2")(h, train=train, relu=True))
        h = constrain(conv(self.features * self.expansion, 1, name="conv3")(h))
        return _merge(self, h, x, "bn3", train)


class ConvBN(nn.Module):
    """conv -> BN -> ReLU (a stem)."""

    features: int
    kernel: int
    strides: int = 1
    formulation: str = "auto"

    reports_activations = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = constrain(conv(self.features, self.kernel, self.strides, name="conv")(x))
        return constrain(
            BatchNorm(formulation=self.formulation, name="bn")(h, train=train, relu=True)
        )
