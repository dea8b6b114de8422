"""ResNet (dlx/models/resnet.py) and its blocks (dlx/layers/residual.py): parameter counts
(torchvision's for ResNet-18/50), shapes, receptive fields; the blocks and ResNet-20 match the
PyTorch reference (bench/torch_resnet.py) on the same weights, values and gradients; the fused
batch norm equals the plain one and Flax's; batch statistics over a batch sharded on 8 devices
are the global ones; stochastic depth; batch-norm parameters are not decayed; an end-to-end
run of configs/fashion_resnet.py:test."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import helpers
from dlx.errors import ConfigError
from dlx.layers import residual
from dlx.models import check_config, parameter_counts, resnet
from dlx.models.receptive_field import receptive_fields
from dlx.optim import optimizer as optimizer_lib
from dlx.train.config import DEFAULT_RULES

torch = pytest.importorskip("torch")
from bench import torch_resnet as reference  # noqa: E402

TINY = dict(depth=8, widths=(4, 8, 8))  # CIFAR style, one basic block per stage


def _random_variables(model: nn.Module, *args, seed: int = 0, **kwargs) -> dict:
    """`model`'s variables with every value random: kernels ~ N(0, 1/fan_in), BN scales and
    running variances around 1, biases and running means around 0."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if leaf.ndim > 1:
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        center = 1.0 if path[-1].key in ("scale", "var") else 0.0
        return center + rng.uniform(-0.5, 0.5, leaf.shape)

    init = functools.partial(model.init, **kwargs)
    shapes = nn.meta.unbox(jax.eval_shape(init, jax.random.key(0), *args))
    return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), shapes)


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------
# Architecture
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, shape, expected",
    [
        (dict(depth=18, num_outputs=1000), (1, 224, 224, 3), 11_689_512),  # torchvision
        (dict(depth=50, num_outputs=1000), (1, 224, 224, 3), 25_557_032),  # torchvision
        (dict(depth=20), (1, 32, 32, 3), 269_722),  # He et al. 2016 "0.27M" (option A)
        (dict(depth=20), (1, 28, 28, 1), 269_434),
        (dict(depth=20, shortcut="projection"), (1, 28, 28, 1), 272_186),
        (dict(depth=56), (1, 28, 28, 1), 852_730),  # "0.85M"
    ],
)
def test_parameter_counts(kwargs, shape, expected):
    counts = parameter_counts(resnet.Model(**kwargs), shape)  # shapes only, nothing allocated
    assert sum(counts.values()) == expected


def test_reference_networks_have_torchvision_counts():
    for depth, expected in [(18, 11_689_512), (50, 25_557_032)]:
        net = reference.from_dlx_model(resnet.Model(depth=depth, num_outputs=1000), 3)
        assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize(
    "kwargs, shape, feature_shape",
    [
        (dict(depth=20), (2, 28, 28, 1), (2, 7, 7, 64)),
        (dict(depth=18, num_outputs=7), (2, 32, 32, 3), (2, 1, 1, 512)),
        (dict(depth=50, num_outputs=7, width=0.25), (2, 64, 64, 3), (2, 2, 2, 512)),
        (dict(depth=18, stem="cifar", num_outputs=3), (2, 28, 28, 1), (2, 4, 4, 512)),
    ],
)
def test_shapes_names_and_batch_stats(kwargs, shape, feature_shape):
    model = resnet.Model(**kwargs)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
    assert set(abstract) == {"params", "batch_stats"}
    head = nn.meta.unbox(abstract["params"])["head"]["kernel"]
    assert head.shape == (feature_shape[-1], model.num_outputs)
    out = jax.eval_shape(model.apply, nn.meta.unbox(abstract), jnp.zeros(shape))
    assert out.shape == (shape[0], model.num_outputs)
    specs = jax.tree.leaves(
        nn.get_partition_spec(abstract["params"]), is_leaf=lambda x: isinstance(x, P)
    )
    assert set(specs) >= {P("conv_height", "conv_width", "conv_in", "conv_out"), P("norm")}
    # the last stage's map: the receptive-field layers give the same size
    stack = resnet.layer_stack(model)
    assert receptive_fields(stack, shape[1])[-1].size == feature_shape[1]


def test_receptive_fields():
    fields = receptive_fields(resnet.layer_stack(resnet.Model(depth=20)), 28)
    assert [f.size for f in fields] == [28] * 7 + [14] * 6 + [7] * 6
    # by hand: the stem's 3; six 3x3 convs at jump 1 (+2 each); each stride-2 conv adds at the
    # jump before it (+2, +4), the five after it at the doubled jump (+4, +8 each)
    assert fields[-1].receptive_field == 3 + 6 * 2 + (2 + 5 * 4) + (4 + 5 * 8) == 81
    imagenet = receptive_fields(resnet.layer_stack(resnet.Model(depth=18)), 224)
    assert (imagenet[-1].size, imagenet[-1].receptive_field) == (7, 435)


