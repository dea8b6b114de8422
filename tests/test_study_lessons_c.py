"""Studies 6 and 7 of the lessons (experiments/positions.py, experiments/attention_maps.py), each
run in this process in its `--quick` form, and what they stand on: the `token_lag` task plug-in
(generated strings) and the attention probabilities dlx's attention layers sow when asked."""

from __future__ import annotations

import contextlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.layers import attention
from dlx.models import seq2seq, transformer
from dlx.tasks import token_lag
from experiments import attention_maps, positions
from helpers import REPO, load_config, train_losses

# --- sown attention probabilities ---------------------------------------------------------------


def test_sown_weights_are_the_probabilities_attention_uses():
    """Grouped heads, a padding mask and the causal mask together: the weights make the output."""
    q, k, v = (
        jax.random.normal(jax.random.PRNGKey(i), (2, 6, heads, 8))
        for i, heads in enumerate((4, 2, 2))
    )
    mask = attention.padding_mask(jnp.array([[5, 6, 7, 8, 9, 3], [5, 6, 7, 0, 0, 0]]))
    weights = attention.attention_weights(q, k, mask, causal=True)
    assert weights.shape == (2, 4, 6, 6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    assert float(jnp.triu(weights, 1).max()) == 0.0  # no query sees a later key
    assert float(weights[1, :, :, 3:].max()) == 0.0  # nor padding
    value_per_head = jnp.repeat(v, 2, axis=2)  # query head n reads key/value head n // 2
    expected = jnp.einsum("bhts,bshd->bthd", weights, value_per_head)
    out = attention.dot_product_attention(q, k, v, mask, causal=True, implementation="einsum")
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_transformer_sows_attention_only_when_asked_and_computes_the_same(kind):
    model = transformer.Model(
        kind=kind, vocab_size=12, num_layers=2, embed_dim=16, num_heads=4, num_kv_heads=2
    )
    tokens = jnp.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]])
    args = (tokens, tokens) if kind == "encoder_decoder" else (tokens,)
    variables = model.init(jax.random.PRNGKey(0), *args)
    assert set(variables) == {"params"}  # init stores no maps
    plain = model.apply(variables, *args)
    logits, state = model.apply(variables, *args, mutable=["intermediates"])
    np.testing.assert_array_equal(logits, plain)
    maps = jax.tree.leaves(state["intermediates"])
    assert len(maps) == (6 if kind == "encoder_decoder" else 2)  # self (+ cross) per block
    for weights in maps:
        assert weights.shape[:2] == (2, 4)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("score", ["bahdanau", "luong"])
def test_gru_attention_sows_one_map_over_the_real_letters(score):
    model = seq2seq.Model(vocab_size=12, embed_dim=8, hidden_dim=16, attention=score)
    inputs = jnp.array([[3, 4, 5, 6, 0, 0], [7, 8, 9, 0, 0, 0]])
    targets_in = jnp.array([[1, 5, 6, 7], [1, 9, 9, 2]])
    variables = model.init(jax.random.PRNGKey(0), inputs, targets_in)
    plain = model.apply(variables, inputs, targets_in)
    logits, state = model.apply(variables, inputs, targets_in, mutable=["intermediates"])
    np.testing.assert_array_equal(logits, plain)
    (weights,) = state["intermediates"]["decoder"]["attention_weights"]
    assert weights.shape == (2, 4, 6)  # [words, target steps, letters]
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    assert float(weights[0, :, 4:].max()) == 0.0 and float(weights[1, :, 3:].max()) == 0.0


# --- study 6: positional encodings ----------------------------------------------------------------


def test_encodings_sinusoidal_peaks_on_the_diagonal_and_rope_depends_on_the_offset_only():
    similarity = positions.cosine_similarity(positions.sinusoidal_table(40, 16))
    assert (similarity.argmax(1) == np.arange(40)).all()
    np.testing.assert_allclose(np.diagonal(similarity), 1.0, atol=1e-6)
    offsets = np.arange(-20, 21)
    at_0, at_100 = (positions.rope_scores(16, offsets, start) for start in (0, 100))
    for name in ("ones", "random"):
        np.testing.assert_allclose(at_0[name], at_100[name], rtol=1e-4, atol=1e-4)
    assert at_0["ones"][20] == pytest.approx(16.0)  # offset 0: q.k unrotated
    assert at_0["ones"].argmax() == 20


def test_token_lag_refuses_a_learned_table_shorter_than_the_eval_strings():
    config = load_config("configs/token_lag.py:test", {"model.max_len": 8})
    with pytest.raises(ConfigError, match=r"max_len >= 16 .* never trained"):
        token_lag.Task.check_config(config)
    rope = load_config("configs/token_lag.py:test", {"model.max_len": 8, "model.position": "rope"})
    token_lag.Task.check_config(rope)  # no table: any length


def test_positions_study_quick(tmp_path):
    with contextlib.chdir(REPO):
        report = positions.main(
            ["--quick", "--out", str(tmp_path / "runs"), "--report_dir", str(tmp_path / "report")]
        )
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split("|")[1].strip() for row in rows] == list(positions.QUICK_POSITIONS)
    assert "largest on the diagonal (at every position)" in text
    assert "python experiments/positions.py --quick" in text
    for figure in ("similarity.png", "length_generalisation.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 10_000
    for name in positions.QUICK_POSITIONS:
        for seed in (0, 1):
            run = tmp_path / "runs" / name / f"seed_{seed}"
            scored = json.loads((run / "plots" / "position_accuracy.json").read_text())
            assert scored["split"] == "test" and scored["positions"] == list(range(2, 16))
            summary = json.loads((run / "summary.json").read_text())["final_eval"]
            assert 0.0 <= summary["accuracy_long"] <= 1.0
            losses = list(train_losses(run).values())
            assert losses[-1] < losses[0] - 0.05  # the task plug-in trains


# --- study 7: attention maps ----------------------------------------------------------------------


def test_attention_maps_study_quick(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    with contextlib.chdir(REPO):
        results = attention_maps.main(["--quick", "--out", str(runs), "--report_dir", str(out)])
    text = results.report.read_text()
    assert "monotone fraction" in text and "| 0 | 0 |" in text  # the G2P and GPT tables
    assert "python experiments/attention_maps.py --quick" in text
    for figure in ("g2p_transformer.png", "g2p_gru.png", "gpt_heads.png"):
        assert (out / figure).stat().st_size > 10_000

    for name, layers, heads in (("transformer", 1, 2), ("gru", 1, 1)):
        maps = results.g2p[name]
        assert maps.maps.shape[:3] == (2 + 64, layers, heads)  # figure words, scored words
        for i, word in enumerate(maps.words):
            rows = maps.maps[i, ..., : len(maps.phonemes[i]) + 1, :]  # phonemes and eos
            np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
            assert float(rows[..., len(word) :].max()) == 0.0  # padding gets nothing
        score = attention_maps.monotone_fraction(maps, 0, None)
        assert 0.0 <= score["chance"] <= 1.0 and 0.0 <= score["monotone"] <= 1.0
    assert results.gpt.shape == (1 + attention_maps.GPT_WINDOWS, 2, 2, 32, 32)
    np.testing.assert_allclose(results.gpt.sum(-1), 1.0, atol=1e-5)
    assert float(np.triu(results.gpt, 1).max()) == 0.0  # causal
