"""Per-layer statistics (`config.layer_stats_every_steps`): what they report is what the train
step does, they do not depend on the mesh, and they cost nothing when off."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx import data as data_lib
from dlx.errors import ConfigError
from dlx.layers import activations
from dlx.train import config as config_lib
from dlx.train import loop
from helpers import load_config, train

DIGITS = "configs/digits_mlp.py"


def _steps(train_steps: int, **more) -> dict:
    return {"log_every_steps": 1, "num_epochs": 0.0, "train_steps": train_steps, **more}


def _step_with_stats(overrides: dict, devices: int | None = None, mesh: dict | None = None):
    """(stats of the first train step, the state before it, after it, the step's metrics)."""
    config = load_config(DIGITS, {**_steps(2), **overrides})
    if mesh:
        config.mesh.update(mesh)
    run = loop.prepare_run(config, None, jax.devices()[:devices] if devices else None)
    batch = next(
        data_lib.train_iterator(
            run.task.source(config.data.train_split, train=True),
            global_batch_size=config.data.batch_size,
            seed=config.seed,
        )
    )
    with loop._tracing_context(run.mesh, config):
        state = loop.init_state(run)
        before = jax.device_get(state.params)
        scalars, samples = jax.device_get(loop.compile_layer_stats(run)(state, batch, np.int32(0)))
        state, metrics = loop.compile_steps(run)(state, batch, np.int32(0))
    return scalars, samples, before, jax.device_get(state.params), jax.device_get(metrics), batch


def test_stats_are_the_train_steps_own_gradients_updates_and_activations():
    scalars, samples, before, after, metrics, batch = _step_with_stats(
        {"model.dropout": 0.25, "optimizer.name": "adam"}
    )
    # the update reported is the one the step applied, and the gradients are the step's
    for name in ("Dense_0/kernel", "Dense_1/bias", "head/kernel"):
        layer, param = name.split("/")
        applied = after[layer][param] - before[layer][param]
        np.testing.assert_allclose(
            scalars[f"update_norm/{name}"], np.linalg.norm(applied), rtol=1e-4
        )
        np.testing.assert_allclose(
            scalars[f"param_norm/{name}"], np.linalg.norm(before[layer][param]), rtol=1e-5
        )
    grad_norms = [v for k, v in scalars.items() if k.startswith("grad_norm/")]
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(grad_norms))), metrics["grad_norm"], 1e-4)
    # the first hidden layer's activations recomputed by hand: the layer's own output, before
    # dropout (the dropout mask is not the layer's sparsity)
    x = batch["image"].reshape(len(batch["image"]), -1).astype(np.float32) / 255.0
    hidden = np.maximum(x @ before["Dense_0"]["kernel"] + before["Dense_0"]["bias"], 0.0)
    assert scalars["activation/hidden_0/dead_fraction"] == pytest.approx(
        np.mean(np.all(hidden == 0, axis=0))
    )
    assert scalars["activation/hidden_0/zero_fraction"] == pytest.approx(np.mean(hidden == 0))
    assert scalars["activation/hidden_0/mean"] == pytest.approx(hidden.mean(), rel=1e-4)
    assert scalars["activation/hidden_0/std"] == pytest.approx(hidden.std(), rel=1e-4)
    assert samples["activation/hidden_0"].shape == (min(hidden.size, 4096),)
    assert samples["param/Dense_0/kernel"].size == 4096


@pytest.fixture(scope="module")
def one_device_stats():
    return _step_with_stats({}, devices=1)[0]


@pytest.mark.parametrize("mesh", [{"data": 8}, {"data": 2, "fsdp": 4}, {"data": 2, "model": 4}])
def test_stats_do_not_depend_on_the_mesh(one_device_stats, mesh):
    one = one_device_stats
    sharded = _step_with_stats({}, mesh={"data": 1, **mesh})[0]
    assert sharded.keys() == one.keys()
    for key in one:
        np.testing.assert_allclose(sharded[key], one[key], rtol=2e-4, atol=1e-6, err_msg=key)


def test_a_run_logs_them_every_n_steps_and_not_when_off(tmp_path):
    train(DIGITS, tmp_path / "on", _steps(6, layer_stats_every_steps=3), devices=1)
    train(DIGITS, tmp_path / "off", _steps(6), devices=1)
    on = [json.loads(line) for line in (tmp_path / "on/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in on if r["split"] == "layers"] == [3, 6]
    off = (tmp_path / "off/metrics.jsonl").read_text()
    assert '"layers"' not in off
    # the statistics do not change the training
    train_on = {r["step"]: r["loss"] for r in on if r["split"] == "train"}
    train_off = {
        r["step"]: r["loss"] for r in map(json.loads, off.splitlines()) if r["split"] == "train"
    }
    assert train_on == train_off
    events = list((tmp_path / "on/tensorboard").iterdir())
    assert events and events[0].stat().st_size > 10_000  # scalars and histograms


def test_recording_leaves_out_what_a_lifted_transform_computes():
    class Body(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return activations.LayerOutput(name="inner")(jnp.tanh(nn.Dense(4)(x))), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = activations.LayerOutput(name="outer")(nn.relu(nn.Dense(4)(x)))
            scan = nn.scan(Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return scan(name="stack")(x, None)[0]

    net, x = Net(), jnp.ones((2, 3))
    variables = net.init(jax.random.PRNGKey(0), x)

    @jax.jit
    def forward(variables, x):
        with activations.recording_activations() as hidden:
            net.apply(variables, x)
        return hidden

    hidden = forward(variables, x)
    assert list(hidden) == ["outer"]
    assert hidden["outer"].shape == (2, 4)


def test_a_task_without_them_is_refused_before_anything_runs():
    config = load_config("configs/fashion_dcgan.py:test", {"layer_stats_every_steps": 5})
    with pytest.raises(ConfigError, match="layer_stats_every_steps=0"):
        config_lib.validate(config)
    with pytest.raises(ConfigError, match="layer_stats_every_steps"):
        config_lib.validate(load_config(DIGITS, {"layer_stats_every_steps": -1}))


def test_a_run_saved_before_them_loads_with_them_off(tmp_path):
    values = json.loads(load_config(DIGITS).to_json())
    del values["layer_stats_every_steps"]  # a config.json written by an older dlx
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    assert config_lib.from_json(str(path)).layer_stats_every_steps == 0
