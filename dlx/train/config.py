"""The runner's config schema: defaults, validation, durations, and config.json round trips.

Configs in `configs/` start from `base_config(task)` (the runner's keys plus the task's own) and
change a few fields. Validation runs before
anything touches the workdir, so a bad config never harms an existing run.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
from typing import Any

import ml_collections

from dlx import registry, schema
from dlx.errors import ConfigError
from dlx.parallel import MESH_AXES
from dlx.schema import Bool, Either, Fixed, Float, Int, Named, OneOf, Seq, Str

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
# Runner keys a re-run may change on an existing workdir without breaking its checkpoints (a task
# adds its own, `Task.resumable_keys`). The mesh and sharding rules only lay the same numbers out
# over other devices (checkpoints restore onto any mesh), so a run moves to a machine with another
# device count.
RESUMABLE_CHANGES = frozenset(
    {
        "train_steps",
        "num_epochs",
        "log_every_steps",
        "eval_every_steps",
        "eval_every_epochs",
        "checkpoint_every_steps",
        "checkpoint_every_epochs",
        "keep_checkpoints",
        "progress_bar",
        "profile_steps",
        "layer_stats_every_steps",
        "data.num_threads",
        "data.prefetch",
        "data.data_dir",
        "mesh.data",
        "mesh.fsdp",
        "mesh.model",
        "sharding_rules",
    }
)
# Keys of config.json files written before tasks declared their own groups, dropped on load when
# the run's task does not declare them.
LEGACY_KEYS = ("decoding", "data.tokenizer", "data.vocab_size", "data.seq_len")
# Keys added after runs were saved, whose defaults do what those runs did: filled in on load
# where the run's schema (runner and task) has them and its config.json lacks them. A new key
# must default to the old behaviour, and be listed here.
ADDED_KEYS = (
    "augment",
    "layer_stats_every_steps",
    "data.length_buckets",
    "lora",
    "checkpoint_frozen",
    "detection.classes_per_box",
    "detection.nms_candidates",
    "augment.eval_flip",
    "augment.eval_shifts",
)


def runner_config() -> ml_collections.ConfigDict:
    """The keys the runner reads itself, with their defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "classification"
    c.model = ml_collections.ConfigDict({"name": "mlp"})  # other keys: the Model's fields
    c.data = ml_collections.ConfigDict(
        dict(
            name="fashion_mnist",
            data_dir="",
            train_split="train",
            eval_split="test",
            batch_size=128,  # global, over all processes and devices
            eval_batch_size=1000,  # global
            num_threads=2,
            prefetch=4,
        )
    )
    # Durations: set train_steps or num_epochs (over the train split); train_steps wins when both
    # are set. Cadences in steps or epochs.
    c.train_steps = 0
    c.num_epochs = 0.0
    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.eval_every_epochs = 1.0
    c.checkpoint_every_steps = 0
    c.checkpoint_every_epochs = 1.0
    c.keep_checkpoints = 2  # the latest K, plus the best by best_metric
    c.best_metric = ""  # an eval metric name; "" takes the task's default
    c.nan_policy = "stop"  # "stop": halt, naming the last good checkpoint; "skip": drop the update
    c.init_from = ""  # a workdir: start from its latest checkpoint's params (fine-tuning)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    c.sharding_rules = DEFAULT_RULES
    c.progress_bar = True
    c.profile_steps = (0, 0)  # (first, last) train steps to trace with jax.profiler; (0, 0): none
    # Every N train steps, per-layer statistics (activations, gradient and update norms) into
    # metrics.jsonl (split "layers") and TensorBoard (with histograms); 0: none
    c.layer_stats_every_steps = 0
    return c


