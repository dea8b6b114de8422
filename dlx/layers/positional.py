"""Positional encodings: sinusoidal (Vaswani et al.), learned (GPT-2's wpe), rotary (RoPE).

All take integer `positions` ([B, T] or [1, T]), so a decoder with a KV cache passes
`cache_index + arange(T)` and gets the encodings of the absolute positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers.linear import INIT_STDDEV, accumulation_dtype


def sinusoidal(positions: jax.Array, features: int, base: float = 10000.0) -> jax.Array:
    """[..., T] -> [..., T, features]: PE[p, 2i] = sin(p / base^(2i/d)), PE[p, 2i+1] = cos(same).

    Computed on the fly, so any position works (no table of max_len rows).
    """
    pairs = (features + 1) // 2
    inv_freq = base ** (-2.0 * jnp.arange(pairs, dtype=jnp.float32) / features)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    interleaved = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return interleaved.reshape(*angles.shape[:-1], 2 * pairs)[..., :features]


class LearnedPositions(nn.Module):
    """A table of `max_len` learned vectors (param "embedding" [max_len, features], logical
    names ("position", "embed")); positions index its rows."""

    max_len: int
    features: int

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(INIT_STDDEV), ("position", "embed")
            ),
            (self.max_len, self.features),
        )
        return jnp.take(table, positions, axis=0)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """RoPE on x [B, T, heads, head_dim] at `positions` [B or 1, T].

    Rotates the pairs (x[i], x[i + head_dim/2]) by angle p / base^(2i/head_dim): the
    "rotate_half" layout of GPT-NeoX and Hugging Face's Llama (not the interleaved pairs
    (x[2i], x[2i+1]) of the original paper and of GGUF files, which permute q/k weights).
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    half = head_dim // 2
    dtype = accumulation_dtype(x.dtype)
    inv_freq = base ** (-jnp.arange(half, dtype=dtype) / half)
    angles = positions.astype(dtype)[..., None] * inv_freq  # [B, T, half]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
