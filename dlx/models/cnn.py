"""Convolutional classifier: [Conv -> (BatchNorm) -> activation -> pool] x stages -> flatten ->
[Dense -> activation -> (Dropout)] -> linear head.

The pooling and first-layer formulations are what measured fastest on XLA:CPU; the
measurements are in BENCHMARKS.md ("Tuning notes").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlx import schema
from dlx.layers import activations, initializers, residual
from dlx.layers.linear import batch_norm, dense
from dlx.models import parameter_counts
from dlx.models.receptive_field import Layer, receptive_fields
from dlx.schema import Float, Int, OneOf, Seq

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")
ACTIVATION_AXES = ("batch", "height", "width", "conv_out")
PENULTIMATE = "penultimate"  # the sown name of the head's input

# Non-decreasing f: f(max(a) + b) == max(f(a + b)) bit for bit, and the gradient goes to the same
# element unless rounding ties two a + b that differ in a. These are also piecewise linear through
# 0, so their derivative at x equals their derivative at f(x): `conv_max_pool` reads it off its
# output instead of recomputing the pre-activation.
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
    rows = [jnp.stack(hits[i * size : (i + 1) * size], axis=3) for i in range(size)]
    mask = jnp.stack(rows, axis=2)
    return (jnp.where(mask, g[:, :, None, :, None], 0).reshape(x.shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def pool2d(x: jax.Array, kind: str, size: int) -> jax.Array:
    """Non-overlapping `size` x `size` max or average pool of NHWC `x`, VALID padding (as
    `nn.max_pool(x, (size, size), strides=(size, size))`)."""
    _, h, w, _ = x.shape
    x = x[:, : h - h % size, : w - w % size]
    if kind == "max":
        return _max_pool(x, size)
    b, h, w, c = x.shape
    return x.reshape(b, h // size, size, w // size, size, c).mean(axis=(2, 4))


# A convolution whose input has at most this many taps per output (kernel_size^2 x input
# channels, e.g. 9 for a 3x3 kernel on a grey image) runs as elementwise multiply-adds fused with
# its max pool, bias and activation, instead of as a library convolution.
DIRECT_CONV_MAX_TAPS = 32


def _conv_out_size(size: int, kernel_size: int, padding: str) -> int:
    return size if padding == "SAME" else size - kernel_size + 1


def _pool_phase_taps(
    x: jax.Array, kernel_size: int, size: int, padding: str
) -> list[list[jax.Array]]:
    """For each position (di, dj) inside the pool window, in row-major order, the conv's input
    taps at the stride-1 conv outputs (size*i + di, size*j + dj): k*k*C arrays [B, Ho, Wo] in
    HWIO order, so that sum_t taps[t] * kernel.reshape(-1, out)[t] is the conv there."""
    k, channels = kernel_size, x.shape[-1]
    if padding == "SAME":  # as lax's SAME for stride 1: the odd pixel of an even kernel goes last
        low = (k - 1) // 2
        x = jnp.pad(x, ((0, 0), (low, k - 1 - low), (low, k - 1 - low), (0, 0)))
    ho, wo = (x.shape[1] - k + 1) // size, (x.shape[2] - k + 1) // size

    def tap(u: int, v: int, c: int) -> jax.Array:  # padded input rows u + size*i, cols v + size*j
        return x[:, u : u + size * (ho - 1) + 1 : size, v : v + size * (wo - 1) + 1 : size, c]

    return [
        [tap(di + kh, dj + kw, c) for kh in range(k) for kw in range(k) for c in range(channels)]
        for di in range(size)
        for dj in range(size)
    ]


def _direct_conv(taps: list[jax.Array], kernel: jax.Array) -> jax.Array:
    """The conv at one pool position as a sum of broadcast products: with few taps this is one
    elementwise loop that XLA fuses with what follows, where a matmul or library conv would write
    out (and read back) the full-size map."""
    weights = kernel.reshape(len(taps), kernel.shape[-1])
    out = taps[0][..., None] * weights[0]
    for t in range(1, len(taps)):
        out = out + taps[t][..., None] * weights[t]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv_max_pool(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    size: int,
    padding: str,
    act: Callable[[jax.Array], jax.Array],
) -> jax.Array:
    """act(max_pool(conv(x, kernel)) + bias) for a stride-1 conv and a non-overlapping size x size
    max pool (VALID), computed as max over the pool window's positions of act(conv + bias), each
    position a direct conv: the full-size conv output is never written to memory. `act` must be
    one of `_COMMUTES_WITH_MAX`. Gradients as Flax's layers give them (ties: first maximum)."""
    return functools.reduce(
        jnp.maximum,
        [
            act(_direct_conv(taps, kernel) + bias)
            for taps in _pool_phase_taps(x, kernel.shape[0], size, padding)
        ],
    )


