"""Orbax checkpoints: the train state plus the data iterator's position, saved asynchronously.

Restoring goes into an abstract target whose leaves carry the *current* mesh's shardings, so a
run saved on 8 devices resumes on 1 and the other way round.

`config.init_from` (`warm_start_step`, `restore_items`) starts a new run from another run's
latest checkpoint: the items of its state the task names (`Task.warm_start_items`, e.g. params
and batch statistics) only; the rest of the state, the step and the data position start afresh.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from dlx.errors import ConfigError

def _restore_target(abstract: Any, shardings: Any) -> Any:
    """Abstract leaves carrying this run's shardings: what Orbax restores into."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract, shardings)


def _state_dir(workdir: str, step: int) -> epath.Path:
    return epath.Path(os.path.abspath(workdir)) / "checkpoints" / str(step) / "state"


@contextlib.contextmanager
def _absl_warnings_silenced(silenced: bool):
    previous = absl_logging.get_verbosity()
    if silenced:
        absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


class Checkpointer:
    def __init__(self, directory: str, *, keep_latest: int, best_metric: str, best_mode: str,
                 read_only: bool = False):
        preserve = [policies.LatestN(n=max(1, keep_latest))]
        if best_metric:
            preserve.append(policies.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min",
                n=1, keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
        # Orbax warns that a read-only manager saves nothing: what it is asked for (eval, sample).
        with _absl_warnings_silenced(read_only):
            self.manager = ocp.CheckpointManager(
                os.path.abspath(directory),
                options=ocp.CheckpointManagerOptions(
                    create=not read_only, read_only=read_only, enable_async_checkpointing=True,
                    preservation_policy=policies.AnyPreservationPolicy(preserve)))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None,
             eval_metrics: dict | None = None, *, wait: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        metrics = eval_metrics if eval_metrics and self.best_metric in eval_metrics else None
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        if wait:
            self.manager.wait_until_finished()

    def restore(self, abstract_state: Any, shardings: Any, step: int | None = None,
                with_data: bool = True) -> tuple[Any, dict | None]:
        """The state at `step` (default: latest), laid out with `shardings`, and the data state."""
        step = self.manager.latest_step() if step is None else step
        target = _restore_target(abstract_state, shardings)
        items = {"state": ocp.args.StandardRestore(target)}
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored.get("data") if with_data else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def finished_step(directory: str) -> int | None:
    """The latest finished checkpoint step under `directory`, or None; creates nothing."""
    if not os.path.isdir(directory):
        return None
    return max(ocp.utils.checkpoint_steps(directory), default=None)


def _named_leaves(tree: Any) -> dict[str, Any]:
    """{'params/Dense_0/kernel': leaf, ...}"""
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _item(state: Any, name: str) -> Any:
    return state[name] if isinstance(state, dict) else getattr(state, name)


def warm_start_step(workdir: str, abstract_state: Any, items: tuple[str, ...]) -> int:
    """The step of `workdir`'s latest checkpoint, after checking that its state's `items` have
    exactly the names, shapes and dtypes of `abstract_state`'s; raises ConfigError (naming
    what differs) otherwise. Reads metadata only."""
    where = f"config.init_from='{workdir}'"
    step = finished_step(os.path.join(workdir, "checkpoints"))
    if step is None:
        raise ConfigError(f"{where} holds no finished checkpoint; give the workdir of a run that "
                          f"has saved one (its checkpoints/ folder)")
    stored = ocp.PyTreeCheckpointHandler().metadata(_state_dir(workdir, step))
    stored = _named_leaves({k: stored[k] for k in items if k in stored})
    wanted = _named_leaves({k: _item(abstract_state, k) for k in items})
    missing = sorted(wanted.keys() - stored.keys())
    extra = sorted(stored.keys() - wanted.keys())
    if missing or extra:
        raise ConfigError(f"{where} (step {step}) does not hold this model's variables: "
                          f"missing {missing[:3]}, not in this model {extra[:3]}; init_from needs "
                          f"the same model config")
    for name, leaf in wanted.items():
        have = stored[name]
        if tuple(have.shape) != tuple(leaf.shape) or have.dtype != leaf.dtype:
            raise ConfigError(f"{where} (step {step}): '{name}' is {have.dtype}{list(have.shape)} "
                              f"there but {leaf.dtype}{list(leaf.shape)} in this model; init_from "
                              f"needs the same model config")
    return step


def restore_items(workdir: str, step: int, abstract_state: Any, shardings: Any,
                  items: tuple[str, ...]) -> dict:
    """{item: ...} of `workdir`'s checkpoint `step` for each of `items`, laid out with
    `shardings` (this run's mesh); check it first with `warm_start_step`."""
    target = {k: _restore_target(_item(abstract_state, k), _item(shardings, k)) for k in items
              if jax.tree.leaves(_item(abstract_state, k))}  # e.g. a model without model state
    restored = ocp.PyTreeCheckpointer().restore(
        _state_dir(workdir, step), args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    return {**{k: _item(abstract_state, k) for k in items if k not in target}, **restored}