_MESH_AXIS = OneOf(*MESH_AXES)
_COUNT = Int(low=0)  # steps, threads, batches: 0 is "none" or "never"
_EPOCHS = Float(low=0)
# The type and range of every runner key (the model's fields: dlx.models.check_config; a task's
# keys: its `config_rules`). Relations between keys are checked in validate().
RUNNER_RULES: dict[str, schema.Rule] = {
    "seed": Int(0, 2**32 - 1),
    "task": Str(nonempty=True),
    "model.name": Str(nonempty=True),
    **schema.under(
        "data",
        name=Str(nonempty=True),
        data_dir=Str(),
        train_split=Str(nonempty=True),
        eval_split=Str(nonempty=True),
        batch_size=Int(low=1),
        eval_batch_size=Int(low=1),
        num_threads=_COUNT,
        prefetch=_COUNT,
    ),
    "train_steps": _COUNT,
    "num_epochs": _EPOCHS,
    "log_every_steps": _COUNT,
    "eval_every_steps": _COUNT,
    "eval_every_epochs": _EPOCHS,
    "checkpoint_every_steps": _COUNT,
    "checkpoint_every_epochs": _EPOCHS,
    "keep_checkpoints": Int(low=1),
    "best_metric": Str(),
    "nan_policy": OneOf("stop", "skip"),
    "init_from": Str(),
    **schema.under("mesh", **dict.fromkeys(MESH_AXES, Either(OneOf(-1), Int(low=1)))),
    "sharding_rules": Named(
        Seq(Fixed(Str(nonempty=True), Either(OneOf(None), _MESH_AXIS, Seq(_MESH_AXIS)))),
        f"a sequence of (logical_name, mesh_axis | tuple of mesh axes | None) pairs, the mesh "
        f"axes among {MESH_AXES}",
    ),
    "progress_bar": Bool(),
    "profile_steps": Fixed(_COUNT, _COUNT),
    "layer_stats_every_steps": _COUNT,
}


def _merge(into: ml_collections.ConfigDict, extra: ml_collections.ConfigDict) -> None:
    for key, value in extra.items():
        if isinstance(value, ml_collections.ConfigDict) and key in into:
            _merge(into[key], value)
        else:
            into[key] = value


def base_config(task: str | None = None) -> ml_collections.ConfigDict:
    """Every key a run of `task` reads, with defaults: the runner's keys plus the task's own
    (`Task.config_defaults()`, e.g. `optimizer`, `loss`, `decoding`, `data.tokenizer`)."""
    config = runner_config()
    config.task = task or config.task
    _merge(config, registry.task_class(config.task).config_defaults())
    return config


def _check_keys(
    config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict, where: str
) -> None:
    """Unknown keys, and values where the defaults have groups of keys."""
    for key in config.keys():
        if key not in defaults:
            raise ConfigError(
                f"unknown config key '{where}{key}'{registry.did_you_mean(key, defaults.keys())}"
            )
        value, expected = config[key], defaults[key]
        if isinstance(expected, ml_collections.ConfigDict):
            if where + key == "model":  # the Model's fields: dlx.models.check_config
                continue
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(
                    f"config key '{where}{key}' must be a group of keys, got {value!r}"
                )
            _check_keys(value, expected, f"{where}{key}.")


def _check_values(
    config: ml_collections.ConfigDict,
    defaults: ml_collections.ConfigDict,
    rules: dict[str, schema.Rule],
    where: str = "",
) -> None:
    """Every value outside `model` by its rule, else by the type of its default."""
    for key, default in defaults.items():
        path = where + key
        if isinstance(default, ml_collections.ConfigDict):
            if path != "model":
                _check_values(config[key], default, rules, f"{path}.")
            continue
        schema.check(path, config[key], rules.get(path) or schema.from_default(default))


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
                default = models.model_defaults(config.model.name).get(keys[1], dataclasses.MISSING)
                if default is not dataclasses.MISSING:
                    config.model[keys[1]] = default
        node = config
        for depth, key in enumerate(keys):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                choices = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                if keys[:depth] == ["model"] and config.model.get("name") in models.available():
                    choices += sorted(models.model_defaults(config.model.name))
                parent = ".".join(keys[:depth]) or "the top level"
                raise ConfigError(
                    f"--config.{path}: the config has no key '{key}' under {parent}"
                    f"{registry.did_you_mean(key, choices)}"
                )
            node = node[key]


