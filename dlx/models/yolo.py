"""A YOLO-style single-stage detector: a convolutional backbone down to stride 8, a small
feature pyramid (the stride-16 map upsampled and merged back), and one prediction per grid cell,
anchor-free: objectness, class logits and a box relative to the cell.

Output [B, G, G, 5 + num_classes] for a G = size / 8 grid: (x offset, y offset, width, height,
objectness, classes...), raw. `decode` turns the first four into boxes in pixels, as YOLOv5
bounds them: the centre is (cell + 2 * sigmoid - 0.5) * 8 (it may sit up to half a cell outside
its cell, so an object can be assigned to neighbouring cells too) and each side is
(4 * sigmoid)^2 * 8, at most 16 cells, with no exponential to blow up early in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import activations
from dlx.layers.images import conv
from dlx.layers.linear import batch_norm
from dlx.models.receptive_field import Layer
from dlx.schema import Int, Seq

STRIDE = 8  # the grid's cell size in input pixels
BOX_FIELDS = 5  # x, y, w, h, objectness before the class logits
ACTIVATION_AXES = ("batch", "height", "width", "conv_out")

FIELD_RULES = dict(
    num_classes=Int(low=1),
    widths=Seq(Int(low=2), min_len=4),
    blocks=Seq(Int(low=0), min_len=4),
)


class ConvBN(nn.Module):
    """conv -> batch norm -> activation (the conv has no bias: batch norm's offset is one)."""

    features: int
    kernel: int = 3
    stride: int = 1
    activation: str = "silu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = conv(self.features, kernel=self.kernel, stride=self.stride, use_bias=False)(x)
        x = batch_norm(train)(x)
        return nn.with_logical_constraint(activations.get(self.activation)(x), ACTIVATION_AXES)


class Residual(nn.Module):
    """x + ConvBN(3x3)(ConvBN(1x1)(x)): the backbone's repeated block."""

    activation: str = "silu"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        y = ConvBN(features // 2, 1, activation=self.activation)(x, train)
        return x + ConvBN(features, 3, activation=self.activation)(y, train)


class Model(nn.Module):
    num_classes: int = 20
    # channels at strides 2, 4, 8, 16 (the stem runs at stride 1 with widths[0] // 2)
    widths: Sequence[int] = (16, 32, 64, 128)
    blocks: Sequence[int] = (1, 2, 2, 1)  # residual blocks after each downsampling
    activation: str = "silu"

    def __post_init__(self):
        schema.check_fields("yolo", self, FIELD_RULES)
        activations.get(self.activation)
        if len(self.widths) != 4 or len(self.blocks) != 4:
            raise ConfigError(
                f"yolo widths and blocks give the 4 stages (strides 2, 4, 8, 16): got "
                f"widths={tuple(self.widths)}, blocks={tuple(self.blocks)}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.shape[1] % (2 * STRIDE) or x.shape[2] % (2 * STRIDE):
            raise ValueError(
                f"the detector needs image sides divisible by {2 * STRIDE}, got {x.shape[1:3]}"
            )
        act = self.activation
        x = ConvBN(max(self.widths[0] // 2, 1), 3, activation=act)(x, train)
        features = []
        for width, repeats in zip(self.widths, self.blocks):
            x = ConvBN(width, 3, 2, activation=act)(x, train)
            for _ in range(repeats):
                x = Residual(act)(x, train)
            features.append(x)
        stride8, stride16 = features[2], features[3]
        # The coarse map, upsampled, brings context from a larger receptive field to each cell.
        b, h, w, c = stride16.shape
        up = jnp.broadcast_to(stride16[:, :, None, :, None], (b, h, 2, w, 2, c))
        x = jnp.concatenate([stride8, up.reshape(b, 2 * h, 2 * w, c)], axis=-1)
        x = ConvBN(self.widths[2], 1, activation=act)(x, train)
        x = ConvBN(self.widths[2], 3, activation=act)(x, train)
        # The objectness bias starts at the prior of ~1% positive cells (Lin et al., 2017), so
        # the first steps are not spent pushing every cell's score down.
        head = nn.Conv(
            BOX_FIELDS + self.num_classes,
            (1, 1),
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.01), ("conv_height", "conv_width", "conv_in", "conv_out")
            ),
            bias_init=nn.with_logical_partitioning(_head_bias, ("conv_out",)),
            name="head",
        )
        return head(x)


def _head_bias(key, shape, dtype=jnp.float32):
    bias = jnp.zeros(shape, dtype)
    return bias.at[4].set(-4.6)  # sigmoid(-4.6) ~ 0.01


def cell_corners(size: int) -> jax.Array:
    """The [G, G, 2] (x, y) pixel coordinates of the cells' top-left corners."""
    cells = jnp.arange(size // STRIDE, dtype=jnp.float32) * STRIDE
    return jnp.stack(jnp.meshgrid(cells, cells, indexing="xy"), axis=-1)


def decode(raw: jax.Array) -> jax.Array:
    """Raw outputs [B, G, G, >= 4] -> boxes [B, G, G, 4] (x_min, y_min, x_max, y_max) in pixels."""
    corner = cell_corners(raw.shape[1] * STRIDE)
    centre = corner + (2 * jax.nn.sigmoid(raw[..., :2]) - 0.5) * STRIDE
    size = jnp.square(4 * jax.nn.sigmoid(raw[..., 2:4])) * STRIDE
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def layer_stack(model: Model) -> list[Layer]:
    """The convolutions of the backbone down to its stride-16 map, for the receptive-field table
    of model_summary.txt (a residual block's 3x3 conv counted, its 1x1 adds nothing). A cell of
    the output grid sees that field plus 2 x 8 pixels more: the 3x3 conv after the merge runs on
    the stride-8 grid."""
    layers = [Layer("stem", 3)]
    for i, repeats in enumerate(model.blocks):
        layers.append(Layer(f"down_{i}", 3, 2))
        layers += [Layer(f"block_{i}_{j}", 3) for j in range(repeats)]
    return layers
