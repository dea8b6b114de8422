"""Activations and initializers by name: values, gradients, variances, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.layers import activations, initializers

POINTS = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu(x):  # tanh approximation, jax.nn.gelu's default
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


EXPECTED = {
    "step": lambda x: (x > 0).astype(np.float32),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
    "linear": lambda x: x,
    "gelu": _gelu,
    "silu": lambda x: x * _sigmoid(x),
}


def test_every_activation_is_checked():
    assert set(activations.NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", activations.NAMES)
def test_activation_values(name):
    got = activations.get(name)(POINTS)
    np.testing.assert_allclose(got, EXPECTED[name](np.asarray(POINTS)), rtol=1e-5, atol=1e-6)


def test_known_points():
    assert activations.get("step")(jnp.array([-1.0, 0.0, 1e-6])).tolist() == [0.0, 0.0, 1.0]
    assert float(activations.get("sigmoid")(jnp.array(0.0))) == 0.5
    assert float(activations.get("leaky_relu")(jnp.array(-3.0))) == pytest.approx(-0.03)
    softmax = activations.get("softmax")(jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(softmax.sum(-1), [1.0, 1.0], rtol=1e-6)  # over the last axis
    np.testing.assert_allclose(softmax[1], [1 / 3] * 3, rtol=1e-6)


def test_step_has_zero_gradient():
    grad = jax.grad(lambda x: activations.get("step")(x).sum())(POINTS)
    assert grad.tolist() == [0.0] * len(POINTS)


def test_relu_gradient():
    grad = jax.grad(lambda x: activations.get("relu")(x).sum())(POINTS)
    assert grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "module, typo, nearest",
    [
        (activations, "rleu", "relu"),
        (activations, "leakyrelu", "leaky_relu"),
        (initializers, "he_normel", "he_normal"),
        (initializers, "xavier_unform", "xavier_uniform"),
    ],
)
def test_unknown_name_suggests_nearest(module, typo, nearest):
    with pytest.raises(ConfigError) as error:
        module.get(typo)
    message = str(error.value)
    assert f"'{nearest}'" in message and typo in message
    assert all(name in message for name in module.NAMES)


def test_unknown_name_without_near_match_lists_choices():
    with pytest.raises(ConfigError, match="choose from") as error:
        activations.get("zzzzzz")
    assert "did you mean" not in str(error.value)


FAN_IN, FAN_OUT = 2000, 500
# name -> (variance, uniform half-width or None for normal)
INIT_FORMULAS = {
    "xavier_uniform": (2 / (FAN_IN + FAN_OUT), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "glorot_uniform": (2 / (FAN_IN + FAN_OUT), math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_normal": (2 / (FAN_IN + FAN_OUT), None),
    "glorot_normal": (2 / (FAN_IN + FAN_OUT), None),
    "he_uniform": (2 / FAN_IN, math.sqrt(6 / FAN_IN)),
    "kaiming_uniform": (2 / FAN_IN, math.sqrt(6 / FAN_IN)),
    "he_normal": (2 / FAN_IN, None),
    "kaiming_normal": (2 / FAN_IN, None),
    "lecun_uniform": (1 / FAN_IN, math.sqrt(3 / FAN_IN)),
    "lecun_normal": (1 / FAN_IN, None),
    "zeros": (0.0, 0.0),
    "normal": (1.0, None),
    "normal_0.01": (1e-4, None),
}


def test_every_initializer_is_checked():
    assert set(initializers.NAMES) == set(INIT_FORMULAS)


@pytest.mark.parametrize("name", initializers.NAMES)
def test_initializer_variance_and_range(name):
    w = np.asarray(initializers.get(name)(jax.random.key(0), (FAN_IN, FAN_OUT), jnp.float32))
    variance, half_width = INIT_FORMULAS[name]
    assert w.shape == (FAN_IN, FAN_OUT)
    assert abs(w.mean()) < 1e-3
    if variance == 0:
        assert not w.any()
        return
    assert w.var() == pytest.approx(variance, rel=0.02)
    if half_width is not None:  # uniform over [-a, a], reaching both ends
        assert np.abs(w).max() <= half_width
        assert np.abs(w).max() > 0.99 * half_width
    else:  # jax's normals are truncated at 2 standard deviations of the underlying normal
        assert np.abs(w).max() > 2 * math.sqrt(variance)


def test_aliases_are_the_same_rule():
    key, shape = jax.random.key(1), (64, 32)
    for alias, name in [
        ("glorot_uniform", "xavier_uniform"),
        ("glorot_normal", "xavier_normal"),
        ("kaiming_uniform", "he_uniform"),
        ("kaiming_normal", "he_normal"),
    ]:
        np.testing.assert_array_equal(
            initializers.get(alias)(key, shape), initializers.get(name)(key, shape)
        )


def test_fused_threefry_equals_jax_threefry():
    from jax.extend.random import threefry_2x32

    from dlx.layers.activations import threefry2x32

    key = jnp.array([2024, 7], jnp.uint32)
    counters = jnp.arange(1000, dtype=jnp.uint32)
    x0, x1 = threefry2x32(key, counters, counters * 3 + 1)
    expected = threefry_2x32(key, jnp.concatenate([counters, counters * 3 + 1]))
    np.testing.assert_array_equal(np.concatenate([x0, x1]), expected)


def test_dropout_keeps_one_minus_rate_and_rescales():
    from dlx.layers.activations import Dropout

    x = jnp.ones((200, 500))
    out = Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    kept = np.asarray(out) != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(np.asarray(out)[kept], 1 / 0.7, rtol=1e-6)
    other = Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.array_equal(np.asarray(other) != 0, kept)
    assert Dropout(0.3).apply({}, x, deterministic=True) is x
