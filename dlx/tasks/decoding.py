"""Sampling, generation, greedy decoding and beam search for any model keeping the decoding
contract (dlx/models/transformer.py, dlx/models/recurrent.py, dlx/models/seq2seq.py):

- decoder-only: `model.apply(v, tokens[B,T], decode=True, mutable=["cache"])` consumes tokens
  after what the cache holds and returns logits for them; applied to variables without a cache
  and tokens [B, max_len] it only creates the zero cache.
- encoder-decoder: `encode(inputs) -> memory` (batch on axis 0 of every leaf) and
  `decode(memory, targets_in, decode=True)`, the same cache rule.
Every cache leaf has the batch on axis 0, except scalar leaves, so caches and memories tile over
beams with `jnp.repeat(x, beam, axis=0)` and reorder by gathering rows.

Token id 0 is padding: decoded sequences hold 0 after their end-of-sequence token.
`generate`, `greedy_decode` and `beam_search` each run as one jitted program per (model, shapes,
settings); `stream` runs generate's jitted prefill and step a token at a time (the language
model's text samples and `launch.py sample` stand on it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlx.layers.attention import PAD_ID

# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_logits(
    logits: jax.Array,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
) -> jax.Array:
    """Token ids [B] (int32) drawn from logits [B, V].

    temperature 0 is greedy (argmax). top_k > 0 keeps the k most likely tokens; top_p < 1 keeps
    the smallest set of most likely tokens whose probability (after temperature and top-k)
    reaches top_p. `top_k` must be a Python int; temperature and top_p may be traced, so one
    compiled program serves every temperature and nucleus size.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if isinstance(temperature, (int, float)) and temperature == 0:
        return greedy
    temperature = jnp.asarray(temperature, jnp.float32)
    logits = logits.astype(jnp.float32) / jnp.where(temperature > 0, temperature, 1.0)
    if top_k and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        keep = nucleus_mask(logits, top_p) | (jnp.asarray(top_p) >= 1.0)
        logits = jnp.where(keep, logits, -jnp.inf)
    sampled = jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


def nucleus_mask(logits: jax.Array, top_p: float) -> jax.Array:
    """True at the smallest set of most likely tokens whose softmax mass reaches top_p (a token
    is kept if the tokens more likely than it hold less than top_p); the top token always."""
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    return jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)


def _without_cache(variables: Any) -> dict:
    variables = nn.meta.unbox(variables)
    return {name: tree for name, tree in variables.items() if name != "cache"}


# ---------------------------------------------------------------------------------------------
# The cached forward pass, shared by every decoder below
# ---------------------------------------------------------------------------------------------


def _empty_cache(model, variables, rows: int, length: int, memory=None):
    """A zero cache for `rows` sequences of up to `length` tokens (after `memory` for an
    encoder-decoder model)."""
    zeros = jnp.zeros((rows, length), jnp.int32)
    if memory is None:
        _, state = model.apply(variables, zeros, decode=True, mutable=["cache"])
    else:
        _, state = model.apply(
            variables, memory, zeros, decode=True, method="decode", mutable=["cache"]
        )
    return state["cache"]


def _advance(model, variables, cache, tokens: jax.Array, memory=None):
    """Logits [rows, V] after consuming `tokens` [rows, T] past what `cache` holds, and the
    updated cache."""
    variables = {**variables, "cache": cache}
    if memory is None:
        logits, state = model.apply(variables, tokens, decode=True, mutable=["cache"])
    else:
        logits, state = model.apply(
            variables, memory, tokens, decode=True, method="decode", mutable=["cache"]
        )
    return logits[:, -1], state["cache"]


# ---------------------------------------------------------------------------------------------
# Decoder-only generation: one prefill and one step, run either as one program (`generate`) or
# a token at a time (`stream`, for text printed as it comes). Token i of a continuation is drawn
# with `fold_in(rng, i)` in both, so they give the same tokens for the same key.
# ---------------------------------------------------------------------------------------------


