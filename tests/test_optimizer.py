import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlx.errors import ConfigError
from dlx.optim import optimizer

TOTAL_STEPS = 100


def _cfg(**overrides):
    cfg = optimizer.default_config()
    cfg.update(overrides)
    return cfg


def _params():
    return {
        "Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([1.0, -1.0])},
        "LayerNorm_0": {"scale": jnp.array([2.0, 0.5])},
        "head": {"kernel": jnp.array([[-1.5], [2.5]])},
    }


_CURVATURE = {
    "Dense_0": {"kernel": 1.0, "bias": 2.0},
    "LayerNorm_0": {"scale": 3.0},
    "head": {"kernel": 0.5},
}


def _quadratic(params):
    terms = jax.tree.map(lambda w, a: 0.5 * a * jnp.sum(jnp.square(w - 0.25)), params, _CURVATURE)
    return sum(jax.tree.leaves(terms))


def _run(tx, params, steps, grad_fn=jax.grad(_quadratic)):  # noqa: B008
    state = tx.init(params)
    trajectory = []
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return params, trajectory


def _zero_grads(params):
    return jax.tree.map(jnp.zeros_like, params)


# Each optimizer with the learning rate that suits it, and the optax alias it must reproduce.
CASES = {
    "sgd": (dict(learning_rate=0.1), lambda: optax.sgd(0.1)),
    "momentum": (dict(learning_rate=0.05, momentum=0.8), lambda: optax.sgd(0.05, momentum=0.8)),
    "nesterov": (
        dict(learning_rate=0.05, momentum=0.8, nesterov=True),
        lambda: optax.sgd(0.05, momentum=0.8, nesterov=True),
    ),
    "rmsprop": (dict(learning_rate=0.02, rho=0.95), lambda: optax.rmsprop(0.02, decay=0.95)),
    "adagrad": (
        dict(learning_rate=0.3, initial_accumulator_value=0.2),
        lambda: optax.adagrad(0.3, initial_accumulator_value=0.2, eps=1e-8),
    ),
    "adadelta": (
        dict(learning_rate=10.0, rho=0.9, eps=1e-6),
        lambda: optax.adadelta(10.0, rho=0.9, eps=1e-6),
    ),
    "adam": (dict(learning_rate=0.05, b1=0.8, b2=0.99), lambda: optax.adam(0.05, b1=0.8, b2=0.99)),
    "adamw": (
        dict(learning_rate=0.05, weight_decay=0.01, weight_decay_exclude=""),
        lambda: optax.adamw(0.05, weight_decay=0.01),
    ),
    "nadam": (dict(learning_rate=0.05, eps=1e-7), lambda: optax.nadam(0.05, eps=1e-7)),
}


def _case_cfg(case):
    fields, _ = CASES[case]
    name = "momentum" if case == "nesterov" else case
    return _cfg(name=name, **fields)


@pytest.mark.parametrize("case", CASES)
def test_matches_optax_reference(case):
    ours = optimizer.build_optimizer(_case_cfg(case), TOTAL_STEPS)
    reference = CASES[case][1]()
    _, got = _run(ours, _params(), 5)
    _, want = _run(reference, _params(), 5)
    for got_step, want_step in zip(got, want):
        jax.tree.map(np.testing.assert_array_equal, got_step, want_step)


def test_adamw_matches_optax_with_the_same_mask():
    cfg = _cfg(name="adamw", learning_rate=0.05, weight_decay=0.1)
    reference = optax.adamw(
        0.05,
        weight_decay=0.1,
        mask=lambda p: jax.tree_util.tree_map_with_path(
            lambda path, _: path[-1].key not in ("bias", "scale"), p
        ),
    )
    _, got = _run(optimizer.build_optimizer(cfg, TOTAL_STEPS), _params(), 5)
    _, want = _run(reference, _params(), 5)
    jax.tree.map(np.testing.assert_array_equal, got[-1], want[-1])


