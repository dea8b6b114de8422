"""Scaled dot-product attention and the multi-head attention layer (self / cross, causal /
padding masks, grouped-query heads, rotary positions, KV cache).

Shapes: query [B, T, heads, head_dim], key/value [B, S, kv_heads, head_dim]; heads is a multiple
of kv_heads and query head n reads key/value head n // (heads // kv_heads) (the layout of
`jax.nn.dot_product_attention` and of Hugging Face's `repeat_kv`). Masks are boolean, True where
a query may attend, broadcastable to [B, heads, T, S].

Implementations (`implementation=`):
- "einsum": head-major batched matmuls around a float32 softmax; the only one with dropout on
  the attention probabilities (mask from `activations.random_bits`, a fused Threefry: 46 ms for
  a [64, 6, 256, 256] mask vs 320 ms for `jax.random.bernoulli` on 2 CPU cores).
- "jax": `jax.nn.dot_product_attention` (XLA's einsums over [B, T, heads, head_dim] today; it is
  the door to cuDNN flash attention, which jax picks only when asked and for bf16/fp16).
- "auto" (default): "einsum" on CPU or whenever probability dropout is active, else "jax".
"einsum" runs causal self-attention of length >= 64 (without other masks) in 4 blocks of
queries, each over the keys up to its end: 10/16 of the score matrix (measurements in
BENCHMARKS.md, "Tuning notes").

Attention maps: with the "intermediates" collection mutable (`apply(..., mutable=
["intermediates"])`), `MultiHeadAttention` sows its probabilities as "attention_weights"
([B, heads, T, S], `attention_weights`). They are computed apart from the layer's output, only
then, so the layer's numbers and parameters are the same with or without them.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers.activations import random_bits
from dlx.layers.linear import INIT_STDDEV, Projection, accumulation_dtype
from dlx.layers.positional import rotary

IMPLEMENTATIONS = ("auto", "einsum", "jax")
# "einsum" splits long causal self-attention into this many query blocks (see the docstring).
CAUSAL_QUERY_BLOCKS = 4
CAUSAL_BLOCKS_MIN_LENGTH = 64


def causal_mask(q_len: int, kv_len: int | None = None, offset: jax.Array | int = 0) -> jax.Array:
    """[1, 1, T, S]: query i (at absolute position offset + i) sees keys 0 .. offset + i."""
    kv_len = q_len if kv_len is None else kv_len
    query_pos = offset + jnp.arange(q_len)[:, None]
    return (jnp.arange(kv_len)[None, :] <= query_pos)[None, None]


# The id of padding in every token sequence dlx builds (tokenizers, G2P vocabularies, decoders).
PAD_ID = 0


def padding_mask(kv_tokens: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
    """[B, 1, 1, S]: keys that are real tokens (not `pad_id`)."""
    return (kv_tokens != pad_id)[:, None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out


def _einsum_attention(query, key, value, mask, dropout_rate, dropout_rng):
    batch, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    # Head-major 4-D operands (faster on XLA:CPU, see the module docstring); the query heads
    # sharing a key/value head become extra query rows [B, kv_heads, groups * T, head_dim], so
    # grouped heads copy no keys.
    q = query.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, kv_heads, groups * q_len, head_dim) / math.sqrt(head_dim)
    k = key.transpose(0, 2, 1, 3)
    v = value.transpose(0, 2, 1, 3)
    logits = jnp.einsum("bkqh,bksh->bkqs", q, k, preferred_element_type=accumulation_dtype(q.dtype))
    if mask is not None:
        mask = jnp.asarray(mask)
        mask_batch, mask_heads = mask.shape[:2]
        mask = jnp.broadcast_to(mask, (mask_batch, mask_heads, q_len, logits.shape[-1]))
        if mask_heads == 1:
            mask = mask if groups == 1 else jnp.tile(mask, (1, 1, groups, 1))
        else:
            mask = mask.reshape(mask_batch, kv_heads, groups * q_len, -1)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0:  # the fused Threefry mask: ~7x faster than jax.random.bernoulli here
        keep = 1.0 - dropout_rate
        threshold = jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
        probs = jnp.where(random_bits(dropout_rng, probs.shape) < threshold, probs / keep, 0.0)
    out = jnp.einsum(
        "bkqs,bksh->bkqh", probs.astype(v.dtype), v, preferred_element_type=logits.dtype
    ).astype(v.dtype)
    out = out.reshape(batch, kv_heads, groups, q_len, head_dim).transpose(0, 3, 1, 2, 4)
    return out.reshape(batch, q_len, heads, head_dim)


def _causal_block_attention(query, key, value, dropout_rate, dropout_rng):
    """Causal self-attention in CAUSAL_QUERY_BLOCKS blocks of queries, block i attending to
    the keys up to its own end only: the score matrix blocks above the diagonal, all masked, are
    never computed. Dropout bits are drawn per block (`fold_in(rng, i)`)."""
    size = query.shape[1] // CAUSAL_QUERY_BLOCKS
    blocks = []
    for i in range(CAUSAL_QUERY_BLOCKS):
        end = (i + 1) * size
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        blocks.append(
            _einsum_attention(
                query[:, end - size : end],
                key[:, :end],
                value[:, :end],
                causal_mask(size, end, offset=end - size),
                dropout_rate,
                rng,
            )
        )
    return jnp.concatenate(blocks, axis=1)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str = "auto",
) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) + masked) v per head -> [B, T, heads, head_dim].

    `causal`: query i also sees only keys 0..i (queries and keys at the same positions).
    A query whose keys are all masked gets the mean of the values (finite, never NaN).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation '{implementation}'; choose from {IMPLEMENTATIONS}"
        )
    if query.shape[2] % key.shape[2]:
        raise ValueError(
            f"{query.shape[2]} query heads do not divide into {key.shape[2]} key/value heads"
        )
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError("attention dropout needs a dropout_rng")
    if implementation == "auto":
        on_cpu = jax.default_backend() == "cpu"
        implementation = "einsum" if on_cpu or dropout_rate > 0.0 else "jax"
    if implementation == "jax":
        if dropout_rate > 0.0:
            raise ValueError("implementation='jax' has no attention dropout; use 'einsum'")
        return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=causal)
    length = query.shape[1]
    if (
        causal
        and mask is None
        and key.shape[1] == length
        and length >= CAUSAL_BLOCKS_MIN_LENGTH
        and length % CAUSAL_QUERY_BLOCKS == 0
    ):
        return _causal_block_attention(query, key, value, dropout_rate, dropout_rng)
    if causal:
        mask = combine_masks(mask, causal_mask(length, key.shape[1]))
    return _einsum_attention(query, key, value, mask, dropout_rate, dropout_rng)


def attention_weights(
    query: jax.Array, key: jax.Array, mask: jax.Array | None = None, *, causal: bool = False
) -> jax.Array:
    """[B, heads, T, S] float32: the probabilities `dot_product_attention` gives each key (same
    masks and grouped heads; before dropout). Every row sums to 1; a query whose keys are all
    masked spreads evenly over them."""
    groups = query.shape[2] // key.shape[2]
    key = jnp.repeat(key, groups, axis=2) if groups > 1 else key
    logits = jnp.einsum(
        "bthd,bshd->bhts", query, key, preferred_element_type=accumulation_dtype(query.dtype)
    )
    logits = logits / math.sqrt(query.shape[-1])
    if causal:
        mask = combine_masks(mask, causal_mask(query.shape[1], key.shape[1]))
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with output projection.

    Self-attention (`memory=None`) with num_kv_heads == num_heads keeps one fused projection
    "qkv" (kernel [embed, 3, heads, head_dim], as GPT-2's c_attn reshaped); grouped-query
    self-attention and cross-attention use "query" ([embed, heads, head_dim]) and "kv"
    ([embed, 2, kv_heads, head_dim]). "proj" maps [heads, head_dim] back to embed.

    decode=True (self-attention only) keeps a KV cache in the "cache" collection:
    cached_key / cached_value [B, max_len, kv_heads, head_dim] and cache_index (scalar). The
    first decode call, on variables without a cache, only creates it, sized by its input
    [B, max_len, embed]; later calls write their chunk at cache_index and attend causally over
    everything cached so far. Cross-attention keeps no cache: it projects the memory's keys
    and values on every call (cheap next to the decoder for short inputs).

    With the "intermediates" collection mutable it sows its probabilities as
    "attention_weights" [B, heads, T, S] (`attention_weights`); otherwise nothing is computed.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int = 0  # 0: num_heads
    use_bias: bool = True
    dropout: float = 0.0
    rope_base: float | None = None  # None: no rotary embedding
    out_stddev: float = INIT_STDDEV
    implementation: str = "auto"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        memory: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        causal: bool = False,
        positions: jax.Array | None = None,
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        heads, kv_heads = self.num_heads, self.num_kv_heads or self.num_heads
        q_names = ("batch", "length", "heads", "head_dim")
        kv_names = ("batch", "length", "kv_heads", "head_dim")
        if memory is None and kv_heads == heads:
            qkv = Projection(
                (3, heads, self.head_dim),
                ("embed",),
                ("qkv", "heads", "head_dim"),
                self.use_bias,
                name="qkv",
            )(x)
            query, key, value = (qkv[:, :, i] for i in range(3))
        else:
            query = Projection(
                (heads, self.head_dim),
                ("embed",),
                ("heads", "head_dim"),
                self.use_bias,
                name="query",
            )(x)
            source = x if memory is None else memory
            kv = Projection(
                (2, kv_heads, self.head_dim),
                ("embed",),
                ("qkv", "kv_heads", "head_dim"),
                self.use_bias,
                name="kv",
            )(source)
            key, value = kv[:, :, 0], kv[:, :, 1]
        if self.rope_base is not None and memory is None:
            if positions is None:
                positions = jnp.arange(x.shape[1])[None]
            query = rotary(query, positions, self.rope_base)
            key = rotary(key, positions, self.rope_base)
        query = nn.with_logical_constraint(query, q_names)
        key = nn.with_logical_constraint(key, kv_names)
        value = nn.with_logical_constraint(value, kv_names)

        if decode and memory is None:  # the cache's mask holds the causal one
            key, value, mask = self._update_cache(key, value, mask, causal)
            causal = False

        if self.is_mutable_collection("intermediates"):
            self.sow(
                "intermediates",
                "attention_weights",
                attention_weights(query, key, mask, causal=causal),
            )
        rate = self.dropout if train else 0.0
        out = dot_product_attention(
            query,
            key,
            value,
            mask,
            causal=causal,
            dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate else None,
            implementation=self.implementation,
        )
        out = nn.with_logical_constraint(out, q_names)
        out = Projection(
            x.shape[-1],
            ("heads", "head_dim"),
            ("embed",),
            self.use_bias,
            self.out_stddev,
            name="proj",
        )(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))

    def _update_cache(self, key, value, mask, causal):
        created = not self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        chunk = key.shape[1]
        if created:  # the creating call's output is ignored; attend within the chunk
            return key, value, combine_masks(mask, causal_mask(chunk) if causal else None)
        start = index.value
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, start, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value, (0, start, 0, 0)
        )
        index.value = start + chunk
        max_len = cached_key.value.shape[1]
        if causal:
            visible = causal_mask(chunk, max_len, offset=start)
        else:  # slots past start + chunk hold zeros, not keys
            visible = (jnp.arange(max_len) < start + chunk)[None, None, None, :]
        return cached_key.value, cached_value.value, combine_masks(mask, visible)
