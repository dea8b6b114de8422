"""DDPM as a task plug-in: schedules, the EMA in the state, both samplers, a run end to end."""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest

from dlx import inference
from dlx.tasks.diffusion import noise_schedule
from dlx.train import config as config_lib
from dlx.train import loop


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_noise_schedules_take_the_signal_from_all_to_almost_none(kind):
    betas = noise_schedule(kind, 1000)
    alpha_bar = np.cumprod(1 - betas)
    assert betas.shape == (1000,) and np.all(np.diff(alpha_bar) < 0)
    assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3
    if kind == "linear":  # Ho et al.'s values
        np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02])


def test_ddpm_trains_keeps_an_ema_and_samples_with_both_samplers(tmp_path):
    config = config_lib.load("configs/fashion_ddpm.py:test")
    config.progress_bar = False
    summary = loop.train_and_evaluate(config, str(tmp_path / "ddpm"))
    assert np.isfinite(summary["final_eval"]["loss"])
    for figure in ("samples", "trajectory"):
        assert (tmp_path / "ddpm" / "plots" / f"{figure}.png").is_file()

    bundle = inference.load(str(tmp_path / "ddpm"))
    state, task = bundle.state, bundle.task
    # Both start at the initial params; after 4 updates the EMA (decay 0.999) has moved about
    # 1 - 0.999^4 = 0.4% as far as the params.
    start = jax.device_get(loop.init_state(bundle.run).params)
    ema_moved = max(
        np.abs(e - s).max() for e, s in zip(jax.tree.leaves(state.ema), jax.tree.leaves(start))
    )
    params_moved = max(
        np.abs(p - s).max() for p, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(start))
    )
    assert 0 < ema_moved < 2 * (1 - config.diffusion.ema_decay**4) * params_moved

    ddim, ddim_path = task.generate(state.ema, 4, seed=0, sampler="ddim")
    ancestral, path = task.generate(state.ema, 4, seed=0, sampler="ancestral")
    assert ddim.shape == ancestral.shape == (4, 28, 28, 1)
    assert 0.0 <= ddim.min() and ddim.max() <= 1.0
    assert ddim_path.shape[0] == 5 and path.shape[0] == 20  # sample_steps, timesteps
    again, _ = task.generate(state.ema, 4, seed=0, sampler="ddim")
    np.testing.assert_array_equal(ddim, again)  # eta 0: DDIM is deterministic given the seed

    out = io.StringIO()
    grid = bundle.sample({"num_samples": 4, "seed": 1}, out)
    assert grid.endswith("samples/ddim_seed1.png") and "4 samples (ddim)" in out.getvalue()


def test_unet_predicts_noise_of_the_input_shape_with_named_parameters():
    import jax.numpy as jnp
    from test_generative_models import _assert_named

    from dlx.models import get_model

    model = get_model(
        "unet",
        channels=(8, 16),
        attention_levels=(1,),
        time_dim=16,
        groups=4,
        image_shape=(16, 16, 1),
    )
    x = jnp.ones((2, 16, 16, 1))
    variables = jax.jit(model.init)(jax.random.key(0), x, jnp.array([0, 5]))
    _assert_named(variables)
    out = jax.jit(model.apply)(variables, x, jnp.array([3, 7]))
    assert out.shape == x.shape
    # the output conv starts at zero: an untrained model predicts no noise
    assert float(jnp.abs(out).max()) == 0.0
