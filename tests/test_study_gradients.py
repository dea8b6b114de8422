"""The gradients study (experiments/gradients.py): its --quick variant writes the report and
figures, and what it measures holds (a sigmoid stack's gradient vanishes toward the input where a
residual, normalised one's does not; a too-large rate diverges without clipping and not with it;
recurrent models are causal and their gradient fades with distance). Also the MLP's residual and
norm options the study relies on, and the input-gradient measurement against a direct one."""

from __future__ import annotations

import contextlib
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx.errors import ConfigError
from dlx.layers import activations
from dlx.models import check_config, mlp, recurrent
from experiments import common, gradients
from helpers import REPO


# ------------------------------------------------------------------------------------------------
# The MLP's residual and norm options
# ------------------------------------------------------------------------------------------------
def _init(model, shape=(4, 8, 8, 1)):
    x = jax.random.normal(jax.random.key(1), shape)
    return x, nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x))


def _hidden(model, variables, x) -> dict:
    with activations.recording_activations() as hidden:
        out = model.apply(variables, x)
    return {**jax.device_get(hidden), "out": out}


def test_mlp_parameter_names_do_not_change_for_existing_configs():
    x, variables = _init(mlp.Model(hidden=(32, 16), batch_norm=True))
    assert set(variables["params"]) == {"Dense_0", "Dense_1", "BatchNorm_0", "BatchNorm_1", "head"}
    assert set(variables["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}
    # norm="batch" is batch_norm=True: same variables, same outputs
    same = mlp.Model(hidden=(32, 16), norm="batch")
    np.testing.assert_array_equal(
        same.apply(variables, x), mlp.Model(hidden=(32, 16), batch_norm=True).apply(variables, x)
    )
    # residual connections add no parameters and rename none
    shapes = {
        residual: jax.eval_shape(
            mlp.Model(hidden=(16, 16, 16), residual=residual).init, jax.random.key(0), x
        )
        for residual in (False, True)
    }
    assert jax.tree.structure(shapes[False]) == jax.tree.structure(shapes[True])
    assert jax.tree.leaves(shapes[False]) == jax.tree.leaves(shapes[True])


def test_mlp_residual_layers_add_their_input_where_the_width_is_kept():
    model = mlp.Model(hidden=(16, 16, 8), residual=True)
    x, variables = _init(model)
    params = variables["params"]
    skip = _hidden(model, variables, x)
    plain = _hidden(mlp.Model(hidden=(16, 16, 8)), variables, x)
    layer = lambda i, h: jax.nn.relu(
        h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
    )
    # the first layer projects the input (no skip), in both
    np.testing.assert_allclose(skip["hidden_0"], plain["hidden_0"], rtol=1e-6)
    # the second keeps the width: its input is added to its output
    np.testing.assert_allclose(
        skip["hidden_1"], skip["hidden_0"] + layer(1, skip["hidden_0"]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(plain["hidden_1"], layer(1, plain["hidden_0"]), rtol=1e-5, atol=1e-6)
    # the third changes the width: no skip
    np.testing.assert_allclose(skip["hidden_2"], layer(2, skip["hidden_1"]), rtol=1e-5, atol=1e-6)
    assert skip["out"].shape == (4, 10)
    assert not np.allclose(skip["out"], plain["out"])
    assert "dense_1 (relu) + skip" in mlp.summarize(model, x.shape)
    assert "dense_2 (relu) + skip" not in mlp.summarize(model, x.shape)


def test_mlp_layer_norm_normalises_each_hidden_layer_before_its_activation():
    model = mlp.Model(hidden=(16, 16), norm="layer", activation="linear")
    x, variables = _init(model)
    assert {"LayerNorm_0", "LayerNorm_1"} <= set(variables["params"])
    hidden = _hidden(model, variables, x)
    for name in ("hidden_0", "hidden_1"):  # scale 1, bias 0 at init: zero mean, unit variance
        np.testing.assert_allclose(hidden[name].mean(-1), 0.0, atol=1e-5)
        np.testing.assert_allclose(hidden[name].var(-1), 1.0, rtol=1e-3)
    assert "dense_0 (ln, linear)" in mlp.summarize(model, x.shape)


def test_mlp_norm_choices_are_checked():
    with pytest.raises(ConfigError, match="two norms"):
        mlp.Model(batch_norm=True, norm="layer")
    with pytest.raises(ConfigError, match="model.norm"):
        check_config({"name": "mlp", "norm": "group"})
    check_config({"name": "mlp", "norm": "layer", "residual": True})


# ------------------------------------------------------------------------------------------------
# The input-gradient measurement
# ------------------------------------------------------------------------------------------------
def test_gradient_by_distance_is_the_gradient_of_each_positions_loss():
    model = recurrent.Model(cell="gru", vocab_size=11, embed_dim=4, hidden_dim=6)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 11, (3, 10))
    # any parameters will do, and numpy's are free where compiling the initialiser is not
    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens[:, :-1]))
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), shapes)
    params = params["params"]
    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    embedded = params["embed"]["embedding"][inputs]
    # the swapped-in embeddings give the model's own logits
    np.testing.assert_allclose(
        gradients.logits_from_embeddings(model, params, inputs, embedded),
        model.apply({"params": params}, inputs),
        rtol=1e-6,
    )
    positions, length = 3, inputs.shape[1]
    by_k, leak = gradients.gradient_by_distance(model, tokens, positions)(params)
    assert leak == 0.0 and by_k.shape == (length - positions + 1,)
    expected = np.zeros_like(by_k)

    @jax.jit
    @jax.grad
    def grad_of_loss_at(x, t):  # one position's loss, all windows
        logits = gradients.logits_from_embeddings(model, params, inputs, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, t], targets[:, t]).sum()

    for t in range(length - positions, length):
        grad = np.asarray(grad_of_loss_at(embedded, t))  # [B, T, E]
        for k in range(len(by_k)):
            expected[k] += np.linalg.norm(grad[:, t - k], axis=-1).mean() / positions
    np.testing.assert_allclose(by_k, expected, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# The --quick study
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradients")
    # The runs repeat programs that compile in under a second (the eval step of part 2's runs),
    # which JAX's persistent cache skips by default; here they are kept.
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        with contextlib.chdir(REPO):
            gradients.main(
                ["--quick", "--out", str(root / "runs"), "--report_dir", str(root / "report")]
            )
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)
    return root