def test_bad_depths_widths_and_fields_are_config_errors():
    with pytest.raises(ConfigError, match="6n\\+2"):
        resnet.Model(depth=21)
    with pytest.raises(ConfigError, match="not an ImageNet-style"):
        resnet.Model(depth=20, style="imagenet")
    with pytest.raises(ConfigError, match="one width per stage"):
        resnet.Model(depth=20, widths=(16, 32))
    with pytest.raises(ConfigError, match="model.formulation"):
        check_config({"name": "resnet", "formulation": "fast"})


# ------------------------------------------------------------------------------------------------
# Parity with PyTorch
# ------------------------------------------------------------------------------------------------
BASIC = (residual.BasicBlock, reference.BasicBlock, 4)
BOTTLENECK = (residual.Bottleneck, reference.Bottleneck, 6)
# (block, its fields, train, formulation): eval mode normalises with the running averages, the
# same ops in either formulation; both formulations are compared whole in
# test_fused_and_plain_resnets_train_alike.
BLOCKS = [
    (BASIC, dict(features=8, strides=2, shortcut="pad"), True, "fused"),
    (BASIC, dict(features=8, strides=2, shortcut="pad"), True, "plain"),
    (BASIC, dict(features=8, strides=2, shortcut="projection"), True, "fused"),
    (BASIC, dict(features=4, strides=1, shortcut="pad"), False, "fused"),
    (BOTTLENECK, dict(features=3, strides=2, shortcut="projection"), True, "fused"),
    (BOTTLENECK, dict(features=3, strides=2, shortcut="projection"), False, "plain"),
]


@pytest.mark.parametrize(
    "block_classes, fields, train, formulation",
    BLOCKS,
    ids=[
        f"{b[0][0].__name__}-{b[1]['shortcut']}-{'train' if b[2] else 'eval'}-{b[3]}"
        for b in BLOCKS
    ],
)
def test_blocks_match_pytorch(block_classes, fields, train, formulation):
    ours, theirs, channels = block_classes
    block = ours(**fields, formulation=formulation)
    x = jax.random.normal(jax.random.key(1), (3, 6, 6, channels)) * 2 + 0.3
    variables = _random_variables(block, x, train=False)
    net = theirs(channels, fields["features"], fields["strides"], fields["shortcut"])
    reference.load_dlx(net, variables["params"], variables["batch_stats"])
    net.train(train)
    counts = {}  # values per channel each batch norm normalises

    def count(name_t, module, args, out):
        counts[name_t] = args[0].numel() // args[0].shape[1]

    for module_name, module in net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(functools.partial(count, module_name))
    x_t = _nchw(x).requires_grad_()
    out_t = net(x_t)
    g = np.random.default_rng(2).normal(size=out_t.shape).astype(np.float32)
    (out_t * torch.from_numpy(g)).sum().backward()

    def forward(params, x):
        out, state = block.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=train,
            mutable=["batch_stats"],
        )
        return out, state["batch_stats"]

    @jax.jit
    def value_and_grads(params, x, g):
        out, vjp, stats = jax.vjp(forward, params, x, has_aux=True)
        return out, stats, *vjp(g)

    out, stats, d_params, dx = value_and_grads(
        variables["params"], x, jnp.asarray(g).transpose(0, 2, 3, 1)
    )
    np.testing.assert_allclose(out, _nhwc(out_t), atol=1e-5)
    np.testing.assert_allclose(dx, _nhwc(x_t.grad), atol=1e-5)
    torch_params = dict(net.named_parameters())
    for path, grad in jax.tree_util.tree_flatten_with_path(d_params)[0]:
        name_t = reference.dlx_to_torch_name(tuple(k.key for k in path))
        expected = torch_params[name_t].grad.numpy()
        expected = expected.transpose(2, 3, 1, 0) if expected.ndim == 4 else expected
        # float32 sums over the batch, gradients up to ~20: a few ulps of relative error
        np.testing.assert_allclose(grad, expected, atol=2e-5, rtol=4e-6, err_msg=name_t)
    buffers = dict(net.named_buffers())
    old_stats = variables["batch_stats"]
    for path, value in jax.tree_util.tree_flatten_with_path(stats)[0]:
        keys = tuple(k.key for k in path)
        name_t = reference.dlx_to_torch_name(keys)
        expected = buffers[name_t].numpy()
        if train and keys[-1] == "var":  # PyTorch averages the unbiased variance, n / (n - 1)
            n = counts[name_t.rsplit(".", 1)[0]]
            old = old_stats[keys[0]]["var"]
            expected = 0.9 * old + (expected - 0.9 * old) * (n - 1) / n
        np.testing.assert_allclose(value, expected, atol=1e-5, err_msg=name_t)


