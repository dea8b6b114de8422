"""Regex rules over parameter paths: the one utility behind masks, frozen parameters,
learning-rate multipliers, penalties and sharding.

A parameter's path is its '/'-joined key path, e.g. ``"Encoder/Dense_0/kernel"``. A rule list is
``[(regex, value), ...]``; each parameter takes the value of the FIRST rule whose regex
``re.fullmatch``es its path. A parameter that no rule matches is an error unless a default is
given, so a renamed layer cannot silently escape weight decay or freezing.

Flax metadata boxes (``nn.Partitioned`` and other ``AxisMetadata``) count as one leaf at the box's
position, so a boxed tree (e.g. from ``jax.eval_shape(model.init, ...)``) gets the same paths as
its unboxed params.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
from flax.core import meta

from dlx.errors import ConfigError

Rules = Sequence[tuple[str, Any]]

_NO_DEFAULT = object()
_MAX_LISTED = 10


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def _flatten_with_paths(tree: Any) -> tuple[list[str], list[Any], Any]:
    keyed_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)
    paths = [jax.tree_util.keystr(key, simple=True, separator="/") for key, _ in keyed_leaves]
    return paths, [leaf for _, leaf in keyed_leaves], treedef


def tree_paths(tree: Any) -> Any:
    """The tree with each leaf replaced by its '/'-joined path (boxes count as leaves)."""
    paths, _, treedef = _flatten_with_paths(tree)
    return jax.tree_util.tree_unflatten(treedef, paths)


def compile_rules(rules: Rules) -> list[tuple[re.Pattern[str], Any]]:
    """The rules with their regexes compiled; ConfigError for a malformed rule or regex."""
    compiled = []
    for rule in rules:
        try:
            pattern, value = rule
        except (TypeError, ValueError):
            raise ConfigError(f"a rule must be a (regex, value) pair, got {rule!r}") from None
        try:
            compiled.append((re.compile(pattern), value))
        except (re.error, TypeError) as e:
            raise ConfigError(
                f"rule regex {pattern!r} is not a valid regular expression: {e}"
            ) from None
    return compiled


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(repr(s) for s in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" ... and {more} more" if more > 0 else "")


def match(
    tree: Any, rules: Rules, *, default: Any = _NO_DEFAULT, strict_unused: bool = False
) -> Any:
    """The tree with each leaf replaced by the value of the first rule that fullmatches its path.

    Args:
      tree: a params-like pytree (dicts, FrozenDicts, lists; boxed or unboxed leaves).
      rules: ``[(regex, value), ...]``, tried in order.
      default: the value for paths no rule matches; without it such paths raise ConfigError.
      strict_unused: also raise if some rule decides no leaf (a typo in a regex, or a rule
        shadowed by an earlier one).

    The result has the structure of ``tree`` (values may be any object: None, tuples, specs).
    """
    compiled = compile_rules(rules)
    paths, _, treedef = _flatten_with_paths(tree)
    used = [False] * len(compiled)
    values, unmatched = [], []
    for path in paths:
        for i, (pattern, value) in enumerate(compiled):
            if pattern.fullmatch(path):
                used[i] = True
                values.append(value)
                break
        else:
            unmatched.append(path)
            values.append(default)

    patterns = [pattern for pattern, _ in rules]
    if unmatched and default is _NO_DEFAULT:
        raise ConfigError(
            f"{len(unmatched)} parameter(s) match no rule: {_listing(unmatched)}; "
            f"rules: {_listing(patterns)}. Add a rule (e.g. ('.*', value)) that covers them."
        )
    if strict_unused and not all(used):
        unused = [p for p, u in zip(patterns, used) if not u]
        raise ConfigError(
            f"rule(s) {_listing(unused)} match no parameter (or only parameters an earlier rule "
            f"already took); parameter paths look like: {_listing(paths)}"
        )
    return jax.tree_util.tree_unflatten(treedef, values)


def regex_mask(tree: Any, pattern: str, *, strict_unused: bool = False) -> Any:
    """A bool tree: True where the leaf's path fullmatches ``pattern``. ``""`` matches nothing."""
    if not pattern:
        _, leaves, treedef = _flatten_with_paths(tree)
        return jax.tree_util.tree_unflatten(treedef, [False] * len(leaves))
    return match(tree, [(pattern, True)], default=False, strict_unused=strict_unused)
