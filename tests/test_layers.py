"""Activations and initializers by name: values, gradients, variances, clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.layers import activations, initializers

POINTS = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])


@pytest.mark.parametrize("name, expected", [
    ("step", [0, 0, 0, 1, 1]),
    ("sigmoid", 1 / (1 + np.exp(-np.array([-2.0, -0.5, 0.0, 0.5, 2.0])))),
    ("tanh", np.tanh([-2.0, -0.5, 0.0, 0.5, 2.0])),
    ("relu", [0, 0, 0, 0.5, 2.0]),
    ("leaky_relu", [-0.02, -0.005, 0, 0.5, 2.0]),
    ("linear", [-2.0, -0.5, 0.0, 0.5, 2.0]),
    ("silu", np.array([-2.0, -0.5, 0.0, 0.5, 2.0]) / (1 + np.exp(-np.array([-2.0, -0.5, 0.0, 0.5, 2.0])))),
    ("gelu", [-0.04540231, -0.15428599, 0.0, 0.34571401, 1.95459769]),
])
def test_activation_values(name, expected):
    np.testing.assert_allclose(activations.get(name)(POINTS), expected, rtol=1e-3, atol=1e-6)


def test_softmax_is_a_distribution_over_the_last_axis():
    out = activations.get("softmax")(jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], 1 / 3, rtol=1e-6)


def test_step_has_zero_gradient_everywhere():
    grad = jax.grad(lambda x: activations.get("step")(x).sum())(POINTS)
    np.testing.assert_array_equal(grad, 0.0)


def test_every_activation_is_listed():
    assert set(activations.NAMES) == {"step", "sigmoid", "tanh", "relu", "leaky_relu",
                                      "softmax", "linear", "gelu", "silu"}


@pytest.mark.parametrize("module", [activations, initializers])
def test_unknown_names_suggest_the_nearest(module):
    with pytest.raises(ConfigError, match="did you mean"):
        module.get("rleu" if module is activations else "he_nromal")


FAN_IN, FAN_OUT = 400, 600


@pytest.mark.parametrize("name, variance", [
    ("xavier_uniform", 2 / (FAN_IN + FAN_OUT)), ("xavier_normal", 2 / (FAN_IN + FAN_OUT)),
    ("glorot_uniform", 2 / (FAN_IN + FAN_OUT)), ("glorot_normal", 2 / (FAN_IN + FAN_OUT)),
    ("he_uniform", 2 / FAN_IN), ("he_normal", 2 / FAN_IN),
    ("kaiming_uniform", 2 / FAN_IN), ("kaiming_normal", 2 / FAN_IN),
    ("lecun_uniform", 1 / FAN_IN), ("lecun_normal", 1 / FAN_IN), ("zeros", 0.0),
])
def test_initializer_variance_matches_its_rule(name, variance):
    w = initializers.get(name)(jax.random.PRNGKey(0), (FAN_IN, FAN_OUT), jnp.float32)
    assert float(jnp.var(w)) == pytest.approx(variance, rel=0.03, abs=1e-12)
    if name.endswith("uniform"):  # bounded by sqrt(3 * variance)
        assert float(jnp.abs(w).max()) <= np.sqrt(3 * variance) + 1e-6
