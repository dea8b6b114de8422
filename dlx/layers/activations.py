"""Activation functions by name."""
from __future__ import annotations

import difflib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dlx.errors import ConfigError


def step(x: jax.Array) -> jax.Array:
    """Heaviside step (1 for x > 0). Forward only: its gradient is zero everywhere, so a network
    built on it does not learn by backpropagation (the point of the classic lesson)."""
    return jax.lax.stop_gradient((x > 0).astype(x.dtype))


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "step": step,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
    "linear": lambda x: x,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}
NAMES = tuple(_ACTIVATIONS)


def get(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in _ACTIVATIONS:
        near = difflib.get_close_matches(name, NAMES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown activation '{name}'{hint}; choose from {NAMES}")
    return _ACTIVATIONS[name]