def test_resnet20_matches_pytorch():
    model = resnet.Model(depth=20, formulation="fused")
    x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
    variables = _random_variables(model, x)
    net = reference.from_dlx_model(model, in_channels=1)
    reference.load_dlx(net, variables["params"], variables["batch_stats"])
    apply = jax.jit(
        functools.partial(model.apply, mutable=["batch_stats"]), static_argnames="train"
    )
    for train in (False, True):
        net.train(train)
        expected = net(_nchw(x)).detach().numpy()
        got = apply(variables, x, train=train)[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Batch norm: the fused formulation, Flax's, and across devices
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, True)])
def test_batch_norm_formulations_equal_flax(relu, with_residual):
    """Values, gradients (input, scale, bias, residual) and running averages of both
    formulations equal nn.BatchNorm's (followed by the same add and ReLU)."""
    x = jax.random.normal(jax.random.key(0), (6, 5, 4, 8)) * 3 + 1
    r = jax.random.normal(jax.random.key(1), x.shape) if with_residual else None
    g = jax.random.normal(jax.random.key(2), x.shape)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    variables = _random_variables(flax_bn, x)

    def flax_forward(v, x, r):
        y, state = flax_bn.apply(v, x, mutable=["batch_stats"])
        y = y if r is None else y + r
        return (jnp.maximum(y, 0) if relu else y), state

    results = {}
    for name, forward in [
        ("flax", flax_forward),
        *(
            (
                f,
                lambda v, x, r, f=f: residual.BatchNorm(formulation=f).apply(
                    v, x, train=True, residual=r, relu=relu, mutable=["batch_stats"]
                ),
            )
            for f in ("fused", "plain")
        ),
    ]:

        @jax.jit
        def value_and_grads(v, x, r, forward=forward):
            y, vjp, state = jax.vjp(forward, v, x, r, has_aux=True)
            return y, state, vjp(g)

        results[name] = value_and_grads(variables, x, r)
    for name in ("fused", "plain"):
        for a, b in zip(jax.tree.leaves(results["flax"]), jax.tree.leaves(results[name])):
            np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-5, err_msg=name)


def test_fused_and_plain_resnets_train_alike():
    """A train step's loss, gradients and new batch statistics, and eval outputs, are the same
    with either formulation (stochastic depth on, same random stream)."""
    x = jax.random.uniform(jax.random.key(0), (8, 12, 12, 1))
    labels = jnp.arange(8) % 10
    results = []
    for formulation in ("fused", "plain"):
        model = resnet.Model(**TINY, stochastic_depth=0.5, formulation=formulation)
        variables = _random_variables(model, x)

        @jax.jit
        def step(variables, x, model=model):
            def loss(params):
                logits, state = model.apply(
                    {**variables, "params": params},
                    x,
                    train=True,
                    rngs={"dropout": jax.random.key(7)},
                    mutable=["batch_stats"],
                )
                one_hot = jax.nn.one_hot(labels, 10)
                return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * one_hot, -1)), state

            (value, state), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
            return value, grads, state, model.apply(variables, x)

        results.append(step(variables, x))
    for a, b in zip(*(jax.tree.leaves(r) for r in results)):
        np.testing.assert_allclose(b, a, atol=2e-5, rtol=1e-4)


