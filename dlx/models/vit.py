"""Vision Transformer (Dosovitskiy et al. 2021) for image classification, config name "vit".

`__call__(images [B, H, W, C] in [0, 1], *, train) -> logits [B, num_outputs]`:
patches of patch_size x patch_size, each projected to embed_dim (stem="patch", `PatchEmbedding`:
a stride-p conv as a reshape and a matmul; or stem="conv", below) -> a learned class token in
front (pool="cls") -> positions added (learned, one vector per token, or fixed 2-D sinusoidal
with a zero vector for the class token) -> dropout -> num_layers pre-norm encoder blocks ->
LayerNorm -> the class token's vector (pool="cls") or the mean over the patch tokens
(pool="mean") -> linear head.

Block: x + drop_path(dropout(attn(ln_1(x)))), then x + drop_path(dropout(mlp(ln_2(x)))), with
exact (erf) GELU and LayerNorm eps 1e-6 as ViT's. The parameters are those of dlx's
LayerNorm, MultiHeadAttention and GeluMLP, but the block computes them its own way, which took a
train step of configs/fashion_vit.py from 1.26x to 1.05-1.15x PyTorch's CPU time, both on one
core (bench/vit.py; built from those layers it was 813 vs 646 ms): each LayerNorm's scale and shift are folded into the kernel of
the projection that reads it (`_fold_norm`: no pass over the activations applies them), the
normalization has a closed-form gradient (`normalize`), q, k and v come out of their projection
head-major with 1/sqrt(head_dim) folded into q, the softmax is normalised after the weighted sum,
and GELU is written with erf (jax.nn.gelu's erfc form cost twice as much). tests/test_vit.py
checks the block against PyTorch's nn.LayerNorm / nn.MultiheadAttention / nn.GELU block.
drop_path (stochastic depth, Huang et al. 2016) drops a block's residual branches per example
with a rate rising linearly from 0 in the first block to `drop_path` in the last (timm's
schedule); dropout, attention dropout and drop_path draw from the "dropout" rng.

stem="conv" is the convolutional stem of Xiao et al. 2021 ("Early convolutions help transformers
see better"; the hybrid of Dosovitskiy et al. §3.1 at its smallest): log2(patch_size) 3x3
stride-2 convolutions, each followed by batch norm and ReLU (dlx.layers.residual.ConvBN), their
widths doubling up to embed_dim (64, 128 for patch 4 at width 128), then a 1x1 projection to
embed_dim with a bias. It makes the same patch grid of tokens, but each token sees a
(2p - 1)-pixel square through log2(p) non-linear layers (7x7 through two for patch 4) where the
patch projection is one linear map of p x p pixels; the batch-norm statistics are the
"batch_stats" collection.

Parameter names (logical axes as dlx's Transformer, so the same sharding rules apply):
  patch_embed/kernel, bias        [p, p, C, embed], [embed]   (a conv's HWIO kernel; [1, 1,
                                                               embed, embed] after a conv stem)
  stem_{i}/conv/kernel, stem_{i}/bn/{scale,bias}                stem="conv" only
  cls_token                       [embed]                      pool="cls" only
  pos_embedding/embedding         [tokens, embed]              positions="learned"; row 0 is
                                                               the class token's with pool="cls"
  h_{i}/ln_1, h_{i}/ln_2          scale, bias [embed]
  h_{i}/attn/qkv/{kernel,bias}    [embed, 3, heads, head_dim], [3, heads, head_dim]
  h_{i}/attn/proj/{kernel,bias}   [heads, head_dim, embed], [embed]
  h_{i}/mlp/fc, h_{i}/mlp/proj    [embed, mlp], [mlp, embed]
  ln_f/{scale,bias}, head/{kernel,bias}  [embed, num_outputs]
With pool="cls" and learned positions the count equals the published one: ViT-B/16 at 224x224x3,
1000 classes, 86,567,656 parameters (tests/test_vit.py). Initialisation: N(0, 0.02) for the
matmul kernels, positions and class token (timm's scale), N(0, 1/fan-in) for the patch kernel,
zero biases, unit norm scales.

`attention_maps(model, variables, images)` gives every block's attention weights;
`train_flops_per_example` the model FLOPs of a training example. Speed against PyTorch:
bench/vit.py.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers.activations import Dropout, random_bits
from dlx.layers.linear import INIT_STDDEV, Projection
from dlx.layers.norms import LayerNorm
from dlx.layers.patches import LearnedPositions2D, PatchEmbedding, sinusoidal_2d
from dlx.layers.residual import ConvBN
from dlx.models.receptive_field import Layer
from dlx.schema import Float, Int, OneOf

POOLS = ("cls", "mean")
POSITIONS = ("learned", "sinusoidal")
STEMS = ("patch", "conv")
TOKEN_AXES = ("batch", "length", "embed")


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Each example's x [B, ...] zeroed with probability `rate`, the others scaled by
    1 / (1 - rate) (a residual branch dropped per example)."""
    keep = 1.0 - rate
    threshold = jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
    kept = random_bits(rng, (x.shape[0],)) < threshold
    return jnp.where(kept.reshape(-1, *(1,) * (x.ndim - 1)), x / keep, jnp.zeros_like(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def normalize(x: jax.Array, epsilon: float) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) over the last axis (LayerNorm without its affine), the
    variance two-pass as PyTorch's, with the closed-form gradient."""
    return _normalize_forward(x, epsilon)[0]


def _normalize_forward(x, epsilon):
    centred = x - x.mean(-1, keepdims=True)
    inverse = jax.lax.rsqrt((centred * centred).mean(-1, keepdims=True) + epsilon)
    normalized = centred * inverse
    return normalized, (normalized, inverse)


def _normalize_backward(epsilon, residuals, g):
    normalized, inverse = residuals
    mean_g = g.mean(-1, keepdims=True)
    mean_g_normalized = (g * normalized).mean(-1, keepdims=True)
    return (inverse * (g - mean_g - normalized * mean_g_normalized),)


normalize.defvjp(_normalize_forward, _normalize_backward)


def gelu(x: jax.Array) -> jax.Array:
    """The exact GELU, x * Phi(x), in PyTorch's form 0.5 x (1 + erf(x / sqrt 2)): the same
    function as jax.nn.gelu(approximate=False), whose erfc form cost ~2x more in a ViT step."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class NormParams(nn.Module):
    """A LayerNorm's parameters, "scale" and "bias" [features] (as dlx.layers.norms.LayerNorm
    names them), for a block that applies them itself."""

    @nn.compact
    def __call__(self, features: int) -> tuple[jax.Array, jax.Array]:
        def param(name, init):
            return self.param(name, nn.with_logical_partitioning(init, ("norm",)), (features,))

        return param("scale", nn.initializers.ones), param("bias", nn.initializers.zeros)


class DenseParams(nn.Module):
    """A dlx Projection's parameters: "kernel" (in_shape + out_shape, N(0, 0.02)) and "bias"
    (out_shape), with their logical names."""

    shape: tuple[int, ...]
    names: tuple[str, ...]
    inputs: int = 1  # leading axes of the kernel that are its input

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(INIT_STDDEV), self.names),
            self.shape,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.inputs :]),
            self.shape[self.inputs :],
        )
        return kernel, bias


def _fold_norm(kernel, bias, scale, shift):
    """A projection of LayerNorm'd inputs, (x_hat * scale + shift) @ kernel + bias, as
    x_hat @ kernel' + bias': the norm's affine moves onto the [in, out...] kernel, so no pass
    over the activations applies it."""
    folded = kernel * scale.reshape(-1, *(1,) * (kernel.ndim - 1))
    return folded, jnp.tensordot(shift, kernel, 1) + bias


class SelfAttention(nn.Module):
    """Multi-head self-attention of normalized tokens [B, T, embed] (no mask) with the norm's
    scale and shift folded in: params "qkv" (kernel [embed, 3, heads, head_dim]) and "proj"
    (kernel [heads, head_dim, embed]), the layout of dlx's MultiHeadAttention. The projection
    writes q, k, v head-major and the softmax is normalised after the weighted sum
    (softmax(s) v = (exp(s - max) v) / sum exp(s - max)); with the norm folding and the erf GELU
    the train step took ~11% less CPU time than with MultiHeadAttention after dlx's LayerNorm
    (alternating A/B on one core). With the "intermediates" collection mutable it sows its
    weights as "attention_weights"."""

    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x_hat, scale, shift, *, train: bool = False) -> jax.Array:
        width = x_hat.shape[-1]
        heads, head_dim = self.num_heads, width // self.num_heads
        kernel, bias = DenseParams(
            (width, 3, heads, head_dim), ("embed", "qkv", "heads", "head_dim"), name="qkv"
        )()
        kernel, bias = _fold_norm(kernel, bias, scale, shift)
        query_scale = jnp.array([1.0 / math.sqrt(head_dim), 1.0, 1.0])  # 1/sqrt(d) into q
        kernel, bias = kernel * query_scale[:, None, None], bias * query_scale[:, None, None]
        qkv = jnp.einsum("btd,dshe->sbhte", x_hat, kernel) + bias[:, None, :, None, :]
        qkv = nn.with_logical_constraint(qkv, (None, "batch", "heads", "length", "head_dim"))
        scores = jnp.einsum("bhqe,bhke->bhqk", qkv[0], qkv[1])
        weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
        total = weights.sum(-1, keepdims=True)
        if self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "attention_weights", weights / total)
        if train and self.dropout > 0.0:
            keep = 1.0 - self.dropout
            threshold = jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
            bits = random_bits(self.make_rng("dropout"), weights.shape)
            weights = jnp.where(bits < threshold, weights / keep, 0.0)
        out = jnp.einsum("bhqk,bhke->bhqe", weights, qkv[2]) / total
        out = nn.with_logical_constraint(out, ("batch", "heads", "length", "head_dim"))
        kernel, bias = DenseParams(
            (heads, head_dim, width), ("heads", "head_dim", "embed"), inputs=2, name="proj"
        )()
        return jnp.einsum("bhte,hed->btd", out, kernel) + bias


class Mlp(nn.Module):
    """fc (embed -> mlp), exact GELU, proj (mlp -> embed) on normalized tokens with the norm's
    scale and shift folded into fc: the parameters of dlx's GeluMLP ("fc", "proj")."""

    hidden: int

    @nn.compact
    def __call__(self, x_hat, scale, shift) -> jax.Array:
        width = x_hat.shape[-1]
        kernel, bias = DenseParams((width, self.hidden), ("embed", "mlp"), name="fc")()
        kernel, bias = _fold_norm(kernel, bias, scale, shift)
        h = gelu(x_hat @ kernel + bias)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        kernel, bias = DenseParams((self.hidden, width), ("mlp", "embed"), name="proj")()
        return h @ kernel + bias


