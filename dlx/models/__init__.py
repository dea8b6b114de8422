"""Model families, one module each, found by name: `dlx.models.<name>.Model`."""
from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError


def available() -> list[str]:
    names = []
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and hasattr(
                importlib.import_module(f"{__name__}.{module.name}"), "Model"):
            names.append(module.name)
    return sorted(names)


def get_model(name: str, **kwargs) -> nn.Module:
    names = available()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown model '{name}'{hint}; available: {names}")
    return importlib.import_module(f"{__name__}.{name}").Model(**kwargs)


def parameter_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters per top-level submodule (e.g. {"Dense_0": 200960, "head": 2570}), without
    allocating them."""
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               jax.ShapeDtypeStruct(input_shape, jnp.float32))
    return {name: sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
            for name, tree in nn.meta.unbox(variables["params"]).items()}
