"""The runner's config schema: defaults, validation, durations, and config.json round trips.

Configs in `configs/` start from `base_config()` and change a few fields. Validation runs before
anything touches the workdir, so a bad config never harms an existing run.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import math
from typing import Any

import ml_collections

from dlx.errors import ConfigError
from dlx.train import optimizer as optimizer_lib

TASKS = ("classification", "regression", "language_model", "seq2seq")
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("conv_in", "fsdp"),
    ("conv_out", "model"),
    ("heads", "model"),
    ("kv_heads", "model"),
    ("vocab", "model"),
)
# Keys a re-run may change on an existing workdir without breaking its checkpoints. The mesh and
# sharding rules only lay the same numbers out over other devices (checkpoints restore onto any
# mesh), so a run moves to a machine with another device count.
RESUMABLE_CHANGES = {"train_steps", "num_epochs", "log_every_steps", "eval_every_steps",
                     "eval_every_epochs", "checkpoint_every_steps", "checkpoint_every_epochs",
                     "keep_checkpoints", "progress_bar", "data.num_threads", "data.prefetch",
                     "data.data_dir", "mesh.data", "mesh.fsdp", "mesh.model", "sharding_rules"
                     } | {f"decoding.{key}" for key in (
                         "prompt", "num_samples", "max_new_tokens", "temperature", "top_k",
                         "top_p", "beam_size", "length_penalty")}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "classification"
    c.model = ml_collections.ConfigDict({"name": "mlp"})  # other keys: the Model's fields
    c.data = ml_collections.ConfigDict(dict(
        name="fashion_mnist", data_dir="", train_split="train", eval_split="test",
        batch_size=128,        # global, over all processes and devices
        eval_batch_size=1000,  # global
        num_threads=2, prefetch=4,
        # Text tasks: the tokenizer ("char" or "bpe"; vocab_size for BPE) and, for language
        # models, the window length in tokens.
        tokenizer="char", vocab_size=0, seq_len=0))
    # Sampling and decoding at eval (and the defaults of `launch.py sample`).
    c.decoding = ml_collections.ConfigDict(dict(
        prompt="\n", num_samples=2, max_new_tokens=200, temperature=0.8, top_k=0, top_p=1.0,
        beam_size=1, length_penalty=0.0))
    c.optimizer = optimizer_lib.default_config()
    c.loss = ml_collections.ConfigDict(dict(l1=0.0, l2=0.0, label_smoothing=0.0))
    # Durations: set train_steps, or num_epochs (over the train split); cadences in steps or epochs.
    c.train_steps = 0
    c.num_epochs = 0.0
    c.grad_accum_steps = 1
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 0
    c.checkpoint_every_epochs = 1.0
    c.keep_checkpoints = 2       # the latest K, plus the best by best_metric
    c.best_metric = ""           # an eval metric name; "" takes the task's default
    c.nan_policy = "stop"        # "stop": halt, naming the last good checkpoint; "skip": drop the update
    c.init_from = ""             # a workdir: start from its latest checkpoint's params (fine-tuning)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.sharding_rules = DEFAULT_RULES
    c.progress_bar = True
    return c


def _nearest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, where: str):
    for key in config.keys():
        if key not in schema:
            raise ConfigError(f"unknown config key '{where}{key}'{_nearest(key, schema.keys())}")
        value, expected = config[key], schema[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if where + key == "model":  # checked against the Model's fields in validate()
                continue
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"config key '{where}{key}' must be a group of keys, got {value!r}")
            _check_keys(value, expected, f"{where}{key}.")
        elif expected is not None and not _type_ok(value, expected):
            raise ConfigError(f"config key '{where}{key}' should be {type(expected).__name__}, "
                              f"got {type(value).__name__} {value!r}")


def _type_ok(value, expected) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(expected))


def model_defaults(name: str) -> dict[str, Any]:
    """The fields of model `name` and their defaults (dataclasses.MISSING where it has none)."""
    module = importlib.import_module(f"dlx.models.{name}")
    return {f.name: f.default for f in dataclasses.fields(module.Model)
            if f.name not in ("parent", "name")}


def model_fields(name: str) -> set[str]:
    return set(model_defaults(name))


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of `configs/x.py[:variant]` (its get_config) or of a saved run's config.json."""
    if spec.endswith(".json"):
        return from_json(spec)
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("dlx_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def prepare_overrides(config: ml_collections.ConfigDict, paths: list[str]) -> None:
    """Checks the dotted paths of `--config.<path>=value` overrides before they are applied, so a
    typo is one clear error; and lets `model.<field>` set any field of the model, also one the
    config file leaves at its default (the field is added with its default, then overridden)."""
    from dlx import models  # imported late: it pulls in every model family
    for path in paths:
        keys = path.split(".")
        if keys[0] == "model" and len(keys) == 2 and keys[1] not in config.model:
            if config.model.get("name") in models.available():
                default = model_defaults(config.model.name).get(keys[1], dataclasses.MISSING)
                if default is not dataclasses.MISSING:
                    config.model[keys[1]] = default
        node = config
        for depth, key in enumerate(keys):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                choices = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                if keys[:depth] == ["model"] and config.model.get("name") in models.available():
                    choices += sorted(model_fields(config.model.name))
                parent = ".".join(keys[:depth]) or "the top level"
                raise ConfigError(f"--config.{path}: the config has no key '{key}' under {parent}"
                                  f"{_nearest(key, choices)}")
            node = node[key]


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first problem found; changes nothing."""
    _check_keys(config, base_config(), "")
    if config.task not in TASKS:
        raise ConfigError(f"config.task '{config.task}' is not one of {TASKS}{_nearest(config.task, TASKS)}")
    task = importlib.import_module(f"dlx.tasks.{config.task}").Task
    if hasattr(task, "check_config"):
        task.check_config(config)
    from dlx import models  # imported late: it pulls in every model family
    if config.model.get("name") not in models.available():
        raise ConfigError(f"config.model.name '{config.model.get('name')}' is not a dlx model; "
                          f"available: {models.available()}{_nearest(str(config.model.get('name')), models.available())}")
    fields = model_fields(config.model.name)
    for key in config.model.keys():
        if key != "name" and key not in fields:
            raise ConfigError(f"unknown config key 'model.{key}' for model '{config.model.name}'"
                              f"{_nearest(key, fields)}; its fields are {sorted(fields)}")
    optimizer_lib.check_config(config.optimizer)
    if config.optimizer.weight_decay > 0 and config.loss.l2 > 0:
        raise ConfigError("optimizer.weight_decay and loss.l2 are both set: that decays weights twice; "
                          "keep one (weight_decay is decoupled, loss.l2 is a loss term)")
    if (config.train_steps > 0) == (config.num_epochs > 0):
        raise ConfigError("set exactly one of config.train_steps and config.num_epochs (> 0), "
                          f"got train_steps={config.train_steps}, num_epochs={config.num_epochs}")
    if config.nan_policy not in ("stop", "skip"):
        raise ConfigError(f"config.nan_policy must be 'stop' or 'skip', got '{config.nan_policy}'")
    for key in ("batch_size", "eval_batch_size"):
        if config.data[key] <= 0:
            raise ConfigError(f"config.data.{key} must be positive, got {config.data[key]}")
    if config.grad_accum_steps < 1 or config.data.batch_size % config.grad_accum_steps:
        raise ConfigError(f"config.data.batch_size={config.data.batch_size} must divide into "
                          f"config.grad_accum_steps={config.grad_accum_steps} micro-batches")


def validate_for_mesh(config: ml_collections.ConfigDict, data_parallel: int, process_count: int):
    """Global batch sizes must split evenly over the data-parallel devices and the processes."""
    for key in ("batch_size", "eval_batch_size"):
        size = config.data[key]
        unit = math.lcm(data_parallel, process_count)
        if size % unit:
            raise ConfigError(
                f"config.data.{key}={size} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh data x fsdp) and {process_count} process(es); use a multiple of {unit}, "
                f"e.g. {max(unit, size // unit * unit)}")
    micro = config.data.batch_size // config.grad_accum_steps
    if micro % data_parallel:
        raise ConfigError(f"micro-batch {micro} (batch_size / grad_accum_steps) is not divisible "
                          f"by the data-parallel size {data_parallel}")


def period(config, name: str, steps_per_epoch: float) -> float:
    """Steps between two `{name}` events: `{name}_steps` if set, else `{name}_epochs` in steps
    (not rounded, so the k-th event falls on the step that completes k periods and one ending
    with the run is not doubled); 0 means never."""
    if config.get(f"{name}_steps", 0) > 0:
        return float(config[f"{name}_steps"])
    return max(0.0, config.get(f"{name}_epochs", 0.0)) * steps_per_epoch


def is_due(step: int, period: float) -> bool:
    """Whether `step` (1-based) completes another `period` of steps."""
    return period > 0 and math.floor(step / period) > math.floor((step - 1) / period)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(_plain_dict(config.to_dict()), indent=2, sort_keys=True)


def _plain_dict(d: dict) -> dict:
    return {k: _plain_dict(v) if isinstance(v, dict) else _plain(v) for k, v in d.items()}


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def from_json(path: str) -> ml_collections.ConfigDict:
    """A saved config.json: the complete set of values a run used, nothing else needed."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    values.setdefault("init_from", "")  # added after the first runs; their config.json lacks it
    return ml_collections.ConfigDict(_tuples(values))


def differences(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
    """Flattened keys whose values differ, e.g. ['model.hidden', 'seed']."""
    a, b = _flatten(json.loads(to_json(old))), _flatten(json.loads(to_json(new)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
