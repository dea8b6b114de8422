"""Weight initializers by name: the fan-in/fan-out scaled variance rules, and fixed-scale normals
("normal": N(0, 1), "normal_0.01": N(0, 0.01^2)) that ignore the layer's size, the textbook
counter-examples of the initialisation lesson (experiments/initialisation.py)."""

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
    "normal": init.normal(1.0),
    "normal_0.01": init.normal(0.01),
}
NAMES = tuple(_INITIALIZERS)


def get(name: str) -> init.Initializer:
    return registry.lookup(_INITIALIZERS, name, "initializer")