class Block(nn.Module):
    """Pre-norm ViT encoder block (see the module docstring)."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        width = x.shape[-1]
        drop = Dropout(self.dropout, deterministic=not train)

        def residual(h: jax.Array) -> jax.Array:
            h = drop(h)
            if train and self.drop_path > 0.0:
                h = drop_path(h, self.drop_path, self.make_rng("dropout"))
            return h

        attention = SelfAttention(self.num_heads, self.attention_dropout, name="attn")
        scale, shift = NormParams(name="ln_1")(width)
        x = x + residual(attention(normalize(x, self.norm_eps), scale, shift, train=train))
        scale, shift = NormParams(name="ln_2")(width)
        x = x + residual(Mlp(self.mlp_dim, name="mlp")(normalize(x, self.norm_eps), scale, shift))
        return nn.with_logical_constraint(x, TOKEN_AXES)


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    num_outputs=Int(low=1),
    patch_size=Int(low=1),
    num_layers=Int(low=1),
    embed_dim=Int(low=1),
    num_heads=Int(low=1),
    mlp_dim=Int(low=0),
    dropout=Float(0, 1, high_open=True),
    attention_dropout=Float(0, 1, high_open=True),
    drop_path=Float(0, 1, high_open=True),
    pool=OneOf(*POOLS),
    positions=OneOf(*POSITIONS),
    stem=OneOf(*STEMS),
    norm_eps=Float(low=0, low_open=True),
)


class Model(nn.Module):
    num_outputs: int = 10
    patch_size: int = 4
    num_layers: int = 6
    embed_dim: int = 128
    num_heads: int = 4
    mlp_dim: int = 0  # 0: 4 * embed_dim
    dropout: float = 0.0  # on the embeddings and both residual branches
    attention_dropout: float = 0.0  # on the attention probabilities
    drop_path: float = 0.0  # stochastic depth: the last block's rate
    pool: str = "cls"  # "cls" | "mean"
    positions: str = "learned"  # "learned" | "sinusoidal"
    stem: str = "patch"  # "patch" | "conv"
    norm_eps: float = 1e-6

    def __post_init__(self):
        schema.check_fields("vit", self, FIELD_RULES)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"vit: embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}"
            )
        if self.positions == "sinusoidal" and self.embed_dim % 2:
            raise ConfigError(
                f"vit: sinusoidal positions need an even embed_dim, got {self.embed_dim}"
            )
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ConfigError(
                f"vit: stem='conv' reaches the patch grid by stride-2 convolutions, so "
                f"model.patch_size must be a power of 2 (2, 4, 8, 16, ...), got {self.patch_size}"
            )
        super().__post_init__()

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.embed_dim

    def grid(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, columns) of patches of an [H, W, C] image."""
        height, width = image_shape[0], image_shape[1]
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"vit: model.patch_size={self.patch_size} does not divide the {height}x{width} "
                f"images; choose a divisor of both"
            )
        return height // self.patch_size, width // self.patch_size

    @property
    def stem_channels(self) -> tuple[int, ...]:
        """stem="conv": the widths of its log2(patch_size) stride-2 3x3 convolutions, doubling up
        to embed_dim (64, 128 for patch 4 and width 128)."""
        if self.stem != "conv":
            return ()
        count = self.patch_size.bit_length() - 1
        return tuple(max(1, self.embed_dim >> (count - 1 - i)) for i in range(count))

    def num_tokens(self, image_shape: tuple[int, ...]) -> int:
        rows, cols = self.grid(image_shape)
        return rows * cols + (self.pool == "cls")

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        rows, cols = self.grid(images.shape[1:])
        d = self.embed_dim
        if self.stem == "conv":
            x = images
            for i, features in enumerate(self.stem_channels):
                x = ConvBN(features, 3, 2, name=f"stem_{i}")(x, train=train)
            x = PatchEmbedding(d, 1, name="patch_embed")(x)  # the 1x1 convolution to embed_dim
        else:
            x = PatchEmbedding(d, self.patch_size, name="patch_embed")(images)
        x = nn.with_logical_constraint(x, TOKEN_AXES)
        cls = self.pool == "cls"
        if cls:
            token = self.param(
                "cls_token",
                nn.with_logical_partitioning(nn.initializers.normal(INIT_STDDEV), ("embed",)),
                (d,),
            )
            x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, d)).astype(x.dtype), x], 1)
        if self.positions == "learned":
            table = LearnedPositions2D(rows, cols, d, int(cls), name="pos_embedding")()
        else:
            table = sinusoidal_2d(rows, cols, d)
            if cls:
                table = jnp.concatenate([jnp.zeros((1, d), table.dtype), table])
        x = Dropout(self.dropout, deterministic=not train)(x + table.astype(x.dtype))
        x = nn.with_logical_constraint(x, TOKEN_AXES)
        for i in range(self.num_layers):
            x = Block(
                self.num_heads,
                self.hidden_dim,
                self.dropout,
                self.attention_dropout,
                self.drop_path * i / max(1, self.num_layers - 1),
                self.norm_eps,
                name=f"h_{i}",
            )(x, train=train)
        x = LayerNorm(self.norm_eps, name="ln_f")(x)
        pooled = x[:, 0] if cls else x.mean(axis=1)
        pooled = nn.with_logical_constraint(pooled, ("batch", "embed"))
        logits = Projection(self.num_outputs, ("embed",), ("classes",), name="head")(pooled)
        return logits.astype(jnp.float32)


