"""Autoencoders for images: dense or convolutional, deterministic (AE, denoising AE) or
variational (VAE, `variational=True`: the encoder gives a Gaussian's mean and log-variance).

    encode(x) -> z, or (mean, log_variance) for a VAE     x: [B, H, W, C] in [0, 1]
    decode(z) -> logits [B, H, W, C]                      sigmoid(logits) is the reconstruction
    __call__(x) -> logits of the reconstruction (a VAE decodes its mean: no sampling)

The convolutional variant halves the resolution twice with strided 3x3 convolutions and doubles
it back with nearest-neighbour upsampling + 3x3 convolution (28 -> 14 -> 7 -> 14 -> 28).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import activations
from dlx.layers.images import conv, upsample
from dlx.layers.linear import dense
from dlx.models.receptive_field import Layer
from dlx.schema import Fixed, Int, OneOf, Seq

KINDS = ("dense", "conv")


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    kind=OneOf(*KINDS),
    latent_dim=Int(low=1),
    hidden=Seq(Int(low=1), min_len=1),
    image_shape=Fixed(Int(low=1), Int(low=1), Int(low=1)),
)


class Model(nn.Module):
    kind: str = "dense"
    latent_dim: int = 32
    hidden: Sequence[int] = (512, 256)  # dense: layer widths; conv: channels per resolution
    variational: bool = False
    image_shape: Sequence[int] = (28, 28, 1)
    activation: str = "relu"

    def __post_init__(self):
        schema.check_fields("autoencoder", self, FIELD_RULES)
        height, width, _ = self.image_shape
        if self.kind == "conv" and (height % 4 or width % 4 or len(self.hidden) != 2):
            raise ConfigError(
                "the conv autoencoder halves the image twice: it needs height and "
                "width divisible by 4 and model.hidden of two channel counts"
            )
        activations.get(self.activation)  # a ConfigError now for an unknown name
        super().__post_init__()

    def setup(self):
        out = 2 * self.latent_dim if self.variational else self.latent_dim
        height, width, channels = self.image_shape
        if self.kind == "dense":
            self.encoder_layers = [dense(w, ("embed", "mlp"), "he_normal") for w in self.hidden]
            self.encoder_head = dense(out, ("mlp", "latent"), "lecun_normal")
            self.decoder_layers = [
                dense(w, ("latent", "mlp"), "he_normal") for w in reversed(self.hidden)
            ]
            self.decoder_head = dense(math.prod(self.image_shape), ("mlp", "embed"), "lecun_normal")
        else:
            c1, c2 = self.hidden
            self.encoder_layers = [conv(c1, stride=2), conv(c2, stride=2)]
            self.encoder_head = dense(out, ("embed", "latent"), "lecun_normal")
            self.decoder_input = dense(
                (height // 4) * (width // 4) * c2, ("latent", "embed"), "he_normal"
            )
            self.decoder_layers = [conv(c1), conv(c1)]
            self.decoder_head = conv(channels, init="lecun_normal")

    def _act(self, x: jax.Array) -> jax.Array:
        return activations.get(self.activation)(x)

    def encode(self, x: jax.Array):
        batch = x.shape[0]
        if self.kind == "dense":
            h = x.reshape(batch, -1)
            for layer in self.encoder_layers:
                h = self._act(layer(h))
        else:
            h = x
            for layer in self.encoder_layers:
                h = self._act(layer(h))
            h = h.reshape(batch, -1)
        z = self.encoder_head(h)
        if self.variational:
            mean, log_variance = jnp.split(z, 2, axis=-1)
            return mean, log_variance
        return z

    def decode(self, z: jax.Array) -> jax.Array:
        batch = z.shape[0]
        height, width, channels = self.image_shape
        if self.kind == "dense":
            h = z
            for layer in self.decoder_layers:
                h = self._act(layer(h))
            return self.decoder_head(h).reshape(batch, height, width, channels)
        c2 = self.hidden[1]
        h = self._act(self.decoder_input(z)).reshape(batch, height // 4, width // 4, c2)
        for layer in self.decoder_layers:
            h = self._act(layer(upsample(h)))
        return self.decoder_head(h)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        z = self.encode(x)
        return self.decode(z[0] if self.variational else z)


def layer_stack(model: Model) -> list[Layer]:
    """The conv encoder's layers, for the receptive-field table of model_summary.txt (none for
    the dense kind)."""
    if model.kind != "conv":
        return []
    return [Layer(f"encoder_conv_{i}", 3, 2) for i in range(len(model.hidden))]
