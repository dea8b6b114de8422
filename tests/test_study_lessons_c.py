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


def numpy_variables(model, *args) -> dict:
    """`model.init`'s variables, laid out by tracing it and drawn with numpy: these tests are about
    the maps, and JAX's initialisers compile once per parameter shape (most of their time)."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), shapes)


def test_sown_weights_are_the_probabilities_attention_uses():
    """Grouped heads, a padding mask and the causal mask together: the weights make the output."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 6, heads, 8)), jnp.float32) for heads in (4, 2, 2))
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
    variables = numpy_variables(model, *args)
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
    variables = numpy_variables(model, inputs, targets_in)
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
    rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    assert [row.split("|")[1].strip() for row in rows] == list(positions.QUICK_POSITIONS)
    header = "| position | " + " | ".join(f"lr {rate:g}" for rate in positions.QUICK_GRID) + " |"
    beyond = text.split(header)[1].splitlines()[2:]  # every swept rate's accuracy beyond L
    for name, line in zip(positions.QUICK_POSITIONS, beyond):
        assert line.startswith(f"| {name} |") and line.count("%") == len(positions.QUICK_GRID)
    assert "largest on the diagonal (at every position)" in text
    assert "python experiments/positions.py --quick" in text
    for figure in ("similarity.png", "length_generalisation.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 10_000
    for row in rows:  # the sweep: a validation loss per rate
        assert all(f"{rate:g} (" in row.split("|")[2] for rate in positions.QUICK_GRID), row
    for name in positions.QUICK_POSITIONS:
        run = tmp_path / "runs" / name / "seed_0"  # --quick: one seed
        scored = json.loads((run / "plots" / "position_accuracy.json").read_text())
        assert scored["split"] == "test" and scored["positions"] == list(range(2, 16))
        summary = json.loads((run / "summary.json").read_text())["final_eval"]
        assert 0.0 <= summary["accuracy_long"] <= 1.0
        losses = list(train_losses(run).values())
        assert losses[-1] < losses[0] - 0.05  # the task plug-in trains


# --- study 7: attention maps ----------------------------------------------------------------------


def test_alignment_score_and_head_statistics_on_maps_of_known_shape():
    """A diagonal alignment is monotone, a reversed one is not; a previous-character head and a
    first-position head read as such."""
    words, length = [f"w{i}rd5" for i in range(8)], 5

    def g2p_maps(alignment: np.ndarray) -> attention_maps.G2PMaps:
        padded = np.zeros((len(words), 1, 2, length + 1, length + 2))  # eos row, padding columns
        padded[:, :, :, :length, :length] = alignment
        padded[:, :, :, length, 0] = 1.0
        phonemes = [["P"] * length for _ in words]
        return attention_maps.G2PMaps(words, phonemes, ["P P P P P"] * len(words), padded)

    diagonal = attention_maps.monotone_fraction(g2p_maps(np.eye(length)), 0, None)
    assert diagonal["monotone"] == 1.0 and diagonal["pairs"] == len(words) * (length - 1)
    assert diagonal["chance"] < 0.8  # shuffled peaks move backwards
    reversed_ = attention_maps.monotone_fraction(g2p_maps(np.eye(length)[::-1]), 0, 1)
    assert reversed_["monotone"] == 0.0

    previous = np.eye(6, k=-1)
    previous[0, 0] = 1.0
    first = np.zeros((6, 6))
    first[:, 0] = 1.0
    stats = attention_maps.head_statistics(np.stack([previous, first])[None, None])
    np.testing.assert_allclose(stats["previous"], [[1.0, 0.2]])
    np.testing.assert_allclose(stats["distance"], [[1.0, 3.0]])  # mean of 1..5 for the second
    np.testing.assert_allclose(stats["first"], [[0.2, 1.0]])
    np.testing.assert_allclose(stats["self"], [[0.0, 0.0]])


def test_attention_maps_report_of_trained_runs(tmp_path):
    """What the report says of trained runs, two seeds (their config.json and summary.json),
    which the --quick study, training nothing, does not write: the mean ± std over the seeds."""
    from dlx.train import config as config_lib

    workdirs = {}
    for name, finals in (
        (
            "transformer",
            [
                {"phoneme_error_rate": 0.07, "word_error_rate": 0.25},
                {"phoneme_error_rate": 0.09, "word_error_rate": 0.35},
            ],
        ),
        ("gpt", [{"loss": 1.5, "bits_per_char": 2.164}, {"loss": 1.7, "bits_per_char": 2.453}]),
    ):
        for seed, final in enumerate(finals):
            workdir = tmp_path / name / f"seed_{seed}"
            workdir.mkdir(parents=True)
            config = config_lib.load(attention_maps.MODELS[name][0])
            (workdir / "config.json").write_text(config_lib.to_json(config))
            summary = {
                "final_eval": final,
                "steps": 1000,
                "wall_time_s": 600.0 + 120 * seed,
                "num_params": 12345,
            }
            (workdir / "summary.json").write_text(json.dumps(summary))
            workdirs.setdefault(name, []).append(workdir)
    words = ["abc", "abcd"]
    diagonal, backwards = np.zeros((2, 1, 1, 4, 4)), np.zeros((2, 1, 1, 4, 4))
    diagonal[:, 0, 0] = np.eye(4)
    backwards[:, 0, 0, :3, :3] = np.eye(3)[::-1]  # every phoneme a letter further back
    scored = [
        attention_maps.G2PMaps(words, [["A", "B", "C"]] * 2, ["A B C"] * 2, maps)
        for maps in (diagonal, backwards)
    ]
    origins = [attention_maps.Origin.trained(w) for w in workdirs["transformer"]]
    lines, scores, heads = attention_maps.g2p_section("transformer", origins, "", scored, "t.png")
    text = "\n".join(lines)
    assert "1000 steps" in text and "12,345 parameters" in text and "11.0 min a run" in text
    assert "phoneme error rate 8.0 ± 1.4%, word error rate 30.0 ± 7.1%" in text
    assert "| attention | 50.0 ± 70.7% |" in text and scores[0][0]["pairs"] == 4

    stats = [
        {k: np.full((2, 2), value) for k in ("distance", "previous", "self", "first")}
        for value in (0.5, 0.7)
    ]
    origins = [attention_maps.Origin.trained(w) for w in workdirs["gpt"]]
    text = "\n".join(attention_maps.gpt_section(origins, "", stats, "g.png"))
    assert "1000 steps" in text and "1.600 ± 0.141 nats/char, 2.308 ± 0.204 bits/char" in text
    assert "| 1 | 1 | 0.5 | 50.0% | 50.0% | 50.0% |" in text  # the first seed's heads
    assert "| 1 | 0.6 ± 0.1 | 60.0 ± 14.1% |" in text  # each block over the seeds
    findings = "\n".join(attention_maps.findings({"transformer": (scores, heads)}, stats))
    assert "monotone for 50.0 ± 70.7% of consecutive phonemes" in findings
    assert "0.6 ± 0.1 characters in the first block" in findings
    assert "untrained" not in findings


def test_attention_maps_study_quick(tmp_path):
    """--quick: the maps of the three models with random parameters (no training)."""
    runs, out = tmp_path / "runs", tmp_path / "report"
    with contextlib.chdir(REPO):
        results = attention_maps.main(["--quick", "--out", str(runs), "--report_dir", str(out)])
    text = results.report.read_text()
    assert "monotone fraction" in text and "| 0 | 0 |" in text  # the G2P and GPT tables
    assert "with random parameters on the runner's layout" in text
    assert "Measured on untrained" in text
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
