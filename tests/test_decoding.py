"""Decoding with the KV cache: generation, sampling filters, greedy decoding and beam search,
checked against full forward passes without a cache."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.models.transformer import Model
from dlx.tasks import decoding

BOS, EOS = 1, 11


def _variables(model, *args, seed=0, std=0.5):
    """Random parameters without compiling the initializer; std 0.5 gives peaked, varied
    next-token distributions (the 0.02 of a fresh model gives near-uniform ones)."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, std, s.shape).astype(np.float32), abstract)


# name: (fields, seed and std of the random parameters: ones whose greedy continuations vary;
# random tied-embedding models tend to repeat one token)
DECODERS = {
    "gpt2": (dict(), 1, 1.0),
    "llama": (
        dict(
            norm="rms",
            mlp="swiglu",
            position="rope",
            num_kv_heads=2,
            bias=False,
            tie_embeddings=False,
        ),
        2,
        0.5,
    ),
}


@functools.cache
def _decoder(name):
    fields, seed, std = DECODERS[name]
    model = Model(vocab_size=16, num_layers=2, embed_dim=32, num_heads=4, max_len=16, **fields)
    return model, _variables(model, jnp.ones((1, 4), jnp.int32), seed=seed, std=std)


@functools.cache
def _seq2seq():
    model = Model(
        kind="encoder_decoder",
        vocab_size=12,
        num_layers=1,
        embed_dim=32,
        num_heads=4,
        max_len=16,
        tie_embeddings=False,
    )
    inputs = jnp.array(np.random.default_rng(1).integers(3, 12, (6, 6)), jnp.int32)
    inputs = inputs.at[0, 4:].set(0)  # one padded input
    return model, _variables(model, inputs, inputs, seed=1), inputs


PROMPT = jnp.array([[3, 7, 5], [9, 2, 2]], jnp.int32)
NEW = 9  # one length everywhere: one compiled generate per (model, top_k)


@pytest.mark.parametrize("name", DECODERS)
def test_generate_at_temperature_zero_equals_greedy_full_forward_passes(name):
    model, variables = _decoder(name)
    new = NEW
    generated = decoding.generate(model, variables, PROMPT, jax.random.key(0), new, temperature=0.0)
    assert generated.shape == (2, 3 + new) and generated.dtype == jnp.int32
    # Reference: no cache, the whole sequence so far each step (right-padded to one shape so
    # it compiles once; causal attention makes the padding invisible to earlier positions).
    forward = jax.jit(model.apply)
    tokens = jnp.zeros((2, 3 + new), jnp.int32).at[:, :3].set(PROMPT)
    for i in range(3, 3 + new):
        tokens = tokens.at[:, i].set(jnp.argmax(forward(variables, tokens)[:, i - 1], axis=-1))
    np.testing.assert_array_equal(generated, tokens)
    assert len(np.unique(np.asarray(generated[:, 3:]))) > 2  # a varied continuation


def test_sampling_with_top_k_1_is_greedy_and_sampling_varies():
    model, variables = _decoder("llama")
    greedy = decoding.generate(model, variables, PROMPT, jax.random.key(0), NEW, temperature=0.0)
    for seed in range(2):
        top1 = decoding.generate(
            model, variables, PROMPT, jax.random.key(seed), NEW, temperature=1.0, top_k=1
        )
        np.testing.assert_array_equal(top1, greedy)
    hot = [
        decoding.generate(model, variables, PROMPT, jax.random.key(s), NEW, temperature=2.0)
        for s in range(3)
    ]
    assert any(not np.array_equal(h, greedy) for h in hot)
    np.testing.assert_array_equal(hot[0][:, :3], PROMPT)


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = np.array([0.5, 0.05, 0.3, 0.15], np.float32)
    logits = jnp.log(jnp.asarray(probs))[None]
    assert decoding.nucleus_mask(logits, 0.4).tolist() == [[True, False, False, False]]
    assert decoding.nucleus_mask(logits, 0.75).tolist() == [[True, False, True, False]]
    assert decoding.nucleus_mask(logits, 0.85).tolist() == [[True, False, True, True]]
    assert decoding.nucleus_mask(logits, 0.99).tolist() == [[True, True, True, True]]
    draws = jax.vmap(lambda k: decoding.sample_logits(logits, k, top_p=0.75))(
        jax.random.split(jax.random.key(0), 4000)
    )
    counts = np.bincount(np.asarray(draws).ravel(), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5 / 0.8, 0, 0.3 / 0.8, 0], atol=0.03)