def test_quick_study_writes_report_and_figures(study):
    report = (study / "report" / "report.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## What we expected / what we measured"):
        assert heading in report
    quick = gradients.QUICK
    for arm in (*quick.depth_arms, *gradients.EXPLODE_ARMS, *quick.cells):
        assert f"| {arm}" in report
    assert "python experiments/gradients.py --quick" in report
    for figure in ("depth_gradients", "depth_training", "explode_gradients", "sequence_gradients"):
        assert f"({figure}.png)" in report
        assert (study / "report" / f"{figure}.png").stat().st_size > 10_000


def test_sigmoid_gradient_vanishes_toward_the_input_and_residual_norm_does_not(study):
    depth = gradients.QUICK.depth
    ratios = {}
    for arm in ("sigmoid", "residual_layernorm"):
        for seed in gradients.QUICK.seeds:
            stats = json.loads(
                (
                    study / "runs" / "depth" / arm / f"seed_{seed}" / gradients.INIT_STATS_FILE
                ).read_text()
            )
            norms = gradients.layer_norms(stats, depth)
            ratios.setdefault(arm, []).append(norms[0] / norms[-1])
    assert max(ratios["sigmoid"]) < 1e-3  # orders of magnitude (0.24 per layer)
    assert all(0.1 < r < 10 for r in ratios["residual_layernorm"])


def test_first_step_statistics_are_recomputed_as_the_run_logged_them(study):
    run = study / "runs" / "depth" / "sigmoid" / "seed_0"
    logged = gradients.init_layer_stats(run)  # quick runs log every step: their step-1 record
    recomputed = common.first_step_layer_stats(run)  # what the full study computes
    grads = [key for key in logged if key.startswith("grad_norm/")]
    assert len(grads) == 2 * (gradients.QUICK.depth + 1)
    for key in grads:
        assert recomputed[key] == pytest.approx(logged[key], rel=1e-4)


def test_too_large_rate_diverges_without_clipping_and_not_with_it(study):
    rates = gradients.QUICK.explode_rates
    rate = max(rates)
    # the sweep scores the diverged rate as nothing and picks the other
    sweep = study / "runs" / "explode" / "sgd"
    assert gradients.diverged(sweep / f"lr_{rate:g}")
    for seed in gradients.QUICK.seeds:
        config = json.loads((sweep / f"seed_{seed}" / "config.json").read_text())
        assert config["optimizer"]["learning_rate"] == min(rates)
    for seed in gradients.QUICK.seeds:
        plain = study / "runs" / "explode" / f"sgd_at_{rate:g}" / f"seed_{seed}"
        clipped = study / "runs" / "explode" / f"sgd_clip_at_{rate:g}" / f"seed_{seed}"
        assert gradients.diverged(plain) and not gradients.diverged(clipped)
        _, norms = common.series(clipped, "train", "grad_norm")
        assert len(norms) and np.all(np.isfinite(norms))
        assert math.isfinite(common.final_eval(clipped)["accuracy"])


def test_recurrent_gradients_are_causal_and_fade_with_distance(study):
    for cell in gradients.QUICK.cells:
        for seed in gradients.QUICK.seeds:
            run = study / "runs" / "sequence" / cell / f"seed_{seed}"
            measured = json.loads((run / gradients.GRADIENTS_FILE).read_text())
            for state in ("init", "trained"):
                assert measured[f"{state}_future"] == 0.0
                by_k = np.asarray(measured[state])
                assert np.all(by_k > 0) and by_k[-1] < by_k[0] / 10


def test_a_gradient_that_underflowed_to_zero_is_reported_and_ranked_by_its_decay():
    """Far enough back a simple RNN's gradient falls below float32's range and reads 0: the
    table says so, and the cells are ranked by their fitted decay per step, not by a 0 / x."""
    assert gradients.format_distance(np.zeros(3)) == "0 (underflow)"
    assert gradients.format_distance(np.array([0.0, 1e-3, 1e-3])).endswith("(1 of 3 underflow)")
    facts = {
        "far": 120,
        "cells": ("rnn", "lstm"),
        "reach": {
            (c, s): r for s in ("init", "trained") for c, r in (("rnn", 0.0), ("lstm", 1e-9))
        },
        "per_step": {
            (c, s): f for s in ("init", "trained") for c, f in (("rnn", 0.5), ("lstm", 0.8))
        },
        "underflow": {
            (c, s): u for s in ("init", "trained") for c, u in (("rnn", 64), ("lstm", None))
        },
    }
    text = "\n".join(gradients.conclude_sequence(facts))
    assert "×0.500 for the rnn (below float32's range (0) from k = 64)" in text
    assert "×0.800 for the lstm (‖g(k=120)‖ / ‖g(k=1)‖ = 1.0e-09)" in text
    assert text.count("the rnn's fades fastest, as expected.") == 2
