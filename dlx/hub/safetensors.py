"""The safetensors reader every weight importer shares: find a checkpoint's weight files (one
`model.safetensors`, or an index and its shards), list each tensor's name, shape and dtype from
the headers without reading data, then read tensors by name into numpy.

No pickle, no torch, no code from the checkpoint; anything unreadable is a DataError of one line
that names the family being imported (`what`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from dlx.errors import DataError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
READABLE_DTYPES = {"F64", "F32", "F16"}  # numpy has no bfloat16

# name -> (file, shape, safetensors dtype)
TensorIndex = dict[str, tuple[Path, tuple[int, ...], str]]


def weight_files(directory: Path, what: str) -> list[Path]:
    """The safetensors files of the checkpoint in `directory`."""
    single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{what}: {index} is not a safetensors index ({error!r})") from error
        for shard in shards:  # plain file names only: an index must not point elsewhere
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise DataError(f"{what}: {index} names shard {shard!r} outside the directory")
            if not (directory / shard).is_file():
                raise DataError(f"{what}: shard {shard} listed in {index.name} is missing")
        return [directory / shard for shard in shards]
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise DataError(
        f"{what}: no {WEIGHTS_FILE} or {INDEX_FILE} in {directory} (found {found}); "
        f"dlx reads safetensors only, never pickled .bin files"
    )


def tensor_index(files: list[Path], what: str) -> TensorIndex:
    """Every tensor's file, shape and dtype, from the headers alone."""
    tensors = {}
    for path in files:
        try:
            with safe_open(path, framework="np") as f:
                for name in f.keys():
                    info = f.get_slice(name)
                    tensors[name] = (path, tuple(info.get_shape()), info.get_dtype())
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise DataError(
                f"{what}: cannot read {path} as safetensors: "
                f"{(str(error).splitlines() or [type(error).__name__])[0]}"
            ) from error
    return tensors


class Reader:
    """Reads tensors by name (from a `tensor_index`), opening each file once."""

    def __init__(self, stored: TensorIndex, what: str):
        self.stored = stored
        self.what = what
        self.handles: dict[Path, Any] = {}
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def __call__(self, name: str) -> np.ndarray:
        path, _, dtype = self.stored[name]
        if dtype not in READABLE_DTYPES:
            raise DataError(
                f"{self.what}: tensor {name} in {path.name} is {dtype}; dlx reads "
                f"{sorted(READABLE_DTYPES)} (convert the checkpoint to float32)"
            )
        if path not in self.handles:
            self.handles[path] = self.stack.enter_context(safe_open(path, framework="np"))
        return self.handles[path].get_tensor(name)


# ---------------------------------------------------------------------------------------------
# Parameter trees, shared by the family importers
# ---------------------------------------------------------------------------------------------


def flat_shapes(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict:
    """{path tuple: shape} of every leaf of a nested dict of arrays."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat_shapes(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = tuple(value.shape)
    return out


def model_param_shapes(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """A token model's own parameter shapes, by abstract evaluation (no compile, no memory)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return flat_shapes(
        nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens))["params"]
    )


def put(tree: dict, path: Sequence[str], value: Any) -> None:
    """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def strip_prefix(
    names: Sequence[str],
    prefix: str,
    *,
    body: Callable[[str], bool],
    skipped: tuple[str, ...],
    what: str,
    where: Path,
) -> dict[str, str]:
    """{name without `prefix`: stored name} of a checkpoint whose model class may prefix its
    tensor names (GPT2LMHeadModel's "transformer.", BertForX's "bert."); names ending in a
    `skipped` suffix (buffers) are dropped. Among the `body` names, all or none may carry it."""
    if len({n.startswith(prefix) for n in names if body(n)}) > 1:
        raise DataError(f"{what}: {where} mixes names with and without the '{prefix}' prefix")
    return {
        (n[len(prefix) :] if n.startswith(prefix) else n): n
        for n in names
        if not n.endswith(skipped)
    }


def params_for_export(params: Mapping[str, Any], wanted: Mapping, what: str) -> Mapping[str, Any]:
    """The unboxed "params" tree of `params` (a variables dict or the params themselves),
    checked to have exactly the `wanted` {path: shape}; ConfigError naming the differences."""
    from dlx.errors import ConfigError

    params = nn.meta.unbox(params)
    if "params" in params and "wte" not in params:
        params = params["params"]
    given = flat_shapes(params)
    if given != dict(wanted):
        differing = sorted(set(given.items()) ^ set(dict(wanted).items()))[:4]
        raise ConfigError(
            f"{what} export: params do not fit the model; first differences (path, shape): "
            f"{differing}"
        )
    return params