def test_top_k_and_temperature_reshape_the_distribution():
    logits = jnp.log(jnp.array([[0.1, 0.6, 0.25, 0.05]]))
    keys = jax.random.split(jax.random.key(1), 4000)
    draw = lambda **kw: (
        np.bincount(
            np.asarray(
                jax.vmap(  # noqa: E731
                    lambda k: decoding.sample_logits(logits, k, **kw)
                )(keys)
            ).ravel(),
            minlength=4,
        )
        / 4000
    )
    np.testing.assert_allclose(draw(top_k=2), [0, 0.6 / 0.85, 0.25 / 0.85, 0], atol=0.03)
    cooled = np.array([0.1, 0.6, 0.25, 0.05]) ** 2
    np.testing.assert_allclose(draw(temperature=0.5), cooled / cooled.sum(), atol=0.03)
    assert decoding.sample_logits(logits, keys[0], temperature=0.0).tolist() == [1]


def test_every_cache_leaf_has_the_batch_first_or_is_a_scalar():
    for model, args in [
        (_decoder("llama")[0], (jnp.zeros((3, 10), jnp.int32),)),
        (_seq2seq()[0], (jnp.ones((3, 6), jnp.int32), jnp.zeros((3, 10), jnp.int32))),
    ]:
        variables = _variables(model, *args)
        _, state = jax.eval_shape(
            functools.partial(model.apply, decode=True, mutable=["cache"]), variables, *args
        )
        leaves = jax.tree.leaves(state["cache"])
        assert leaves and all(x.ndim == 0 or x.shape[0] == 3 for x in leaves)
        assert any(x.ndim == 4 and x.shape[1] == 10 for x in leaves)  # [B, max_len, kv, hd]


def test_greedy_decode_equals_greedy_full_forward_passes():
    model, variables, inputs = _seq2seq()
    max_len = 10
    decoded = decoding.greedy_decode(
        model, variables, inputs, bos_id=BOS, eos_id=EOS, max_len=max_len
    )
    forward = jax.jit(model.apply)
    targets_in = jnp.zeros((6, max_len), jnp.int32).at[:, 0].set(BOS)
    expected = np.zeros((6, max_len), np.int32)
    done = np.zeros(6, bool)
    for i in range(max_len):
        token = np.asarray(jnp.argmax(forward(variables, inputs, targets_in)[:, i], axis=-1))
        expected[:, i] = np.where(done, 0, token)
        done |= token == EOS
        if i + 1 < max_len:
            targets_in = targets_in.at[:, i + 1].set(token)
    np.testing.assert_array_equal(decoded, expected)
    ended = (expected == EOS).any(1)
    assert ended.any() and not ended.all()  # some rows stop early, with zeros after the eos


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_with_one_beam_is_greedy(alpha):
    model, variables, inputs = _seq2seq()
    greedy = decoding.greedy_decode(model, variables, inputs, bos_id=BOS, eos_id=EOS, max_len=10)
    seqs, scores = decoding.beam_search(
        model,
        variables,
        inputs,
        beam_size=1,
        bos_id=BOS,
        eos_id=EOS,
        max_len=10,
        length_penalty=alpha,
    )
    np.testing.assert_array_equal(seqs, greedy)
    expected = decoding.score_sequences(
        model, variables, inputs, greedy, bos_id=BOS, eos_id=EOS, length_penalty=alpha
    )
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wider_beams_score_at_least_the_greedy_sequence(alpha):
    model, variables, inputs = _seq2seq()
    kwargs = dict(bos_id=BOS, eos_id=EOS, length_penalty=alpha)
    greedy = decoding.greedy_decode(model, variables, inputs, bos_id=BOS, eos_id=EOS, max_len=10)
    greedy_scores = decoding.score_sequences(model, variables, inputs, greedy, **kwargs)
    seqs, scores = decoding.beam_search(model, variables, inputs, beam_size=4, max_len=10, **kwargs)
    assert np.all(scores >= greedy_scores - 1e-5)
    assert np.any(scores > greedy_scores + 0.1)  # the search finds better sequences somewhere
    # The returned score is the model's score of the returned sequence: finished beams stopped
    # growing (nothing added after their eos, which is followed by padding only).
    np.testing.assert_allclose(
        scores, decoding.score_sequences(model, variables, inputs, seqs, **kwargs), atol=1e-5
    )
    seqs = np.asarray(seqs)
    for row in seqs:
        ends = np.flatnonzero(row == EOS)
        if ends.size:
            assert (row[ends[0] + 1 :] == 0).all()
        else:
            assert (row != 0).all()
