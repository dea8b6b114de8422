"""DCGAN for small images (Radford et al., 2016), sized for 28x28 by default: a generator and a
discriminator in one module, each with its own parameter subtree (`params["generator"]`,
`params["discriminator"]`) so a task can give each player its own optimizer.

    generate(z, train=...) -> images [B, H, W, C] in [-1, 1]   (tanh)
    discriminate(x) -> logits [B]                              (real: > 0)

Generator: dense to (H/4, W/4, 2*width), batch norm, ReLU, then twice nearest-neighbour
upsampling + 3x3 conv (+ batch norm, ReLU), a 3x3 conv to the image channels and tanh (the
"resize-convolution" form of DCGAN's transposed convolutions: no checkerboard artifacts, no slow
transposed convolution on XLA:CPU; each runs as one convolution on the small map,
`dlx.layers.images.upsample_conv`). Discriminator: 4x4 convolutions of stride 2 with leaky ReLU
(0.2), width then 2*width channels, then a linear logit; no batch norm, so real and fake batches
are scored independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers.images import conv, upsample_conv
from dlx.layers.linear import dense
from dlx.models.receptive_field import Layer
from dlx.schema import Fixed, Int

NORM_AXES = ("norm",)


def _batch_norm(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES),
    )


class Generator(nn.Module):
    latent_dim: int
    width: int
    image_shape: Sequence[int]

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        height, width, channels = self.image_shape
        h = dense(
            (height // 4) * (width // 4) * 2 * self.width,
            ("latent", "embed"),
            "he_normal",
            use_bias=False,
        )(z)  # a bias before batch norm is cancelled
        h = nn.relu(_batch_norm(train)(h)).reshape(
            z.shape[0], height // 4, width // 4, 2 * self.width
        )
        for features in (2 * self.width, self.width):
            h = upsample_conv(features, use_bias=False)(h)
            h = nn.relu(_batch_norm(train)(h))
        return jnp.tanh(conv(channels, init="lecun_normal")(h))


class Discriminator(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for features in (self.width, 2 * self.width):
            h = nn.leaky_relu(conv(features, kernel=4, stride=2)(h), negative_slope=0.2)
        return dense(1, ("embed", "classes"), "lecun_normal")(h.reshape(x.shape[0], -1))[:, 0]


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    latent_dim=Int(low=1), width=Int(low=1), image_shape=Fixed(Int(low=1), Int(low=1), Int(low=1))
)


class Model(nn.Module):
    latent_dim: int = 64
    width: int = 64
    image_shape: Sequence[int] = (28, 28, 1)

    def __post_init__(self):
        schema.check_fields("dcgan", self, FIELD_RULES)
        height, width, _ = self.image_shape
        if height % 4 or width % 4:
            raise ConfigError(
                f"dcgan upsamples twice: model.image_shape {tuple(self.image_shape)}"
                f" needs height and width divisible by 4"
            )
        super().__post_init__()

    def setup(self):
        self.generator = Generator(self.latent_dim, self.width, tuple(self.image_shape))
        self.discriminator = Discriminator(self.width)

    def generate(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        return self.generator(z, train)

    def discriminate(self, x: jax.Array) -> jax.Array:
        return self.discriminator(x)

    def __call__(self, z: jax.Array, x: jax.Array, *, train: bool = False):
        """Both players (what `init` runs, to create both parameter sets)."""
        return self.generate(z, train=train), self.discriminate(x)


def layer_stack(model: Model) -> list[Layer]:
    """The discriminator's convolutions, for the receptive-field table of model_summary.txt."""
    return [Layer(f"discriminator_conv_{i}", 4, 2) for i in range(2)]
