"""Every registered model: output shapes, exact parameter counts, logical axis names on every
parameter, train/eval behaviour; the fast pooling equals Flax's; receptive fields by hand."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.models import available, get_model
from dlx.models.cnn import pool2d
from dlx.models.receptive_field import Layer, receptive_fields

# name -> (kwargs, input shape, expected parameter count worked out by hand)
CASES = {
    "mlp": (dict(num_outputs=10, hidden=(32, 16), batch_norm=True),
            (4, 8, 8, 1),
            (64 * 32 + 32) + 2 * 32 + (32 * 16 + 16) + 2 * 16 + (16 * 10 + 10)),
    "cnn": (dict(num_outputs=10, features=(4, 8), kernel_size=3, dense=(16,), batch_norm=True),
            (4, 28, 28, 1),
            # convs followed by batch norm carry no bias: the norm's offset takes its place
            (9 * 1 * 4) + 2 * 4 + (9 * 4 * 8) + 2 * 8 + (7 * 7 * 8 * 16 + 16) + (16 * 10 + 10)),
}


def test_every_registered_model_has_a_case():
    assert sorted(CASES) == available()


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_parameter_counts(name):
    kwargs, shape, expected = CASES[name]
    model = get_model(name, **kwargs)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape))
    params = nn.meta.unbox(variables["params"])
    assert sum(p.size for p in jax.tree.leaves(params)) == expected
    out = model.apply(nn.meta.unbox(variables), jnp.ones(shape), train=False)
    assert out.shape == (shape[0], kwargs["num_outputs"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_parameter_has_logical_axis_names(name):
    kwargs, shape, _ = CASES[name]
    abstract = jax.eval_shape(get_model(name, **kwargs).init, jax.random.PRNGKey(0), jnp.zeros(shape))
    specs = nn.get_partition_spec(abstract["params"])
    shapes = nn.meta.unbox(abstract["params"])
    for spec, leaf in zip(jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                          jax.tree.leaves(shapes)):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (spec, leaf.shape)


@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_norm_updates_only_in_training_and_dropout_only_in_training(name):
    kwargs, shape, _ = CASES[name]
    model = get_model(name, **{**kwargs, "dropout": 0.5})
    variables = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    rngs = {"dropout": jax.random.PRNGKey(2)}
    train_out, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    assert not np.allclose(train_out, eval_a)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_unknown_model_suggests_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'cnn'"):
        get_model("cnnn")


@pytest.mark.parametrize("kind, flax_pool", [("max", nn.max_pool), ("avg", nn.avg_pool)])
def test_reshape_pool_equals_flax_pool_and_its_gradient(kind, flax_pool):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 6, 3))
    weights = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 3, 3))

    def ours(x):
        return jnp.sum(pool2d(x, kind, 2) * weights)

    def reference(x):
        return jnp.sum(flax_pool(x, (2, 2), strides=(2, 2), padding="VALID") * weights)

    np.testing.assert_allclose(pool2d(x, kind, 2),
                               flax_pool(x, (2, 2), strides=(2, 2), padding="VALID"), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(x), jax.grad(reference)(x), rtol=1e-6)


def test_pool_falls_back_when_the_window_does_not_divide():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 7, 2))
    np.testing.assert_allclose(pool2d(x, "max", 2), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_receptive_fields_by_hand():
    layers = [Layer("conv_a", 3), Layer("conv_b", 3), Layer("pool", 2, 2, "VALID"),
              Layer("conv_c", 3, 2), Layer("dilated", 3, 1, "SAME", dilation=2)]
    fields = receptive_fields(layers, 28)
    assert [(f.size, f.jump, f.receptive_field) for f in fields] == [
        (28, 1, 3), (28, 1, 5), (14, 2, 6), (7, 4, 10), (7, 4, 26)]


def test_cnn_summary_reports_receptive_fields_and_total():
    from dlx.models import cnn
    text = cnn.summarize(get_model("cnn", features=(32, 64), dense=(128,)), (1, 28, 28, 1))
    assert "10x10" in text  # two 3x3 convs, each followed by a 2x2 pool
    total = int(text.splitlines()[-1].split(":")[1].replace(",", ""))
    assert total == (9 * 32 + 32) + (9 * 32 * 64 + 64) + (7 * 7 * 64 * 128 + 128) + (128 * 10 + 10)
