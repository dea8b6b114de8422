"""Orbax checkpoints: the train state plus the data iterator's position, saved asynchronously.

Restoring goes into an abstract target whose leaves carry the *current* mesh's shardings, so a
run saved on 8 devices resumes on 1 and the other way round.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
    def __init__(self, directory: str, *, keep_latest: int, best_metric: str, best_mode: str,
                 read_only: bool = False):
        preserve = [policies.LatestN(n=max(1, keep_latest))]
        if best_metric:
            preserve.append(policies.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric], reverse=best_mode == "min",
                n=1, keep_checkpoints_without_metrics=False))
        self.best_metric = best_metric
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
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state, shardings)
        items = {"state": ocp.args.StandardRestore(target)}
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored.get("data") if with_data else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
