"""Every registered model: output shapes, exact parameter counts, logical axis names on every
parameter, train/eval behaviour, sharded execution; the fast conv/pool path equals Flax's layers
(values and gradients); receptive fields and summaries by hand."""

from __future__ import annotations

import importlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlx import schema
from dlx.errors import ConfigError
from dlx.models import available, check_config, cnn, get_model, mlp
from dlx.models.cnn import pool2d
from dlx.models.receptive_field import Layer, receptive_fields

# (name, kwargs, input shape, expected parameter count worked out by hand)
CASES = [
    (
        "mlp",
        dict(num_outputs=10, hidden=(32, 16), batch_norm=True),
        (4, 8, 8, 1),
        (64 * 32 + 32) + 2 * 32 + (32 * 16 + 16) + 2 * 16 + (16 * 10 + 10),
    ),
    ("mlp", dict(num_outputs=3, hidden=(), activation="tanh"), (4, 5), 5 * 3 + 3),
    (
        "cnn",
        dict(num_outputs=10, features=(4, 8), kernel_size=3, dense=(16,), batch_norm=True),
        (4, 28, 28, 1),
        # convs followed by batch norm carry no bias: the norm's offset takes its place
        (9 * 1 * 4) + 2 * 4 + (9 * 4 * 8) + 2 * 8 + (7 * 7 * 8 * 16 + 16) + (16 * 10 + 10),
    ),
    (
        "cnn",
        dict(num_outputs=5, features=(4, 8), dense=(16,)),
        (2, 12, 10, 3),  # pools first
        (9 * 3 * 4 + 4) + (9 * 4 * 8 + 8) + (3 * 2 * 8 * 16 + 16) + (16 * 5 + 5),
    ),
    (
        "cnn",
        dict(
            num_outputs=4,
            features=(6,),
            kernel_size=5,
            strides=2,
            padding="VALID",
            pool="avg",
            pool_size=3,
            dense=(),
            activation="gelu",
        ),
        (2, 21, 17, 2),
        # VALID 5x5 stride 2: 21 -> 9, 17 -> 7; 3x3 pool: 3 x 2
        (25 * 2 * 6 + 6) + (3 * 2 * 6 * 4 + 4),
    ),
    (
        "cnn",
        dict(num_outputs=2, features=(3, 3), pool="none", dense=(8,)),
        (2, 6, 6, 1),
        (9 * 1 * 3 + 3) + (9 * 3 * 3 + 3) + (6 * 6 * 3 * 8 + 8) + (8 * 2 + 2),
    ),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(CASES)]


# Sequence models take token ids, generative ones have several outputs or inputs: their shapes,
# counts and axis names are tested in their own files, named here so that a new model family
# cannot go untested.
MODELS_TESTED_ELSEWHERE = {
    "transformer": "test_transformer.py",
    "recurrent": "test_recurrent.py",
    "seq2seq": "test_recurrent.py",
    "autoencoder": "test_generative_models.py",
    "dcgan": "test_generative_models.py",
    "unet": "test_diffusion.py",
    "resnet": "test_resnet.py",
    "vit": "test_vit.py",
    "yolo": "test_detection.py",
    "gcn": "test_graphs.py",
    "word2vec": "test_word2vec.py",
}


def test_every_registered_model_has_a_case():
    import pathlib

    tested_elsewhere = {
        name
        for name, file in MODELS_TESTED_ELSEWHERE.items()
        if (pathlib.Path(__file__).parent / file).exists()
    }
    assert sorted({name for name, *_ in CASES} | tested_elsewhere) == available()


