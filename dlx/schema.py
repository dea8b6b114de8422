"""Config values by type and range: one rule per key, checked before anything runs; a value a
rule refuses is one ConfigError line naming the full key, the bad value and what is allowed.

    RULES = under("diffusion", timesteps=Int(low=2), sampler=OneOf("ddpm", "ddim"),
                  ema_decay=Float(0, 1, high_open=True))
    check_values(config, RULES)   # config.diffusion.timesteps=1 is not allowed; expected an
                                  # integer >= 2

A number rule refuses NaN and inf unless it says `finite=False`. A key no rule names is checked
against the type of its default (`from_default`), a model's fields against their annotations
(`from_annotation`). Relations between keys (sample_steps <= timesteps) stay in the
`check_config` of whoever owns the keys.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Mapping
from typing import Any

from dlx import registry
from dlx.errors import ConfigError


class Rule:
    """What a value may be; `str(rule)` says it in words ("an integer >= 1")."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def hint(self, value: Any) -> str:
        """More about why `value` was refused (the nearest name, the bad item), or ""."""
        return ""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _within(value, low, high, low_open: bool, high_open: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


@dataclasses.dataclass(frozen=True)
class Int(Rule):
    low: int | None = None
    high: int | None = None

    def accepts(self, value):
        return _is_int(value) and _within(value, self.low, self.high, False, False)

    def __str__(self):
        return "an integer" + _bounds(self.low, self.high, False, False)


@dataclasses.dataclass(frozen=True)
class Float(Rule):
    """A number (an int is accepted too), finite unless `finite=False`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True

    def accepts(self, value):
        return (
            _is_number(value)
            and (math.isfinite(value) or not self.finite)
            and _within(value, self.low, self.high, self.low_open, self.high_open)
        )

    def __str__(self):
        return ("a finite number" if self.finite else "a number") + _bounds(
            self.low, self.high, self.low_open, self.high_open
        )


@dataclasses.dataclass(frozen=True)
class Bool(Rule):
    def accepts(self, value):
        return isinstance(value, bool)

    def __str__(self):
        return "True or False"


@dataclasses.dataclass(frozen=True)
class Str(Rule):
    nonempty: bool = False

    def accepts(self, value):
        return isinstance(value, str) and (bool(value) or not self.nonempty)

    def __str__(self):
        return "a non-empty string" if self.nonempty else "a string"


class OneOf(Rule):
    """One of the given values, of the same type (True is not 1, 1.0 is not 1)."""

    def __init__(self, *choices: Any):
        self.choices = choices

    def accepts(self, value):
        return any(type(value) is type(c) and value == c for c in self.choices)

    def hint(self, value):
        return registry.did_you_mean(value, self.choices) if isinstance(value, str) else ""

    def __str__(self):
        return repr(self.choices[0]) if len(self.choices) == 1 else f"one of {self.choices}"


class Either(Rule):
    def __init__(self, *rules: Rule):
        self.rules = rules

    def accepts(self, value):
        return any(rule.accepts(value) for rule in self.rules)

    def __str__(self):
        return " or ".join(map(str, self.rules))


def optional(rule: Rule) -> Rule:
    return Either(OneOf(None), rule)


@dataclasses.dataclass(frozen=True)
class Seq(Rule):
    """A tuple or list whose every item `item` accepts."""

    item: Rule
    min_len: int = 0

    def accepts(self, value):
        return (
            isinstance(value, (tuple, list))
            and len(value) >= self.min_len
            and all(self.item.accepts(v) for v in value)
        )

    def hint(self, value):
        if isinstance(value, (tuple, list)):
            bad = next((i for i, v in enumerate(value) if not self.item.accepts(v)), None)
            if bad is not None:
                return f" (item {bad}, {_short(value[bad])}, is not)"
        return ""

    def __str__(self):
        size = f" of at least {self.min_len} item(s)" if self.min_len else ""
        return f"a sequence{size}, each item {self.item}"


class Fixed(Rule):
    """A tuple or list of exactly these items, in order: Fixed(Str(), Float()) is a pair."""

    def __init__(self, *items: Rule):
        self.items = items

    def accepts(self, value):
        return (
            isinstance(value, (tuple, list))
            and len(value) == len(self.items)
            and all(rule.accepts(v) for rule, v in zip(self.items, value))
        )

    def __str__(self):
        return f"a {len(self.items)}-tuple ({', '.join(map(str, self.items))})"


@dataclasses.dataclass(frozen=True)
class Named(Rule):
    """`rule` told in the words of the domain ("(logical_name, mesh_axis) pairs")."""

    rule: Rule
    words: str

    def accepts(self, value):
        return self.rule.accepts(value)

    def hint(self, value):
        return self.rule.hint(value)

    def __str__(self):
        return self.words


@dataclasses.dataclass(frozen=True)
class Anything(Rule):
    def accepts(self, value):
        return True

    def __str__(self):
        return "any value"


# ---------------------------------------------------------------------------------------------
# Rules from defaults and annotations
# ---------------------------------------------------------------------------------------------


def from_default(default: Any) -> Rule:
    """The type of a default as a rule, for a key no rule names (a float default takes ints)."""
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, int):
        return Int()
    if isinstance(default, float):
        return Float()
    if isinstance(default, str):
        return Str()
    if isinstance(default, (tuple, list)):
        return Seq(Anything())
    return Anything()


def from_annotation(annotation: Any) -> Rule:
    """A resolved type annotation (int, float, bool, str, Sequence[int], tuple[int, ...],
    tuple[str, float], Optional[X], Literal[...]) as a rule; Any and others accept anything."""
    simple = {bool: Bool(), int: Int(), float: Float(), str: Str(), type(None): OneOf(None)}
    if annotation in simple:
        return simple[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return Either(*map(from_annotation, args))
    if origin is typing.Literal:
        return OneOf(*args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return Fixed(*map(from_annotation, args))
    if origin in (tuple, list, collections.abc.Sequence):
        return Seq(from_annotation(args[0]) if args else Anything())
    return Anything()


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def under(group: str, **rules: Rule) -> dict[str, Rule]:
    """`rules` for the keys of config group `group` ("gan.generator_optimizer"), by full key."""
    return {f"{group}.{key}": rule for key, rule in rules.items()}


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def check(key: str, value: Any, rule: Rule, where: str = "config.") -> None:
    """ConfigError "config.<key>=<value> is not allowed; expected <rule>" unless `rule` accepts
    `value` (`where` replaces "config." for a value that did not come from a config)."""
    if not rule.accepts(value):
        raise ConfigError(
            f"{where}{key}={_short(value)} is not allowed; expected {rule}{rule.hint(value)}"
        )


def check_fields(owner: str, instance: Any, rules: Mapping[str, Rule]) -> None:
    """The same rules for the fields of `instance`, a module built in Python rather than from a
    config: ConfigError "<owner>.<field>=<value> is not allowed; ..." for the first it refuses."""
    for field, rule in rules.items():
        check(field, getattr(instance, field), rule, where=f"{owner}.")


def check_values(group: Mapping[str, Any], rules: Mapping[str, Rule], where: str = "") -> None:
    """Checks every key of `group` that `rules` names by dotted path ("decoding.top_p"); keys
    absent from `group` are left to the check for missing keys. `where` prefixes the messages'
    keys ("optimizer." when `group` is config.optimizer)."""
    for path, rule in rules.items():
        node: Any = group
        for key in path.split("."):
            if not hasattr(node, "keys") or key not in node:
                break
            node = node[key]
        else:
            check(where + path, node, rule)
