"""Everything dlx finds by name (models, tasks, activations, initializers, optimizers, config
keys) is looked up here, so every misspelt name gets the same one-line error with the nearest
valid name."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TypeVar

from dlx.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the nearest of `choices`, or "" when none is close."""
    match = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`, or ConfigError naming the nearest key and the choices."""
    if name not in table:
        raise ConfigError(
            f"unknown {what} '{name}'{did_you_mean(name, table)}; choose from {tuple(table)}"
        )
    return table[name]


def available(package: str, attribute: str) -> list[str]:
    """The public modules of `package` (e.g. "dlx.models") that define `attribute`."""
    root = importlib.import_module(package)
    return sorted(
        info.name
        for info in pkgutil.iter_modules(root.__path__)
        if not info.name.startswith("_")
        and hasattr(importlib.import_module(f"{package}.{info.name}"), attribute)
    )


def task_class(name: str) -> type:
    """`dlx.tasks.<name>.Task`: tasks are found by module name, like models."""
    return find("dlx.tasks", name, "Task", "task").Task


def find(package: str, name: str, attribute: str, what: str) -> ModuleType:
    """Module `package.name`, which must define `attribute` (a model family's `Model`, a
    task's `Task`); ConfigError with the nearest name otherwise."""
    module = None
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise  # the module exists but imports something missing
    if module is None or not hasattr(module, attribute):
        names = available(package, attribute)
        raise ConfigError(f"unknown {what} '{name}'{did_you_mean(name, names)}; available: {names}")
    return module
