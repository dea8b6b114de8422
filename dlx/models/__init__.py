"""Model families, one module each, found by name: `dlx.models.<name>.Model`."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import registry, schema
from dlx.errors import ConfigError


def available() -> list[str]:
    return registry.available(__name__, "Model")


def get_model(name: str, **kwargs) -> nn.Module:
    return registry.find(__name__, name, "Model", "model").Model(**kwargs)


def model_defaults(name: str) -> dict[str, Any]:
    """The fields of model `name` and their defaults (dataclasses.MISSING where it has none)."""
    model = registry.find(__name__, name, "Model", "model").Model
    return {
        f.name: f.default for f in dataclasses.fields(model) if f.name not in ("parent", "name")
    }


@functools.cache
def field_rules(name: str) -> dict[str, schema.Rule]:
    """Each field of model `name` as a rule: the range its module declares in `FIELD_RULES`,
    else the type of its annotation (int, float, bool, str, Sequence[int], Optional[...])."""
    module = registry.find(__name__, name, "Model", "model")
    declared = getattr(module, "FIELD_RULES", {})
    annotations = typing.get_type_hints(module.Model)
    return {
        field: declared.get(field) or schema.from_annotation(annotations[field])
        for field in model_defaults(name)
    }


def check_config(model_config) -> None:
    """ConfigError for a `config.model` group that names no model, a field it does not have, or
    a value of the wrong type or out of range; before anything is built."""
    name = model_config.get("name")
    if name not in available():
        raise ConfigError(
            f"config.model.name '{name}' is not a dlx model; available: "
            f"{available()}{registry.did_you_mean(str(name), available())}"
        )
    rules = field_rules(name)
    for key in model_config.keys():
        if key == "name":
            continue
        if key not in rules:
            raise ConfigError(
                f"unknown config key 'model.{key}' for model '{name}'"
                f"{registry.did_you_mean(key, rules)}; its fields are "
                f"{sorted(rules)}"
            )
        schema.check(f"model.{key}", model_config[key], rules[key])


def parameter_counts(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters per top-level submodule (e.g. {"Dense_0": 200960, "head": 2570}), without
    allocating them."""
    variables = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct(input_shape, jnp.float32),
    )
    return {
        name: sum(int(leaf.size) for leaf in jax.tree.leaves(tree))
        for name, tree in nn.meta.unbox(variables["params"]).items()
    }
