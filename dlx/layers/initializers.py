"""Weight initializers by name (fan-in/fan-out scaled variance rules)."""
from __future__ import annotations

import difflib

import jax.nn.initializers as init

from dlx.errors import ConfigError

_INITIALIZERS = {
    "xavier_uniform": init.glorot_uniform(),
    "xavier_normal": init.glorot_normal(),
    "glorot_uniform": init.glorot_uniform(),
    "glorot_normal": init.glorot_normal(),
    "he_uniform": init.he_uniform(),
    "he_normal": init.he_normal(),
    "kaiming_uniform": init.he_uniform(),
    "kaiming_normal": init.he_normal(),
    "lecun_uniform": init.lecun_uniform(),
    "lecun_normal": init.lecun_normal(),
    "zeros": init.zeros,
}
NAMES = tuple(_INITIALIZERS)


def get(name: str) -> init.Initializer:
    if name not in _INITIALIZERS:
        near = difflib.get_close_matches(name, NAMES, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown initializer '{name}'{hint}; choose from {NAMES}")
    return _INITIALIZERS[name]