@pytest.mark.parametrize("name, kwargs, shape, expected", CASES, ids=IDS)
def test_shapes_and_parameter_counts(name, kwargs, shape, expected):
    model = get_model(name, **kwargs)
    variables = model.init(jax.random.key(0), jnp.zeros(shape))
    params = nn.meta.unbox(variables["params"])
    assert sum(p.size for p in jax.tree.leaves(params)) == expected
    out = model.apply(nn.meta.unbox(variables), jnp.ones(shape), train=False)
    assert out.shape == (shape[0], kwargs["num_outputs"])
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("name, kwargs, shape, expected", CASES, ids=IDS)
def test_every_parameter_has_logical_axis_names(name, kwargs, shape, expected):
    abstract = jax.eval_shape(get_model(name, **kwargs).init, jax.random.key(0), jnp.zeros(shape))
    specs = nn.get_partition_spec(abstract["params"])
    leaves = jax.tree.leaves(nn.meta.unbox(abstract["params"]))
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    assert len(spec_leaves) == len(leaves)
    for spec, leaf in zip(spec_leaves, leaves):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (spec, leaf.shape)


def test_logical_names_are_the_ones_the_sharding_rules_use():
    abstract = jax.eval_shape(
        get_model("cnn", features=(4,), dense=(8,), batch_norm=True).init,
        jax.random.key(0),
        jnp.zeros((1, 8, 8, 1)),
    )
    specs = nn.get_partition_spec(abstract["params"])
    assert specs["Conv_0"]["kernel"] == P("conv_height", "conv_width", "conv_in", "conv_out")
    assert specs["BatchNorm_0"] == {"scale": P("norm"), "bias": P("norm")}
    assert specs["Dense_0"] == {"kernel": P("embed", "mlp"), "bias": P("mlp")}
    assert specs["head"] == {"kernel": P("mlp", "classes"), "bias": P("classes")}
    abstract = jax.eval_shape(
        get_model("cnn", features=(4,), dense=()).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1))
    )
    assert nn.get_partition_spec(abstract["params"])["Conv_0"]["bias"] == P("conv_out")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_batch_norm_updates_only_in_training_and_dropout_only_in_training(name):
    _, kwargs, shape, _ = next(case for case in CASES if case[0] == name)
    model = get_model(name, **{**kwargs, "dropout": 0.5})
    variables = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros(shape)))
    x = jax.random.normal(jax.random.key(1), shape)
    eval_a = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))
    rngs = {"dropout": jax.random.key(2)}
    train_out, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    assert not np.allclose(train_out, eval_a)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # eval mode leaves the running statistics alone
    _, frozen = model.apply(variables, x, train=False, mutable=["batch_stats"])
    for a, b in zip(before, jax.tree.leaves(frozen["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'cnn'"):
        get_model("cnnn")
    with pytest.raises(ConfigError, match="did you mean 'relu'"):
        get_model("mlp", activation="rlu")
    with pytest.raises(ConfigError, match="cnn.pool='maximum' is not allowed.*'max', 'avg'"):
        get_model("cnn", pool="maximum")
    # From a config the same value is refused before anything is built.
    with pytest.raises(ConfigError, match=r"config.model.padding='same' .*\('SAME', 'VALID'\)"):
        check_config({"name": "cnn", "padding": "same"})
    with pytest.raises(ConfigError, match="mlp.norm='batchnorm'.*did you mean 'batch'"):
        get_model("mlp", norm="batchnorm")


def _refused_values(rule: schema.Rule) -> list:
    """Values `rule` refuses, one per kind of rule that names a set or a bound."""
    if isinstance(rule, schema.OneOf):
        return ["no-such-choice"]
    if isinstance(rule, schema.Int) and rule.low is not None:
        return [rule.low - 1]
    if isinstance(rule, schema.Float) and rule.high is not None:
        return [rule.high + 1.0]
    return []


@pytest.mark.parametrize("name", available())
def test_a_model_built_in_python_is_held_to_the_rules_of_its_config(name):
    """The same bad value is one ConfigError on both paths: from a config before anything is
    built, and from Python when the module is constructed (a research module built by hand)."""
    rules = importlib.import_module(f"dlx.models.{name}").FIELD_RULES
    checked = 0
    for field, rule in rules.items():
        for bad in _refused_values(rule):
            with pytest.raises(ConfigError, match=re.escape(f"config.model.{field}={bad!r} ")):
                check_config({"name": name, field: bad})
            with pytest.raises(ConfigError, match=re.escape(f"{name}.{field}={bad!r} ")):
                get_model(name, **{field: bad})
            checked += 1
    assert checked, f"{name} declares no rule with a set of choices or a bound"


class _FlaxCNN(nn.Module):
    """The CNN written with Flax's own layers, in textbook order (conv -> norm -> act -> pool)."""

    activation: str
    batch_norm: bool

    @nn.compact
    def __call__(self, x, train):
        act = {
            "relu": nn.relu,
            "gelu": nn.gelu,
            "linear": lambda v: v,
            "leaky_relu": lambda v: nn.leaky_relu(v, 0.01),
        }[self.activation]
        for features in (4, 8):
            x = nn.Conv(features, (3, 3), use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.max_pool(act(x), (2, 2), strides=(2, 2))
        x = act(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3, name="head")(x)


def _cross_entropy(logits, one_hot):
    return -(jax.nn.log_softmax(logits) * one_hot).sum(-1).mean()


@pytest.mark.parametrize(
    "activation, batch_norm",
    [
        ("relu", False),
        ("leaky_relu", False),
        ("linear", False),  # pool before bias and activation
        ("gelu", False),
        ("relu", True),  # textbook order
    ],
)
def test_cnn_equals_flax_layers_with_gradients(activation, batch_norm):
    model = cnn.Model(
        num_outputs=3, features=(4, 8), dense=(16,), activation=activation, batch_norm=batch_norm
    )
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 2))
    variables = nn.meta.unbox(model.init(jax.random.key(1), x))
    extra = {k: v for k, v in variables.items() if k != "params"}
    labels = jax.nn.one_hot(jnp.arange(4) % 3, 3)

    def loss(apply, params):
        logits, _ = apply({"params": params, **extra}, x, train=True, mutable=list(extra))
        return _cross_entropy(logits, labels)

    # jitted: eagerly, every op of the forward and backward passes is compiled on its own
    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
    ours, our_grads = value_and_grad(model.apply, variables["params"])
    theirs, their_grads = value_and_grad(
        _FlaxCNN(activation, batch_norm).apply, variables["params"]
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), our_grads, their_grads
    )