def _check_missing(
    config: ml_collections.ConfigDict,
    defaults: ml_collections.ConfigDict,
    task: str,
    where: str = "",
) -> None:
    for key, expected in defaults.items():
        if key not in config:
            raise ConfigError(
                f"the config lacks key '{where}{key}' that task '{task}' reads; "
                f"start the config from base_config('{task}')"
            )
        if isinstance(expected, ml_collections.ConfigDict) and where + key != "model":
            _check_missing(config[key], expected, task, f"{where}{key}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first problem found; changes nothing."""
    if "task" not in config:
        raise ConfigError("the config has no key 'task'; start it from base_config()")
    task = registry.task_class(config.task)
    defaults = base_config(config.task)
    _check_keys(config, defaults, "")
    _check_missing(config, defaults, config.task)
    _check_values(config, defaults, {**RUNNER_RULES, **task.config_rules})
    if config.train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError(
            "set config.train_steps or config.num_epochs (> 0; train_steps wins when "
            f"both are), got train_steps={config.train_steps}, "
            f"num_epochs={config.num_epochs}"
        )
    window = tuple(config.profile_steps)
    if window != (0, 0) and not (len(window) == 2 and 0 < window[0] <= window[1]):
        raise ConfigError(
            f"config.profile_steps must be (first, last) with 0 < first <= last, "
            f"or (0, 0) for no trace; got {window}"
        )
    if config.layer_stats_every_steps and getattr(task, "layer_stats", None) is None:
        raise ConfigError(
            f"task '{config.task}' does not report per-layer statistics; set "
            f"config.layer_stats_every_steps=0"
        )
    task.check_config(config)


def validate_for_mesh(config: ml_collections.ConfigDict, data_parallel: int, process_count: int):
    """Global batch sizes must split evenly over the data-parallel devices and the processes."""
    for key in ("batch_size", "eval_batch_size"):
        size = config.data[key]
        unit = math.lcm(data_parallel, process_count)
        if size % unit:
            raise ConfigError(
                f"config.data.{key}={size} is not divisible by the data-parallel size {data_parallel} "
                f"(mesh data x fsdp) and {process_count} process(es); use a multiple of {unit}, "
                f"e.g. {max(unit, size // unit * unit)}"
            )


def resumable_changes(config: ml_collections.ConfigDict) -> frozenset[str]:
    """Keys a re-run of this config may change on its workdir: the runner's and its task's."""
    return RESUMABLE_CHANGES | registry.task_class(config.task).resumable_keys


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
    values.setdefault("profile_steps", [0, 0])  # likewise
    if isinstance(values.get("task"), str):
        _update_saved_keys(values, values["task"])
    return ml_collections.ConfigDict(_tuples(values))


def _update_saved_keys(values: dict, task: str) -> None:
    """Brings a config.json of an older dlx to today's keys, so those runs resume and
    reproduce: `LEGACY_KEYS` that `task` does not declare go, `ADDED_KEYS` that it declares and
    the file lacks come in with their defaults."""
    try:
        schema = base_config(task)
    except ConfigError:
        return  # validation reports the unknown task
    for path in (*LEGACY_KEYS, *ADDED_KEYS):
        *groups, key = path.split(".")
        node, known = values, schema
        for group in groups:
            node, known = node.get(group, {}), known.get(group, {})
        if not isinstance(node, dict):
            continue
        if path in LEGACY_KEYS and key in node and key not in known:
            del node[key]
        elif path in ADDED_KEYS and key not in node and key in known:
            default = known[key]
            node[key] = default.to_dict() if hasattr(default, "to_dict") else default


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