def _draw(logits, rng, temperature, top_p, top_k: int, greedy: bool, use_top_p: bool):
    # Greedy and "no nucleus" are compiled in (static), so they skip the sampling work (two
    # vocabulary-wide argsorts a token for top_p); the values themselves stay traced, so one
    # compiled program serves every temperature and nucleus size.
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_logits(logits, rng, temperature, top_k, top_p if use_top_p else 1.0)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _prefill(model, variables, prompt, key, settings, cache_len, top_k, greedy, use_top_p):
    """(the token after `prompt` [B, P], drawn with `key`; a cache of `cache_len` positions
    holding the prompt)."""
    cache = _empty_cache(model, variables, prompt.shape[0], cache_len)
    logits, cache = _advance(model, variables, cache, prompt)
    return _draw(logits, key, *settings, top_k, greedy, use_top_p), cache


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8))
def _step(model, variables, cache, token, key, settings, top_k, greedy, use_top_p):
    """(the token after `token` [B], drawn with `key`; the updated cache)."""
    logits, cache = _advance(model, variables, cache, token[:, None])
    return _draw(logits, key, *settings, top_k, greedy, use_top_p), cache


def _decoding_settings(temperature: float, top_k: int, top_p: float):
    """(traced settings, static top_k / greedy / use_top_p) for `_prefill` and `_step`."""
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"need temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got "
            f"{temperature}, {top_k}, {top_p}"
        )
    return (
        (jnp.float32(temperature), jnp.float32(top_p)),
        (int(top_k), temperature == 0, top_p < 1),
    )


def generate(
    model: nn.Module,
    variables: Any,
    prompt: jax.Array,
    rng: jax.Array,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """prompt [B, P] (int32, no padding) -> [B, P + max_new_tokens]: the prompt and its
    continuation. The prompt is consumed in one call (prefill), then one token a step inside a
    `lax.scan`, all in one jitted program. temperature 0 is greedy."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    settings, static = _decoding_settings(temperature, top_k, top_p)
    return _generate(
        model,
        _without_cache(variables),
        jnp.asarray(prompt, jnp.int32),
        rng,
        settings,
        max_new_tokens,
        *static,
    )


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _generate(model, variables, prompt, rng, settings, max_new_tokens, top_k, greedy, use_top_p):
    static = (top_k, greedy, use_top_p)
    first, cache = _prefill(
        model,
        variables,
        prompt,
        jax.random.fold_in(rng, 0),
        settings,
        prompt.shape[1] + max_new_tokens,
        *static,
    )

    def body(carry, index):
        token, cache = carry
        following, cache = _step(
            model, variables, cache, token, jax.random.fold_in(rng, index), settings, *static
        )
        return (following, cache), following

    _, rest = jax.lax.scan(body, (first, cache), jnp.arange(1, max_new_tokens))
    return jnp.concatenate([prompt, first[:, None], rest.T.astype(jnp.int32)], axis=1)


def stream(
    model: nn.Module,
    variables: Any,
    prompt: np.ndarray,
    rng: jax.Array,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Iterator[np.ndarray]:
    """Yields the continuation of prompt [B, P] a token at a time (numpy [B]): the tokens
    `generate` draws with the same key, while the model has room. A model with a position limit
    (`max_len`) that runs out of room is restarted on the last max_len / 2 tokens (the context a
    full-window model would keep, halved so the restart is rare)."""
    if max_new_tokens < 1:
        return
    settings, static = _decoding_settings(temperature, top_k, top_p)
    variables = _without_cache(variables)
    max_len = getattr(model, "max_len", None)
    history = np.asarray(prompt, np.int32)
    if max_len:
        history = history[:, -max_len:]
    cache_len = history.shape[1] + max_new_tokens
    if max_len:
        cache_len = min(max_len, cache_len)
    token, cache = _prefill(
        model,
        variables,
        jnp.asarray(history),
        jax.random.fold_in(rng, 0),
        settings,
        cache_len,
        *static,
    )
    position = history.shape[1]
    for index in range(1, max_new_tokens + 1):
        token_host = np.asarray(token)
        yield token_host
        if index == max_new_tokens:
            return
        history = np.concatenate([history, token_host[:, None]], axis=1)
        position += 1
        key = jax.random.fold_in(rng, index)
        if max_len and position >= cache_len:
            history = history[:, -(max_len // 2) :]
            position = history.shape[1]
            token, cache = _prefill(
                model, variables, jnp.asarray(history), key, settings, cache_len, *static
            )
        else:
            token, cache = _step(model, variables, cache, token, key, settings, *static)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder decoding
# ---------------------------------------------------------------------------------------------


def length_penalty_factor(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT's ((5 + length) / 6) ** alpha; a sequence's score is log p / this (alpha 0: log p)."""
    return ((5.0 + length) / 6.0) ** alpha


def _start(model, variables, inputs, copies: int, max_len: int):
    """Memory (tiled `copies` times per example) and a fresh cache for batch * copies rows."""
    memory = model.apply(variables, inputs, method="encode")
    if copies > 1:
        memory = jax.tree.map(lambda x: jnp.repeat(x, copies, axis=0) if x.ndim else x, memory)
    return memory, _empty_cache(model, variables, inputs.shape[0] * copies, max_len, memory)


def _decode_step(model, variables, memory, cache, tokens):
    """Log-probabilities [rows, V] of the token after `tokens` [rows], and the updated cache."""
    logits, cache = _advance(model, variables, cache, tokens[:, None], memory)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), cache