@pytest.mark.parametrize("case", CASES)
def test_reduces_a_quadratic_loss(case):
    tx = optimizer.build_optimizer(_case_cfg(case), TOTAL_STEPS)
    final, _ = _run(tx, _params(), TOTAL_STEPS)
    assert _quadratic(final) < 0.1 * _quadratic(_params())


def test_runs_under_jit():
    tx = optimizer.build_optimizer(
        _cfg(
            name="adamw",
            weight_decay=0.1,
            clip_global_norm=1.0,
            frozen="head/.*",
            lr_multipliers=(("LayerNorm_0/.*", 0.5),),
            schedule="warmup_cosine",
            warmup_steps=10,
        ),
        TOTAL_STEPS,
    )
    params = _params()
    state = jax.jit(tx.init)(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(_quadratic)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(20):
        params, state = step(params, state)
    assert _quadratic(params) < _quadratic(_params())
    np.testing.assert_array_equal(params["head"]["kernel"], _params()["head"]["kernel"])


def test_gradient_step_reports_the_global_gradient_norm_and_adam_update():
    from dlx.optim.state import ModelState, gradient_step

    def loss_fn(params, model_state, batch, rng):
        return batch["scale"] * _quadratic(params), ({}, model_state)

    tx = optimizer.build_optimizer(_cfg(name="adamw", weight_decay=0.1), TOTAL_STEPS)
    state = ModelState.create(apply_fn=None, variables={"params": _params()}, tx=tx)
    step = jax.jit(lambda state, batch: gradient_step(state, batch, jax.random.PRNGKey(0), loss_fn))
    new_state, metrics = step(state, {"scale": jnp.float32(1.0)})

    grads = jax.grad(_quadratic)(_params())
    expected_norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], expected_norm, rtol=1e-6)
    updates, _ = tx.update(grads, tx.init(_params()), _params())
    expected = optax.apply_updates(_params(), updates)
    for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6)

    _, metrics = step(state, {"scale": jnp.float32(jnp.inf)})  # the NaN guard reads this norm
    assert not np.isfinite(metrics["grad_norm"])