def attention_maps(model: Model, variables: dict, images: jax.Array) -> jax.Array:
    """Every block's attention weights on `images` in eval mode: [layers, batch, heads, tokens,
    tokens], row q of a map the weights query token q gives the keys (each row sums to 1). Token 0
    is the class token with pool="cls"; the patches follow in row-major grid order. They are
    what each block's attention sows when asked (the "intermediates" collection)."""
    _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    blocks = state["intermediates"]
    return jnp.stack(
        [blocks[f"h_{i}"]["attn"]["attention_weights"][0] for i in range(model.num_layers)]
    )


def forward_flops_per_example(model: Model, image_shape: tuple[int, int, int]) -> float:
    """Matmul FLOPs (2 per multiply-add) of one image's forward pass: the patch projection, every
    block's qkv, output and MLP projections, the attention scores q k^T and the weighted sum p v
    over all tokens, and the head (norms, softmax, GELU left out, as for the Transformer)."""
    rows, cols = model.grid(image_shape)
    d, tokens = model.embed_dim, model.num_tokens(image_shape)
    if model.stem == "conv":
        patch, size, channels = 0, image_shape[0] * image_shape[1], image_shape[-1]
        for features in model.stem_channels:
            size //= 4
            patch += 2 * size * 9 * channels * features
            channels = features
        patch += 2 * rows * cols * channels * d
    else:
        patch = 2 * rows * cols * model.patch_size**2 * image_shape[-1] * d
    per_token = 2 * (4 * d * d + 2 * d * model.hidden_dim) + 4 * d * tokens
    return patch + model.num_layers * tokens * per_token + 2 * d * model.num_outputs


def layer_stack(model: Model) -> list[Layer]:
    """The layers that make a token, for the receptive-field table of model_summary.txt: the
    patch projection (a p x p, stride-p convolution) or the conv stem's stride-2 3x3 convolutions
    and its 1x1 projection. Attention then mixes every token with every other."""
    if model.stem == "conv":
        layers = [Layer(f"stem_{i}", 3, 2, 1) for i in range(len(model.stem_channels))]
        return [*layers, Layer("patch_embed", 1)]
    return [Layer("patch_embed", model.patch_size, model.patch_size, 0)]


def train_flops_per_example(model: Model, image_shape: tuple[int, int, int]) -> float:
    """Forward + backward: 3 x the forward (see transformer.train_flops_per_token)."""
    return 3.0 * forward_flops_per_example(model, image_shape)