@pytest.mark.parametrize("kind, flax_pool", [("max", nn.max_pool), ("avg", nn.avg_pool)])
@pytest.mark.parametrize("size, shape", [(2, (2, 8, 6, 3)), (3, (2, 9, 7, 2)), (2, (1, 7, 7, 2))])
def test_reshape_pool_equals_flax_pool_and_its_gradient(kind, flax_pool, size, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    window = dict(window_shape=(size, size), strides=(size, size), padding="VALID")
    expected = flax_pool(x, **window)
    weights = jax.random.normal(jax.random.key(1), expected.shape)
    np.testing.assert_allclose(pool2d(x, kind, size), expected, rtol=1e-6)
    np.testing.assert_allclose(
        jax.grad(lambda x: jnp.sum(pool2d(x, kind, size) * weights))(x),
        jax.grad(lambda x: jnp.sum(flax_pool(x, **window) * weights))(x),
        rtol=1e-6,
    )


def test_max_pool_gradient_picks_the_first_of_tied_maxima_like_flax():
    x = jnp.array(
        [[0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 2.0, 2.0], [3.0, 1.0, 5.0, 5.0], [3.0, 3.0, 5.0, 5.0]]
    ).reshape(1, 4, 4, 1)
    ours = jax.grad(lambda x: pool2d(x, "max", 2).sum())(x)
    theirs = jax.grad(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)).sum())(x)
    np.testing.assert_array_equal(ours, theirs)
    assert float(ours.sum()) == 4.0  # one element per window


