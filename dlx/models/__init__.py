"""Model families, one module each, found by name: `dlx.models.<name>.Model`."""
from __future__ import annotations

import difflib
import importlib
import pkgutil

import flax.linen as nn

from dlx.errors import ConfigError


def available() -> list[str]:
    names = []
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and hasattr(
                importlib.import_module(f"{__name__}.{module.name}"), "Model"):
            names.append(module.name)
    return sorted(names)


def get_model(name: str, **kwargs) -> nn.Module:
    if name not in available():
        near = difflib.get_close_matches(name, available(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown model '{name}'{hint}; available: {available()}")
    return importlib.import_module(f"{__name__}.{name}").Model(**kwargs)
