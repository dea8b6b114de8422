"""Convolutional classifier: [Conv -> (BatchNorm) -> activation -> pool] x stages -> flatten ->
[Dense -> activation -> (Dropout)] -> linear head.

Pooling with a window equal to its stride that divides the input is written as a reshape and a
max/mean over the window axes: on XLA:CPU that is ~2x faster through the backward pass than
`nn.max_pool`, whose gradient (select_and_scatter) dominated the whole step (FIELD-NOTES).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError
from dlx.layers import activations
from dlx.layers.linear import batch_norm, conv, dense, param_count
from dlx.models.receptive_field import Layer, receptive_fields


def pool2d(x: jax.Array, kind: str, size: int) -> jax.Array:
    b, h, w, c = x.shape
    if h % size == 0 and w % size == 0:
        windows = x.reshape(b, h // size, size, w // size, size, c)
        return windows.max(axis=(2, 4)) if kind == "max" else windows.mean(axis=(2, 4))
    pool = nn.max_pool if kind == "max" else nn.avg_pool
    return pool(x, (size, size), strides=(size, size), padding="VALID")


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
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        for features in self.features:
            x = conv(features, self.kernel_size, self.strides, self.padding, self.kernel_init)(x)
            if self.batch_norm:
                x = batch_norm(train)(x)
            x = nn.with_logical_constraint(act(x), ("batch", "height", "width", "conv_out"))
            if self.pool != "none":
                x = pool2d(x, self.pool, self.pool_size)
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = nn.with_logical_constraint(act(dense(width, ("embed", "mlp"), self.kernel_init)(x)),
                                           ("batch", "mlp"))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def layer_stack(model: Model) -> list[Layer]:
    layers = []
    for i, _ in enumerate(model.features):
        layers.append(Layer(f"conv_{i}", model.kernel_size, model.strides, model.padding))
        if model.pool != "none":
            layers.append(Layer(f"{model.pool}_pool_{i}", model.pool_size, model.pool_size, "VALID"))
    return layers


def summarize(model: Model, input_shape: tuple[int, ...]) -> str:
    """Per layer: output shape, parameters and receptive field (in input pixels)."""
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
    lines = [f"{'layer':<16}{'output':>16}{'params':>12}{'receptive field':>17}"]
    channels = input_shape[-1]
    features = iter(model.features)
    for field in receptive_fields(layer_stack(model), input_shape[1]):
        if field.name.startswith("conv"):
            out_channels = next(features)
            params = (model.kernel_size ** 2 * channels + 1) * out_channels
            params += 2 * out_channels if model.batch_norm else 0
            channels = out_channels
        else:
            params = 0
        shape = f"{field.size}x{field.size}x{channels}"
        lines.append(f"{field.name:<16}{shape:>16}{params:>12,}"
                     f"{field.receptive_field:>12}x{field.receptive_field}")
        width = field.size * field.size * channels
    for i, out in enumerate((*model.dense, model.num_outputs)):
        name = f"dense_{i}" if i < len(model.dense) else "head"
        lines.append(f"{name:<16}{out:>16}{(width + 1) * out:>12,}")
        width = out
    lines.append(f"total parameters: {param_count(variables['params']):,}")
    return "\n".join(lines)
