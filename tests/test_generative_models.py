"""The generative families' modules: output shapes, exact parameter counts worked out by hand,
logical axis names on every parameter."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dlx.errors import ConfigError
from dlx.models import get_model

IMAGE = 28 * 28


def _count(variables) -> int:
    return sum(p.size for p in jax.tree.leaves(nn.meta.unbox(variables["params"])))


def _assert_named(variables) -> None:
    specs = jax.tree.leaves(
        nn.get_partition_spec(variables["params"]), is_leaf=lambda x: isinstance(x, P)
    )
    leaves = jax.tree.leaves(nn.meta.unbox(variables["params"]))
    assert len(specs) == len(leaves)
    for spec, leaf in zip(specs, leaves):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (spec, leaf.shape)


@pytest.mark.parametrize("variational", [False, True])
def test_dense_autoencoder(variational):
    model = get_model(
        "autoencoder", kind="dense", latent_dim=4, hidden=(8, 6), variational=variational
    )
    x = jnp.ones((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    head = 6 * (8 if variational else 4) + (8 if variational else 4)
    assert _count(variables) == (IMAGE * 8 + 8) + (8 * 6 + 6) + head + (4 * 6 + 6) + (6 * 8 + 8) + (
        8 * IMAGE + IMAGE
    )
    _assert_named(variables)
    assert model.apply(variables, x).shape == (2, 28, 28, 1)
    z = model.apply(variables, x, method="encode")
    assert (z[0].shape, z[1].shape) == ((2, 4), (2, 4)) if variational else z.shape == (2, 4)


def test_conv_autoencoder():
    model = get_model("autoencoder", kind="conv", latent_dim=3, hidden=(4, 8))
    x = jnp.ones((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    assert _count(variables) == (9 * 1 * 4 + 4) + (9 * 4 * 8 + 8) + (7 * 7 * 8 * 3 + 3) + (
        3 * 7 * 7 * 8 + 7 * 7 * 8
    ) + (9 * 8 * 4 + 4) + (9 * 4 * 4 + 4) + (9 * 4 * 1 + 1)
    _assert_named(variables)
    assert model.apply(variables, x).shape == (2, 28, 28, 1)


def test_dcgan_players_have_their_own_parameters():
    model = get_model("dcgan", latent_dim=5, width=2)
    z, x = jnp.ones((3, 5)), jnp.ones((3, 28, 28, 1))
    variables = model.init(jax.random.key(0), z, x)
    params = nn.meta.unbox(variables["params"])
    generator = 5 * 196 + 2 * 196 + 9 * 4 * 4 + 2 * 4 + 9 * 4 * 2 + 2 * 2 + (9 * 2 * 1 + 1)
    discriminator = (16 * 1 * 2 + 2) + (16 * 2 * 4 + 4) + (7 * 7 * 4 + 1)
    assert sum(p.size for p in jax.tree.leaves(params["generator"])) == generator
    assert sum(p.size for p in jax.tree.leaves(params["discriminator"])) == discriminator
    _assert_named(variables)
    images = model.apply(variables, z, method="generate")
    assert images.shape == (3, 28, 28, 1) and np.abs(np.asarray(images)).max() <= 1.0
    assert model.apply(variables, x, method="discriminate").shape == (3,)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("autoencoder", dict(kind="conv", image_shape=(30, 30, 1))),
        ("autoencoder", dict(kind="pixels")),
        ("dcgan", dict(image_shape=(30, 30, 1))),
    ],
)
def test_impossible_shapes_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        get_model(name, **kwargs)