def _conv_max_pool_fwd(x, kernel, bias, size, padding, act):
    # Applying bias and act per window position (not once after the max) gives the same numbers,
    # and keeps XLA from recomputing this fusion inside the transposed copy the next conv's
    # kernel gradient reads (a transpose with fused elementwise ops is ~4.5x slower than a plain
    # one).
    raw = [
        _direct_conv(taps, kernel) for taps in _pool_phase_taps(x, kernel.shape[0], size, padding)
    ]
    out = functools.reduce(jnp.maximum, [act(r + bias) for r in raw])
    return out, (x, kernel, out, _first_max_index(raw))


def _first_max_index(values: list[jax.Array]) -> jax.Array:
    """Index of the first maximum among `values`, elementwise (int8)."""
    top = functools.reduce(jnp.maximum, values)
    index = jnp.full(top.shape, len(values) - 1, jnp.int8)
    for i in reversed(range(len(values) - 1)):
        index = jnp.where(values[i] == top, jnp.int8(i), index)
    return index


def _conv_max_pool_bwd(size, padding, act, residuals, g):
    x, kernel, out, index = residuals
    k, _, _, features = kernel.shape
    phases = _pool_phase_taps(x, k, size, padding)
    g = jax.vjp(act, out)[1](g)[0]  # act'(out) == act'(pre-activation), see _COMMUTES_WITH_MAX
    per_position = jnp.stack([jnp.where(index == i, g, 0) for i in range(len(phases))])
    taps = jnp.stack([jnp.stack(t) for t in phases])  # [positions, taps, B, Ho, Wo]
    # One matmul per pool position (batched), summed after: contracting over the positions too
    # would make XLA transpose both operands first.
    dkernel = jnp.einsum(
        "ptn,pno->pto",
        taps.reshape(*taps.shape[:2], -1),
        per_position.reshape(len(phases), -1, features),
    ).sum(0)
    # The input gradient (dropped by XLA when x is the image): the pooled gradient scattered to
    # the full-size map, through the convolution's own VJP.
    b, ho, wo, _ = g.shape
    full = per_position.reshape(size, size, b, ho, wo, features).transpose(2, 3, 0, 4, 1, 5)
    full = full.reshape(b, ho * size, wo * size, features)
    conv_h, conv_w = (_conv_out_size(n, k, padding) for n in x.shape[1:3])
    full = jnp.pad(full, ((0, 0), (0, conv_h - ho * size), (0, conv_w - wo * size), (0, 0)))
    _, conv_vjp = jax.vjp(
        lambda x: lax.conv_general_dilated(
            x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        x,
    )
    return conv_vjp(full)[0], dkernel.reshape(kernel.shape), g.sum(axis=(0, 1, 2))


conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


class Conv(nn.Module):
    """2-D convolution (NHWC input, HWIO kernel) whose parameters carry logical axis names.

    With `max_pool > 1` it returns act(max_pool(conv(x)) + bias) for an `activation` in
    `_COMMUTES_WITH_MAX`: the pool runs before the bias and activation, and a conv with few
    input taps (`DIRECT_CONV_MAX_TAPS`) runs fused with all three.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: str = "SAME"
    kernel_init: str = "he_normal"
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, max_pool: int = 0, activation: str = "linear") -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(initializers.get(self.kernel_init), CONV_AXES),
            shape,
        )
        bias = jnp.zeros((self.features,))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                (self.features,),
            )
        act = activations.get(activation)
        if max_pool > 1 and activation not in _COMMUTES_WITH_MAX:
            raise ValueError(f"pooling before '{activation}' changes the result; pool after it")
        if (
            max_pool > 1
            and self.strides == 1
            and self.kernel_size**2 * x.shape[-1] <= DIRECT_CONV_MAX_TAPS
        ):
            y = conv_max_pool(x, kernel, bias, max_pool, self.padding, act)
            return nn.with_logical_constraint(y, ACTIVATION_AXES)
        y = lax.conv_general_dilated(
            x,
            kernel,
            (self.strides, self.strides),
            self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = nn.with_logical_constraint(y, ACTIVATION_AXES)
        if max_pool > 1:
            y = pool2d(y, "max", max_pool)
        return act(y + bias) if self.use_bias else act(y)


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    num_outputs=Int(low=1),
    features=Seq(Int(low=1)),
    kernel_size=Int(low=1),
    strides=Int(low=1),
    padding=OneOf("SAME", "VALID"),
    pool=OneOf("max", "avg", "none"),
    pool_size=Int(low=1),
    dense=Seq(Int(low=1)),
    dropout=Float(0, 1, high_open=True),
)


class Model(nn.Module):
    num_outputs: int = 10
    features: Sequence[int] = (32, 64)
    kernel_size: int = 3
    strides: int = 1
    padding: str = "SAME"
    pool: str = "max"  # max, avg or none
    pool_size: int = 2
    dense: Sequence[int] = (128,)
    activation: str = "relu"
    kernel_init: str = "he_normal"  # "init" would shadow Module.init
    batch_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        schema.check_fields("cnn", self, FIELD_RULES)
        activations.get(self.activation)
        initializers.get(self.kernel_init)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        pool = functools.partial(pool2d, kind=self.pool, size=self.pool_size)
        # Pooling first saves a pass over the full-size map (~10% of the step); batch norm's
        # scale may be negative, which would turn the max into a min.
        pool_first = (
            self.pool == "max" and not self.batch_norm and self.activation in _COMMUTES_WITH_MAX
        )
        for i, features in enumerate(self.features):
            conv = Conv(
                features,
                self.kernel_size,
                self.strides,
                self.padding,
                self.kernel_init,
                use_bias=not self.batch_norm,
            )  # batch norm's offset makes a bias redundant
            if pool_first:
                x = conv(x, max_pool=self.pool_size, activation=self.activation)
                x = activations.LayerOutput(name=f"conv_{i}")(x)
                continue
            x = conv(x)
            if self.batch_norm and self.activation == "relu":
                # norm and ReLU as one op with its own gradient (dlx.layers.residual): same
                # variables and numbers as nn.BatchNorm then ReLU, 1.36 -> 1.13x torch's step
                x = residual.BatchNorm()(x, train=train, relu=True)
            else:
                if self.batch_norm:
                    x = batch_norm(train)(x)
                x = act(x)
            x = activations.LayerOutput(name=f"conv_{i}")(x)
            if self.pool != "none":
                x = pool(x)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.dense):
            x = dense(width, ("embed", "mlp"), self.kernel_init)(x)
            x = nn.with_logical_constraint(act(x), ("batch", "mlp"))
            x = activations.LayerOutput(name=f"dense_{i}")(x)
            if self.dropout:
                x = activations.Dropout(self.dropout, deterministic=not train)(x)
        # What the head reads, kept only when a caller asks for the collection (`penultimate`);
        # init and training leave "intermediates" immutable, so nothing is stored.
        self.sow("intermediates", PENULTIMATE, x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def penultimate(apply_fn, variables: dict, x: jax.Array) -> jax.Array:
    """The activations the classifier's head reads, [B, dense[-1]] (or the flattened last conv
    stage without dense layers), in eval mode: the feature space of the sample-quality metrics
    (dlx/metrics/sample_quality.py). `apply_fn` is a CNN `Model`'s apply."""
    _, captured = apply_fn(variables, x, train=False, mutable=["intermediates"])
    return captured["intermediates"][PENULTIMATE][0]