def test_models_run_sharded_and_match_one_device():
    mesh = Mesh(
        np.array(jax.devices()[:8]).reshape(2, 2, 2),
        ("data", "fsdp", "model"),
        axis_types=(AxisType.Auto,) * 3,
    )
    rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "model"),
        ("conv_in", "fsdp"),
        ("conv_out", "model"),
    )
    for name, kwargs, shape in [
        ("cnn", dict(features=(4, 8), dense=(16,), batch_norm=True), (8, 8, 8, 2)),
        ("cnn", dict(features=(4, 8), dense=(16,)), (8, 8, 8, 2)),
        ("mlp", dict(hidden=(16, 8)), (8, 12)),
    ]:
        model = get_model(name, **kwargs)
        x = jax.random.normal(jax.random.key(0), shape)
        variables = model.init(jax.random.key(1), x)
        expected = model.apply(nn.meta.unbox(variables), x, train=True, mutable=["batch_stats"])
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, rules)
        placed = jax.device_put(nn.meta.unbox(variables), shardings)
        x_sharded = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
        assert any(
            len(leaf.sharding.device_set) > 1 and not leaf.sharding.is_fully_replicated
            for leaf in jax.tree.leaves(placed["params"])
        )
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            got = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(  # noqa: B023
                placed, x_sharded
            )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected
        )


def test_receptive_fields_by_hand():
    layers = [
        Layer("conv_a", 3),
        Layer("conv_b", 3),
        Layer("pool", 2, 2, "VALID"),
        Layer("conv_c", 3, 2),
        Layer("dilated", 3, 1, "SAME", dilation=2),
        Layer("valid", 3, 1, "VALID"),
        Layer("padded", 5, 1, 1),
    ]
    fields = receptive_fields(layers, 28)
    # r += (k' - 1) * j, j *= s; SAME: ceil(n / s), VALID: (n - k') // s + 1, pad p: n + 2p - k' + 1
    assert [(f.size, f.jump, f.receptive_field) for f in fields] == [
        (28, 1, 3),
        (28, 1, 5),
        (14, 2, 6),
        (7, 4, 10),
        (7, 4, 26),
        (5, 4, 34),
        (3, 4, 50),
    ]


def test_cnn_summary_matches_the_model():
    model = get_model("cnn", features=(32, 64), dense=(128,))
    text = cnn.summarize(model, (1, 28, 28, 1))
    lines = text.splitlines()
    assert lines[2].split()[:2] == ["conv_0", "(relu)"] and "28x28x32" in lines[2]
    assert lines[3].split() == ["max_pool_0", "14x14x32", "0", "4x4"]
    assert lines[5].split() == ["max_pool_1", "7x7x64", "0", "10x10"]
    assert lines[6].split() == ["flatten", "3136", "0"]
    total = int(lines[-1].split(":")[1].replace(",", ""))
    assert total == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 128 + 128) + (128 * 10 + 10)
    # non-square input, VALID convs with batch norm
    model = get_model("cnn", features=(4,), padding="VALID", batch_norm=True, dense=())
    lines = cnn.summarize(model, (1, 10, 7, 3)).splitlines()
    assert lines[2].split() == ["conv_0", "(bn,", "relu)", "8x5x4", str(9 * 3 * 4 + 2 * 4), "3x3"]
    assert lines[3].split() == ["max_pool_0", "4x2x4", "0", "4x4"]


def test_mlp_summary_matches_the_model():
    lines = mlp.summarize(get_model("mlp", hidden=(256, 256)), (1, 28, 28, 1)).splitlines()
    assert [line.split()[-2:] for line in lines[1:5]] == [
        ["784", "0"],
        ["256", "200,960"],
        ["256", "65,792"],
        ["10", "2,570"],
    ]
    assert lines[-1] == "total parameters: 269,322"


@pytest.mark.parametrize(
    "spec, family",
    [("configs/fashion_resnet.py:test", "resnet"), ("configs/fashion_vit.py:test", "vit")],
)
def test_vision_tasks_count_the_model_flops_that_progress_turns_into_mfu(spec, family):
    import importlib

    from dlx import data
    from dlx.tasks import classification
    from helpers import load_config

    config = load_config(spec)
    task = classification.Task(config, data.info(config.data.name))
    module = importlib.import_module(f"dlx.models.{family}")
    forward = getattr(module, "forward_flops", None) or module.forward_flops_per_example
    expected = 3.0 * forward(task.model, (28, 28, 1))
    assert task.train_flops_per_example() == pytest.approx(expected) and expected > 1e5
