"""Seq2seq grapheme-to-phoneme end to end on CMUdict: decoded words scored by phoneme and word
error rates (also against any of a word's pronunciations), beam-search eval of a finished run,
the edit distance behind the rates, and length buckets whose sharded step equals the full-width
step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.tasks.base import SupervisedTask
from dlx.tasks.seq2seq import (
    TRAIN_LENGTH_BUCKETS,
    bucket_index,
    bucket_shapes,
    closest_edit_distances,
    edit_distances,
)
from dlx.train import loop
from helpers import eval_records, load_config, train


@pytest.mark.parametrize("config", ["cmudict_transformer.py:test", "cmudict_gru_attention.py:test"])
def test_seq2seq_g2p_runs_and_scores_decoded_words(config, tmp_path):
    workdir = tmp_path / "g2p"
    train(f"configs/{config}", workdir)
    final = eval_records(workdir)[-1]
    assert 0.0 < final["phoneme_error_rate"] and 0.0 < final["word_error_rate"] <= 1.0
    # Scored against any of its pronunciations, a word can only gain.
    assert final["word_error_rate_any"] <= final["word_error_rate"]
    assert 0.0 < final["phoneme_error_rate_any"]
    lines = (workdir / "samples" / "step_0000006.txt").read_text().splitlines()
    assert len(lines) == 20 and all("(reference: " in line for line in lines)
    if "gru" in config:  # the README's beam-search eval of a finished run
        beam = load_config(str(workdir / "config.json"), {"decoding.beam_size": 3})
        scored = loop.evaluate(beam, str(workdir))
        assert scored["step"] == final["step"]
        assert 0.0 < scored["phoneme_error_rate"] and 0.0 < scored["word_error_rate"] <= 1.0


def _levenshtein(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_edit_distance_matches_dynamic_programming():
    rng = np.random.RandomState(0)
    eos, rows = 2, 300
    predicted, reference = rng.randint(3, 7, (rows, 9)), rng.randint(3, 7, (rows, 7))
    predicted_len, reference_len = rng.randint(0, 10, rows), rng.randint(0, 8, rows)
    for r in range(rows):  # after its eos a row holds anything (prediction) or padding
        if predicted_len[r] < 9:
            predicted[r, predicted_len[r]] = eos
        if reference_len[r] < 7:
            reference[r, reference_len[r] :] = 0
            reference[r, reference_len[r]] = eos
    distance, length = edit_distances(jnp.asarray(predicted), jnp.asarray(reference), eos)
    expected = [
        _levenshtein(predicted[r, : predicted_len[r]], reference[r, : reference_len[r]])
        for r in range(rows)
    ]
    np.testing.assert_array_equal(np.asarray(distance, int), expected)
    np.testing.assert_array_equal(np.asarray(length, int), reference_len)


def test_closest_edit_distance_takes_the_nearest_present_reference():
    rng = np.random.RandomState(1)
    eos, pad, rows, k = 2, 0, 200, 3
    predicted = rng.randint(3, 6, (rows, 6))
    predicted[:, 5] = eos
    references = np.full((rows, k, 6), pad)
    present = rng.randint(1, k + 1, rows)  # the first reference is always there
    lengths = rng.randint(1, 6, (rows, k))
    for r in range(rows):
        for j in range(present[r]):
            references[r, j, : lengths[r, j]] = rng.randint(3, 6, lengths[r, j])
            references[r, j, lengths[r, j]] = eos
    references[0, 1] = references[0, 0]  # a tie goes to the first
    distance, length = closest_edit_distances(
        jnp.asarray(predicted), jnp.asarray(references), eos, pad
    )
    for r in range(rows):
        options = [
            (_levenshtein(predicted[r, :5], references[r, j, : lengths[r, j]]), j)
            for j in range(present[r])
        ]
        best, j = min(options)
        assert (distance[r], length[r]) == (best, lengths[r, j])


def test_length_buckets_cover_every_real_id():
    shapes = bucket_shapes(32, 32)
    assert shapes == [(8, 9), (16, 17), (24, 25), (32, 32)]  # decoder reads targets[:, :-1]
    assert bucket_shapes(10, 12) == [(8, 9), (10, 12)]
    assert bucket_shapes(32, 32, ()) == [(32, 32)]  # data.length_buckets=(): full width only
    inputs, targets = np.zeros((3, 32), np.int32), np.zeros((3, 32), np.int32)
    inputs[:, :5], targets[:, :7] = 3, 4
    picks = {}
    for name, (input_length, target_length) in {
        "short": (5, 7),
        "8 letters": (8, 7),
        "9 letters": (9, 7),
        "9 target ids": (5, 9),
        "10 target ids": (5, 10),
        "28 letters": (28, 7),
        "30 target ids": (5, 30),
    }.items():
        i, t = inputs.copy(), targets.copy()
        i[1, :input_length], t[2, :target_length] = 3, 4
        picks[name] = int(bucket_index(jnp.asarray(i), jnp.asarray(t), shapes, pad_id=0))
    assert picks == {
        "short": 0,
        "8 letters": 0,
        "9 letters": 1,
        "9 target ids": 0,
        "10 target ids": 1,
        "28 letters": 3,
        "30 target ids": 3,
    }


@pytest.mark.parametrize("long_word_row", [None, 15])
def test_bucketed_sharded_train_step_equals_the_full_width_step(long_word_row):
    """The jitted, 8-way data-sharded step crops to one bucket for the whole global batch (a
    long word in the last device's rows moves every device to a wider bucket) and gives the
    update of the uncropped step."""
    from configs.cmudict_transformer import get_config
    from dlx.train import loop, sharding

    config = get_config("test")
    config.data.length_buckets = TRAIN_LENGTH_BUCKETS  # `:test` trains at full width
    config.data.batch_size = 16
    config.mesh.data = 8
    run = loop.prepare_run(config)
    source = run.task.source("train", train=True)
    lengths = (source.columns["inputs"] != 0).sum(1), (source.columns["targets"] != 0).sum(1)
    short = np.flatnonzero((lengths[0] <= 8) & (lengths[1] <= 9))[:16]
    if long_word_row is not None:
        short[long_word_row] = np.flatnonzero(lengths[0] >= 20)[0]
    batch = source.read_rows(short)
    shapes = bucket_shapes(32, 32)
    expected_bucket = 0 if long_word_row is None else 3
    assert int(bucket_index(batch["inputs"], batch["targets"], shapes, 0)) == expected_bucket

    state, rng = loop.init_state(run), jax.random.PRNGKey(0)
    with loop._tracing_context(run.mesh, config):
        full_state, full_metrics = jax.jit(
            lambda state, batch: SupervisedTask.train_step(run.task, state, batch, rng, 0)
        )(state, batch)
        train_step = loop.compile_steps(run)
        new_state, metrics = train_step(state, sharding.shard_batch(batch, run.mesh), 0)
    for key in ("loss", "cross_entropy", "token_accuracy", "grad_norm"):
        np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=2e-5, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        new_state.params,
        full_state.params,
    )