def layer_stack(model: Model) -> list[Layer]:
    """The model's convolutions and pools, for the receptive-field calculator."""
    layers = []
    for i, _ in enumerate(model.features):
        layers.append(Layer(f"conv_{i}", model.kernel_size, model.strides, model.padding))
        if model.pool != "none":
            layers.append(
                Layer(f"{model.pool}_pool_{i}", model.pool_size, model.pool_size, "VALID")
            )
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
        rows.append(
            (
                name,
                f"{along_h.size}x{along_w.size}x{channels}",
                params,
                f"{along_h.receptive_field}x{along_w.receptive_field}",
            )
        )
        height, width = along_h.size, along_w.size
    rows.append(("flatten", f"{height * width * channels}", 0, ""))
    for i, out in enumerate(model.dense):
        rows.append((f"dense_{i} ({model.activation})", f"{out}", counts[f"Dense_{i}"], ""))
    rows.append(("head", f"{model.num_outputs}", counts["head"], ""))
    lines = [f"{'layer':<24}{'output':>14}{'params':>12}{'receptive field':>18}"]
    lines += [
        f"{name:<24}{shape:>14}{params:>12,}{field:>18}" for name, shape, params, field in rows
    ]
    lines.append(f"total parameters: {sum(counts.values()):,}")
    return "\n".join(lines)