def greedy_decode(
    model: nn.Module, variables: Any, inputs: jax.Array, *, bos_id: int, eos_id: int, max_len: int
) -> jax.Array:
    """[B, max_len] int32: the most likely token at each step after bos_id, until eos_id
    (included) or max_len tokens; 0 after the eos. Stops early once every row has ended."""
    return _greedy(
        model,
        _without_cache(variables),
        jnp.asarray(inputs, jnp.int32),
        int(bos_id),
        int(eos_id),
        int(max_len),
    )


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _greedy(model, variables, inputs, bos_id, eos_id, max_len):
    batch = inputs.shape[0]
    memory, cache = _start(model, variables, inputs, 1, max_len)

    def keep_going(state):
        i, _, _, done, _ = state
        return (i < max_len) & ~done.all()

    def body(state):
        i, token, out, done, cache = state
        log_probs, cache = _decode_step(model, variables, memory, cache, token)
        token = jnp.where(done, PAD_ID, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))
        out = out.at[:, i].set(token)
        return i + 1, token, out, done | (token == eos_id), cache

    state = (
        jnp.int32(0),
        jnp.full((batch,), bos_id, jnp.int32),
        jnp.zeros((batch, max_len), jnp.int32),
        jnp.zeros((batch,), bool),
        cache,
    )
    return jax.lax.while_loop(keep_going, body, state)[2]