def test_gradient_accumulation_makes_the_full_batch_update():
    """Micro-batches of a mean loss average to the full batch's gradient, so the update, loss
    and gradient norm match one step on the whole batch; the batch-statistics-style model state
    is threaded through the micro-batches in order."""
    from dlx.optim.state import ModelState, gradient_step

    def loss_fn(params, model_state, batch, rng):
        pred = batch["x"] @ params["w"] + params["b"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, (
            {"mae": jnp.mean(jnp.abs(pred - batch["y"]))},
            {"seen": model_state["seen"] + batch["x"].shape[0]},
        )

    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.standard_normal((16, 3)), jnp.float32),
        "y": jnp.asarray(rng.standard_normal((16, 2)), jnp.float32),
    }
    variables = {"params": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "seen": jnp.int32(0)}
    tx = optimizer.build_optimizer(_cfg(name="adam"), TOTAL_STEPS)
    state = ModelState.create(apply_fn=None, variables=variables, tx=tx)
    rng = jax.random.PRNGKey(0)
    results = {
        k: jax.jit(lambda s, b, k=k: gradient_step(s, b, rng, loss_fn, k))(state, batch)
        for k in (1, 4)
    }
    (whole, whole_metrics), (accumulated, accumulated_metrics) = results[1], results[4]
    for got, want in zip(jax.tree.leaves(accumulated.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(whole.params["w"], variables["params"]["w"])
    for name in ("loss", "mae", "grad_norm"):
        np.testing.assert_allclose(accumulated_metrics[name], whole_metrics[name], rtol=1e-5)
    assert int(accumulated.model_state["seen"]) == int(whole.model_state["seen"]) == 16
    with pytest.raises(ValueError, match="does not split into 5 micro-batches"):
        gradient_step(state, batch, rng, loss_fn, 5)


# -- schedules --------------------------------------------------------------------------------


def _lr(step, **fields):
    return optimizer.learning_rate_at(_cfg(learning_rate=0.1, **fields), TOTAL_STEPS, step)


def test_constant_schedule():
    assert [_lr(s) for s in (0, 50, 100)] == pytest.approx([0.1, 0.1, 0.1])


def test_step_schedule_multiplies_at_each_boundary():
    fields = dict(schedule="step", boundaries=(0.5, 0.75), decay_rate=0.1)
    got = [_lr(s, **fields) for s in (0, 49, 50, 74, 75, 100)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule():
    fields = dict(schedule="cosine", end_lr_factor=0.1)
    assert _lr(0, **fields) == pytest.approx(0.1)
    assert _lr(50, **fields) == pytest.approx((0.1 + 0.01) / 2)
    assert _lr(100, **fields) == pytest.approx(0.01)


def test_warmup_cosine_schedule():
    fields = dict(schedule="warmup_cosine", warmup_steps=20, end_lr_factor=0.0)
    assert _lr(0, **fields) == pytest.approx(0.0)
    assert _lr(10, **fields) == pytest.approx(0.05)
    assert _lr(20, **fields) == pytest.approx(0.1)
    assert _lr(60, **fields) == pytest.approx(0.05)  # halfway through the decay
    assert _lr(100, **fields) == pytest.approx(0.0, abs=1e-9)


def test_linear_schedule_with_and_without_warmup():
    assert _lr(50, schedule="linear") == pytest.approx(0.05)
    assert _lr(100, schedule="linear", end_lr_factor=0.2) == pytest.approx(0.02)
    fields = dict(schedule="linear", warmup_steps=20)
    assert [_lr(s, **fields) for s in (5, 20, 60, 100)] == pytest.approx([0.025, 0.1, 0.05, 0.0])


def test_schedule_drives_the_update_size():
    cfg = _cfg(name="sgd", learning_rate=0.1, schedule="linear", warmup_steps=10)
    tx = optimizer.build_optimizer(cfg, TOTAL_STEPS)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for step in range(12):
        updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        expected = optimizer.learning_rate_at(cfg, TOTAL_STEPS, step)
        np.testing.assert_allclose(updates["w"], -expected, rtol=1e-6)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(schedule="step", boundaries=(50, 75)), "fractions"),
        (dict(schedule="step", boundaries=(0.75, 0.5)), "increasing"),
        (dict(schedule="step", boundaries=(0.05,), warmup_steps=10), "warmup"),
        (dict(warmup_steps=100), "warmup_steps"),
        (dict(schedule="warmup_cosine", warmup_steps=0), "warmup_steps > 0"),
    ],
)
def test_bad_schedule_settings(fields, message):
    with pytest.raises(ConfigError, match=message):
        optimizer.build_schedule(_cfg(**fields), TOTAL_STEPS)


# -- clipping, weight decay, freezing, multipliers --------------------------------------------


def test_clip_by_global_norm_bounds_the_update():
    tx = optimizer.build_optimizer(
        _cfg(name="sgd", learning_rate=0.1, clip_global_norm=1.0), TOTAL_STEPS
    )
    params = _params()
    big = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    updates, _ = tx.update(big, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.1, rel=1e-5)
    small = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    updates, _ = tx.update(small, tx.init(params), params)
    jax.tree.map(lambda u: np.testing.assert_allclose(u, -0.001, rtol=1e-6), updates)


