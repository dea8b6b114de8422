"""ResNet (He et al. 2016): a stem, stages of residual blocks, global average pooling, a linear
head. Two families, chosen by `depth` (or `style`):

- "cifar": depth 6n + 2 (20, 32, 44, 56, 110): a 3x3 stem conv, three stages of n basic blocks,
  16-32-64 channels, strides 1-2-2 (28x28 -> 28, 14, 7); shortcuts "pad" (option A: subsample
  and zero channels, no parameters; ResNet-20 has 269,722 parameters for 10 classes and 3
  input channels, 269,434 for 1).
- "imagenet": depth 18, 34 (basic blocks) or 50, 101, 152 (bottleneck blocks, 4x expansion,
  stride on the 3x3 conv as torchvision's v1.5): a 7x7 stride-2 stem conv and a 3x3 stride-2
  max pool, four stages 64-128-256-512, strides 1-2-2-2, "projection" shortcuts (1x1 conv + BN,
  option B). With 1000 classes and 3 input channels the parameter counts are torchvision's
  (ResNet-18 11,689,512; ResNet-50 25,557,032). `stem="cifar"` gives the 3x3 stem without the
  max pool, for small images.

Batch-norm state is the `batch_stats` collection; stochastic depth draws from the "dropout"
stream, its rate rising linearly over the blocks to `stochastic_depth` at the last one.
`formulation` picks the batch-norm formulation (dlx/layers/residual.py): "auto" is the fused
one on CPU, the plain one on GPU/TPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import residual
from dlx.layers.linear import dense
from dlx.models.receptive_field import Layer
from dlx.schema import Float, Int, OneOf, Seq

# depth -> (block type, blocks per stage) of the ImageNet family
IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STYLES = ("auto", "cifar", "imagenet")
DEFAULT_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
DEFAULT_SHORTCUT = {"cifar": "pad", "imagenet": "projection"}

FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    depth=Int(low=8),
    style=OneOf(*STYLES),
    stem=OneOf("auto", "cifar", "imagenet"),
    widths=Seq(Int(low=1)),
    width=Float(low=0, low_open=True),
    num_outputs=Int(low=1),
    shortcut=OneOf("auto", *residual.SHORTCUTS),
    stochastic_depth=Float(0, 1, high_open=True),
    formulation=OneOf(*residual.FORMULATIONS),
)


class Model(nn.Module):
    depth: int = 20
    style: str = "auto"  # "cifar" or "imagenet"; "auto": imagenet for 18/34/50/101/152
    stem: str = "auto"  # "cifar" (3x3 conv) or "imagenet" (7x7/2 conv + 3x3/2 max pool)
    widths: Sequence[int] = ()  # channels per stage (before expansion); () = the style's
    width: float = 1.0  # multiplies every stage's channels
    num_outputs: int = 10
    shortcut: str = "auto"  # "pad" (option A) or "projection" (option B); auto: by style
    stochastic_depth: float = 0.0  # drop-path rate of the last block (linear from 0)
    zero_init_residual: bool = False  # each block's last BN scale starts at 0
    formulation: str = "auto"  # batch norm: "fused" (CPU), "plain" (GPU/TPU), "auto"

    def __post_init__(self):
        schema.check_fields("resnet", self, FIELD_RULES)
        plan(self)  # ConfigError for a depth the style cannot build
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        block_type, blocks, widths = plan(self)
        block_class = residual.Bottleneck if block_type == "bottleneck" else residual.BasicBlock
        x = residual.constrain(x)
        if resolved_stem(self) == "imagenet":
            x = residual.ConvBN(widths[0], 7, 2, self.formulation, name="stem")(x, train=train)
            x = residual.constrain(max_pool_3x3(x))
        else:
            x = residual.ConvBN(widths[0], 3, 1, self.formulation, name="stem")(x, train=train)
        total, index = sum(blocks), 0
        for stage, (count, features, stride) in enumerate(zip(blocks, widths, stage_strides(self))):
            for b in range(count):
                x = block_class(
                    features,
                    stride if b == 0 else 1,
                    resolved_shortcut(self),
                    self.formulation,
                    self.zero_init_residual,
                    self.stochastic_depth * index / max(total - 1, 1),
                    name=f"stage{stage + 1}_block{b + 1}",
                )(x, train=train)
                index += 1
        x = nn.with_logical_constraint(residual.global_avg_pool(x), ("batch", "mlp"))
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def resolved_style(model: Model) -> str:
    if model.style != "auto":
        return model.style
    return "imagenet" if model.depth in IMAGENET_DEPTHS else "cifar"


def resolved_stem(model: Model) -> str:
    return resolved_style(model) if model.stem == "auto" else model.stem


def resolved_shortcut(model: Model) -> str:
    return DEFAULT_SHORTCUT[resolved_style(model)] if model.shortcut == "auto" else model.shortcut


def plan(model: Model) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(block type, blocks per stage, channels per stage) of `model`; ConfigError for a depth
    its style cannot build or widths that do not give one per stage."""
    style = resolved_style(model)
    if style == "imagenet":
        if model.depth not in IMAGENET_DEPTHS:
            raise ConfigError(
                f"resnet depth {model.depth} is not an ImageNet-style ResNet; "
                f"use one of {sorted(IMAGENET_DEPTHS)} or style='cifar' with depth 6n+2"
            )
        block, blocks = IMAGENET_DEPTHS[model.depth]
    else:
        if (model.depth - 2) % 6:
            raise ConfigError(
                f"resnet depth {model.depth} is not a CIFAR-style ResNet (6n+2: 20, 32, 44, "
                f"56, 110); or use one of {sorted(IMAGENET_DEPTHS)} for ImageNet style"
            )
        block, blocks = "basic", ((model.depth - 2) // 6,) * 3
    widths = tuple(model.widths) or DEFAULT_WIDTHS[style]
    if len(widths) != len(blocks):
        raise ConfigError(
            f"resnet widths {tuple(widths)} must give one width per stage "
            f"({len(blocks)} for a {style}-style ResNet-{model.depth})"
        )
    return block, blocks, tuple(max(1, round(w * model.width)) for w in widths)


def stage_strides(model: Model) -> tuple[int, ...]:
    return (1,) + (2,) * (len(plan(model)[1]) - 1)


def max_pool_3x3(x: jax.Array) -> jax.Array:
    """3x3 max pool, stride 2, one padding pixel per side (torchvision's stem pool)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def layer_stack(model: Model) -> list[Layer]:
    """The convolutions and pools along the main path (through every block's convolutions), for
    the receptive-field calculator: the largest receptive field, which the shortcuts do not
    change."""
    block_type, blocks, _ = plan(model)
    if resolved_stem(model) == "imagenet":
        layers = [Layer("stem_conv", 7, 2, 3), Layer("stem_max_pool", 3, 2, 1)]
    else:
        layers = [Layer("stem_conv", 3, 1, 1)]
    for stage, (count, stride) in enumerate(zip(blocks, stage_strides(model))):
        for b in range(count):
            name, s = f"stage{stage + 1}_block{b + 1}", stride if b == 0 else 1
            if block_type == "bottleneck":
                layers += [
                    Layer(f"{name}/conv1", 1, 1, 0),
                    Layer(f"{name}/conv2", 3, s, 1),
                    Layer(f"{name}/conv3", 1, 1, 0),
                ]
            else:
                layers += [Layer(f"{name}/conv1", 3, s, 1), Layer(f"{name}/conv2", 3, 1, 1)]
    return layers


def forward_flops(model: Model, input_shape: tuple[int, int, int]) -> int:
    """Multiply-add FLOPs (x2) of one example's forward: every convolution and the head."""
    height, width, channels = input_shape
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.kernel_size if isinstance(module, nn.Conv) else (1,)
            taps = math.prod(kernel) * args[0].shape[-1]
            total += 2 * (out.size // out.shape[0]) * taps
        return out

    def run():
        x = jnp.zeros((1, height, width, channels))
        variables = model.init(jax.random.key(0), x)
        with nn.intercept_methods(count):
            return model.apply(variables, x)

    jax.eval_shape(run)
    return total


def train_flops_per_example(model: Model, input_shape: tuple[int, int, int]) -> float:
    """Forward + backward: 3 x the forward (input and kernel gradients each cost a forward)."""
    return 3.0 * forward_flops(model, input_shape)