def test_batch_statistics_are_global_over_a_sharded_batch():
    """The same batch on 8 devices (batch axis sharded, the runner's logical rules) gives the
    outputs, gradients and running averages of one device: the statistics are over the global
    batch, which per-device statistics would not be."""
    mesh = Mesh(
        np.array(jax.devices()[:8]).reshape(8, 1, 1),
        ("data", "fsdp", "model"),
        axis_types=(AxisType.Auto,) * 3,
    )
    model = resnet.Model(**TINY, formulation="fused")
    # rows differ per device: per-device statistics would differ from the global ones
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1)) * jnp.arange(16)[:, None, None, None]
    variables = _random_variables(model, x)

    def step(variables, x):
        def loss(params):
            logits, state = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(logits**2), (logits, state)

        return jax.grad(loss, has_aux=True)(variables["params"])

    expected = jax.jit(step)(variables, x)
    x_sharded = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = jax.jit(step)(variables, x_sharded)
    logits = got[1][0]
    assert len(logits.sharding.device_set) == 8 and not logits.sharding.is_fully_replicated
    # the sharded sums add in another order: errors scale with the largest values (~5), so an
    # element near 0 carries an absolute error of a few 1e-6 to 1e-5
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(b, a, atol=4e-5, rtol=2e-4)
    # the stem's running mean, worked out in numpy: the global batch's, not one device's rows
    kernel, old = variables["params"]["stem"]["conv"]["kernel"], variables["batch_stats"]
    padded = np.pad(np.asarray(x)[..., 0], ((0, 0), (1, 1), (1, 1)))

    def running_mean(rows):
        taps = [padded[rows, i : i + 8, j : j + 8].mean() for i in range(3) for j in range(3)]
        batch_mean = np.tensordot(np.array(taps), kernel.reshape(9, -1), 1)
        return 0.9 * old["stem"]["bn"]["mean"] + 0.1 * batch_mean

    stem_mean = got[1][1]["batch_stats"]["stem"]["bn"]["mean"]
    np.testing.assert_allclose(stem_mean, running_mean(slice(None)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stem_mean, running_mean(slice(0, 2)), atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Stochastic depth, weight decay, end to end
# ------------------------------------------------------------------------------------------------
def test_drop_path_drops_whole_examples_and_keeps_the_expectation():
    x = jnp.ones((4000, 3, 3, 2))
    y = residual.drop_path(x, 0.25, jax.random.key(0))
    per_example = y.reshape(4000, -1)
    assert np.all(per_example == per_example[:, :1])  # one decision per example
    assert set(np.unique(per_example).tolist()) == {0.0, float(np.float32(1 / 0.75))}
    assert abs(float((per_example[:, 0] == 0).mean()) - 0.25) < 0.03
    assert abs(float(y.mean()) - 1.0) < 0.05
    assert not np.array_equal(y, residual.drop_path(x, 0.25, jax.random.key(1)))


def test_stochastic_depth_only_in_training_with_rates_rising_to_the_last_block():
    model = resnet.Model(depth=14, widths=(4, 8, 8), stochastic_depth=0.4)
    x = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1))
    variables = _random_variables(model, x)
    plain = resnet.Model(depth=14, widths=(4, 8, 8))
    apply = jax.jit(
        lambda m, key, train: m.apply(
            variables, x, train=train, rngs={"dropout": key}, mutable=["batch_stats"]
        )[0],
        static_argnums=(0, 2),
    )
    key = jax.random.key(1)
    np.testing.assert_array_equal(apply(model, key, False), apply(plain, key, False))
    a, b = apply(model, key, True), apply(model, jax.random.key(2), True)
    assert not np.allclose(a, b)
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, residual._Block) and context.method_name == "__call__":
            rates.append(context.module.drop_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(model.apply, variables, x)
    np.testing.assert_allclose(rates, np.linspace(0, 0.4, 6))


def test_batch_norm_scales_and_biases_are_not_decayed():
    config = helpers.load_config("configs/fashion_resnet.py:test")
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    shapes = jax.eval_shape(resnet.Model(**TINY).init, jax.random.key(0), jnp.ones((2, 8, 8, 1)))
    shapes = nn.meta.unbox(shapes["params"])
    params = {  # the paths the decay mask sees in a ResNet, a few of them
        name: jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), shapes[name])
        for name in ("stage2_block1", "head")
    }
    tx = optimizer_lib.build_optimizer(config.optimizer, 100)
    zero = jax.tree.map(np.zeros_like, params)
    updates = jax.jit(lambda p: tx.update(zero, tx.init(p), p)[0])(params)
    block = updates["stage2_block1"]
    assert config.optimizer.weight_decay > 0
    assert np.all(block["bn1"]["scale"] == 0) and np.all(block["bn2"]["bias"] == 0)
    assert np.all(updates["head"]["bias"] == 0)
    decayed = -config.optimizer.learning_rate * config.optimizer.weight_decay
    np.testing.assert_allclose(
        block["conv1"]["kernel"], decayed * params["stage2_block1"]["conv1"]["kernel"], rtol=1e-6
    )


def test_fashion_resnet_trains_end_to_end(tmp_path):
    summary = helpers.train("configs/fashion_resnet.py:test", tmp_path)
    losses = helpers.train_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(losses.values())))
    assert summary["steps"] == 6 and "accuracy" in helpers.eval_records(tmp_path)[-1]
    table = (tmp_path / "model_summary.txt").read_text()
    assert "stage3_block1/conv2" in table and "receptive field" in table
    assert "batch_stats" in table