def test_clip_value_clips_each_element():
    tx = optimizer.build_optimizer(_cfg(name="sgd", learning_rate=1.0, clip_value=0.5), TOTAL_STEPS)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.array([-3.0, -0.2, 0.1, 7.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [0.5, 0.2, -0.1, -0.5])


def test_value_clip_comes_before_global_norm_clip():
    cfg = _cfg(name="sgd", learning_rate=1.0, clip_value=1.0, clip_global_norm=1.0)
    tx = optimizer.build_optimizer(cfg, TOTAL_STEPS)
    params = {"w": jnp.zeros(2)}
    updates, _ = tx.update({"w": jnp.array([10.0, 0.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-1.0, 0.0])  # value clip already made norm 1


@pytest.mark.parametrize("name", ["sgd", "adam", "momentum"])
def test_weight_decay_shrinks_kernels_but_not_biases_or_norms(name):
    lr, wd = 0.1, 0.01
    tx = optimizer.build_optimizer(_cfg(name=name, learning_rate=lr, weight_decay=wd), TOTAL_STEPS)
    params = _params()
    updates, _ = tx.update(_zero_grads(params), tx.init(params), params)
    np.testing.assert_allclose(
        updates["Dense_0"]["kernel"], -lr * wd * params["Dense_0"]["kernel"], rtol=1e-6
    )
    np.testing.assert_allclose(
        updates["head"]["kernel"], -lr * wd * params["head"]["kernel"], rtol=1e-6
    )
    np.testing.assert_array_equal(updates["Dense_0"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["LayerNorm_0"]["scale"], 0.0)


def test_weight_decay_exclude_empty_decays_everything():
    tx = optimizer.build_optimizer(
        _cfg(name="sgd", learning_rate=1.0, weight_decay=0.5, weight_decay_exclude=""), TOTAL_STEPS
    )
    params = _params()
    updates, _ = tx.update(_zero_grads(params), tx.init(params), params)
    jax.tree.map(lambda u, p: np.testing.assert_allclose(u, -0.5 * p), updates, params)


def test_frozen_parameters_never_change():
    cfg = _cfg(name="adam", learning_rate=0.1, weight_decay=0.1, frozen="Dense_0/.*")
    tx = optimizer.build_optimizer(cfg, TOTAL_STEPS)
    final, _ = _run(tx, _params(), 10)
    jax.tree.map(np.testing.assert_array_equal, final["Dense_0"], _params()["Dense_0"])
    assert not np.allclose(final["head"]["kernel"], _params()["head"]["kernel"])
    # Frozen parameters carry no Adam moments.
    state = tx.init(_params())
    n_state_arrays = len([x for x in jax.tree.leaves(state) if np.ndim(x) > 0])
    assert n_state_arrays == 2 * 2  # mu and nu of LayerNorm_0/scale and head/kernel


def test_frozen_rule_that_matches_nothing_fails_loudly():
    tx = optimizer.build_optimizer(_cfg(frozen="Dense_9/.*"), TOTAL_STEPS)
    with pytest.raises(ConfigError, match="Dense_9"):
        tx.init(_params())


def test_lr_multipliers_scale_updates():
    base = optimizer.build_optimizer(_cfg(name="adam"), TOTAL_STEPS)
    scaled = optimizer.build_optimizer(
        _cfg(name="adam", lr_multipliers=[("head/.*", 0.1), (".*/bias", 0.0)]), TOTAL_STEPS
    )
    params = _params()
    grads = jax.grad(_quadratic)(params)
    want, _ = base.update(grads, base.init(params), params)
    got, _ = scaled.update(grads, scaled.init(params), params)
    np.testing.assert_allclose(got["head"]["kernel"], 0.1 * want["head"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(got["Dense_0"]["bias"], 0.0)
    np.testing.assert_array_equal(got["Dense_0"]["kernel"], want["Dense_0"]["kernel"])


def test_lr_multiplier_that_matches_nothing_fails_loudly():
    tx = optimizer.build_optimizer(_cfg(lr_multipliers=(("haed/.*", 0.1),)), TOTAL_STEPS)
    with pytest.raises(ConfigError, match="haed"):
        tx.init(_params())


def test_params_for_mask_checks_rules_at_build_time_on_boxed_abstract_params():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
            return nn.Dense(2, kernel_init=init)(x)

    abstract = jax.eval_shape(Model().init, jax.random.key(0), jnp.ones((1, 3)))["params"]
    optimizer.build_optimizer(_cfg(frozen="Dense_0/bias"), TOTAL_STEPS, params_for_mask=abstract)
    with pytest.raises(ConfigError, match="Dense_1"):
        optimizer.build_optimizer(_cfg(frozen="Dense_1/.*"), TOTAL_STEPS, params_for_mask=abstract)


# -- config surface and errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, suggestion",
    [
        ("name", "adamm", "adam"),
        ("name", "sdg", "sgd"),
        ("schedule", "cosin", "cosine"),
        ("schedule", "warmup-cosine", "warmup_cosine"),
    ],
)
def test_unknown_names_suggest_the_nearest(field, value, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        optimizer.build_optimizer(_cfg(**{field: value}), TOTAL_STEPS)


def test_check_config_needs_no_run_length():
    optimizer.check_config(_cfg(schedule="warmup_cosine", warmup_steps=10_000))
    with pytest.raises(ConfigError, match="fewer than"):
        optimizer.build_optimizer(_cfg(schedule="warmup_cosine", warmup_steps=10_000), 100)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(name="adamm"), "did you mean 'adam'"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(frozen="(Dense"), "regular expression"),
        (dict(lr_multipliers=(("[head", 0.1),)), "regular expression"),
        (dict(schedule="step", boundaries=(0.5, 1.5)), "fractions"),
    ],
)
def test_check_config_rejects(fields, message):
    with pytest.raises(ConfigError, match=message):
        optimizer.check_config(_cfg(**fields))


def test_default_config_has_every_field_and_builds_every_combination():
    cfg = optimizer.default_config()
    for name in optimizer.OPTIMIZERS:
        for schedule in optimizer.SCHEDULES:
            cfg.name, cfg.schedule = name, schedule
            cfg.warmup_steps = 10 if schedule == "warmup_cosine" else 0
            tx = optimizer.build_optimizer(cfg, TOTAL_STEPS)
            updates, _ = tx.update(_params(), tx.init(_params()), _params())
            assert jax.tree.structure(updates) == jax.tree.structure(_params())
            assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# -- coupled penalties ------------------------------------------------------------------------


def test_regularization_penalty_by_hand():
    params = _params()
    # Non-excluded: Dense_0/kernel (|.| sum 6.5, sq sum 14.25), head/kernel (4.0, 8.5).
    assert float(optimizer.regularization_penalty(params, l1=0.1, l2=0.0)) == pytest.approx(
        0.1 * 10.5
    )
    assert float(optimizer.regularization_penalty(params, l1=0.0, l2=0.2)) == pytest.approx(
        0.1 * 22.75
    )
    everything = optimizer.regularization_penalty(params, l1=1.0, l2=0.0, exclude="")
    assert float(everything) == pytest.approx(10.5 + 2.0 + 2.5)
    assert float(optimizer.regularization_penalty(params, 0.0, 0.0)) == 0.0


def test_regularization_penalty_gradient_is_coupled_l2():
    params = _params()
    grads = jax.grad(lambda p: optimizer.regularization_penalty(p, 0.0, 0.5))(params)
    np.testing.assert_allclose(grads["head"]["kernel"], 0.5 * params["head"]["kernel"])
    np.testing.assert_array_equal(grads["Dense_0"]["bias"], 0.0)


def test_frozen_and_lr_multiplier_rules_work_through_the_runner():
    """The runner shards the optimizer state by the logical names the params carry, also under
    `multi_transform` (frozen) and the multiplier rules: the frozen head never moves, and the
    state has no Adam moments for it."""
    from configs.digits_mlp import get_config
    from dlx.train import loop

    config = get_config()
    config.update(num_epochs=0.0, train_steps=3, progress_bar=False)
    config.optimizer.update(
        frozen="head/.*", weight_decay=0.01, lr_multipliers=(("Dense_0/.*", 0.5),)
    )
    run = loop.prepare_run(config)
    state = loop.init_state(run)
    before = jax.device_get(state.params)
    step = loop.compile_steps(run)
    batch = run.task.source("train", train=True).read_rows(np.arange(64))
    with loop._tracing_context(run.mesh, config):
        for i in range(3):
            state, metrics = step(state, batch, np.int32(i))
    after = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, after["head"], before["head"])
    assert not np.allclose(after["Dense_0"]["kernel"], before["Dense_0"]["kernel"])
    assert np.isfinite(metrics["loss"])