def beam_search(
    model: nn.Module,
    variables: Any,
    inputs: jax.Array,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_len: int,
    length_penalty: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
    """Best sequences [B, max_len] (int32, 0 after the eos) and their scores [B].

    Each step extends every live beam by every token and keeps the `beam_size` best by
    log-probability. A kept candidate ending in eos_id (or reaching max_len) is finished: it
    stops growing and is scored log p / length_penalty_factor(its length incl. eos); the
    `beam_size` best finished ones are kept. The search stops when no live beam could still
    beat the best finished one (scores only fall as beams grow, and the penalty factor is at
    most that of max_len), or at max_len. With beam_size 1 this is greedy decoding.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    return _beam(
        model,
        _without_cache(variables),
        jnp.asarray(inputs, jnp.int32),
        jnp.float32(length_penalty),
        int(beam_size),
        int(bos_id),
        int(eos_id),
        int(max_len),
    )


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _beam(model, variables, inputs, alpha, beam_size, bos_id, eos_id, max_len):
    batch, k = inputs.shape[0], beam_size
    memory, cache = _start(model, variables, inputs, k, max_len)
    neg_inf = jnp.float32(-jnp.inf)
    best_possible_factor = length_penalty_factor(jnp.float32(max_len), alpha)

    def reorder(tree, beam):  # rows b*k + j -> rows b*k + beam[b, j]
        def gather(x):
            if not x.ndim:
                return x
            per_example = x.reshape(batch, k, *x.shape[1:])
            return per_example[jnp.arange(batch)[:, None], beam].reshape(x.shape)

        return jax.tree.map(gather, tree)

    def keep_going(state):
        i, alive_lp, _, _, finished_scores, _, _ = state
        could_reach = alive_lp.max(axis=1) / best_possible_factor
        open_rows = could_reach > finished_scores.max(axis=1)
        return (i < max_len) & open_rows.any()

    def body(state):
        i, alive_lp, alive_seqs, last, finished_scores, finished_seqs, cache = state
        log_probs, cache = _decode_step(model, variables, memory, cache, last.reshape(-1))
        vocab = log_probs.shape[-1]
        candidates = (alive_lp[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, -1)
        top_lp, top_index = jax.lax.top_k(candidates, k)
        beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seqs, beam[:, :, None], axis=1).at[:, :, i].set(token)
        live = top_lp > neg_inf
        ends = live & ((token == eos_id) | (i + 1 == max_len))
        new_scores = jnp.where(ends, top_lp / length_penalty_factor(i + 1.0, alpha), neg_inf)
        pooled_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        pooled_seqs = jnp.concatenate([finished_seqs, seqs], axis=1)
        finished_scores, keep = jax.lax.top_k(pooled_scores, k)
        finished_seqs = jnp.take_along_axis(pooled_seqs, keep[:, :, None], axis=1)
        alive_lp = jnp.where(ends, neg_inf, top_lp)
        return (i + 1, alive_lp, seqs, token, finished_scores, finished_seqs, reorder(cache, beam))

    first_beam_only = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf)
    state = (
        jnp.int32(0),
        jnp.broadcast_to(first_beam_only, (batch, k)),
        jnp.zeros((batch, k, max_len), jnp.int32),
        jnp.full((batch, k), bos_id, jnp.int32),
        jnp.full((batch, k), neg_inf),
        jnp.zeros((batch, k, max_len), jnp.int32),
        cache,
    )
    _, _, _, _, finished_scores, finished_seqs, _ = jax.lax.while_loop(keep_going, body, state)
    return finished_seqs[:, 0], finished_scores[:, 0]


def score_sequences(
    model: nn.Module,
    variables: Any,
    inputs: jax.Array,
    sequences: jax.Array,
    *,
    bos_id: int,
    eos_id: int,
    length_penalty: float = 0.0,
) -> jax.Array:
    """[B]: the model's log p(sequence | inputs) / length_penalty_factor(length), by one
    teacher-forced pass. A sequence ends at its first eos_id (counted) or else at its last
    position, in the format greedy_decode and beam_search return."""
    return _score(
        model,
        _without_cache(variables),
        jnp.asarray(inputs, jnp.int32),
        jnp.asarray(sequences, jnp.int32),
        jnp.float32(length_penalty),
        int(bos_id),
        int(eos_id),
    )


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _score(model, variables, inputs, sequences, length_penalty, bos_id, eos_id):
    targets_in = jnp.concatenate(
        [jnp.full((sequences.shape[0], 1), bos_id, jnp.int32), sequences[:, :-1]], axis=1
    )
    logits = model.apply(variables, inputs, targets_in)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_lp = jnp.take_along_axis(log_probs, sequences[:, :, None], axis=-1)[..., 0]
    is_eos = sequences == eos_id
    positions = jnp.arange(sequences.shape[1])
    length = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, sequences.shape[1])
    total = jnp.where(positions[None] < length[:, None], token_lp, 0.0).sum(1)
    return total / length_penalty_factor(length.astype(jnp.float32), length_penalty)
