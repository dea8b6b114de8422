"""Weight initializers by name (fan-in/fan-out scaled variance rules)."""

from __future__ import annotations

import jax.nn.initializers as init

from dlx import registry

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
    return registry.lookup(_INITIALIZERS, name, "initializer")
