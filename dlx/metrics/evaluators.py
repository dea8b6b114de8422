"""The evaluator contract, and the evaluator of every metric that is a ratio of sums.

The runner drives an evaluator over the eval split:

    acc = evaluator.init()
    for batch in eval split:                # global batches, sharded over the mesh
        acc = evaluator.update(acc, state, batch)
    acc = evaluator.merge(acc)              # combine with the other processes' accumulators
    metrics = evaluator.result(acc)         # {name: float}, written to metrics.jsonl
    evaluator.write_artifacts(acc, state, workdir, step)   # figures, samples (process 0 writes)

The accumulator is whatever the evaluator needs: running sums on device (`BatchSums`), the
predictions and boxes of every image (mAP), features of generated and real images (FID).
`merge` is where a non-additive evaluator gathers what each process saw (e.g. with
`jax.experimental.multihost_utils.process_allgather`); an accumulator of global arrays is already
the same on every process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from dlx import runtime


class Evaluator(Protocol):
    def init(self) -> Any: ...

    def update(self, acc: Any, state: Any, batch: dict) -> Any: ...

    def merge(self, acc: Any) -> Any: ...

    def result(self, acc: Any) -> dict[str, float]: ...

    def write_artifacts(self, acc: Any, state: Any, workdir: str, step: int) -> None: ...


class BatchSums:
    """Metrics that are functions of sums over examples (mean loss, accuracy, error rates, a
    confusion matrix): `batch_sums(state, batch) -> {name: array}` is jitted and summed over the
    split on device; `summarize(host_sums) -> {name: float}` turns the totals into metrics.
    `artifacts(state, host_sums, workdir, step)`, if given, writes figures or samples."""

    def __init__(
        self,
        batch_sums: Callable[[Any, dict], dict],
        summarize: Callable[[dict], dict[str, float]],
        artifacts: Callable[[Any, dict, str, int], None] | None = None,
    ):
        self._batch_sums = jax.jit(batch_sums, compiler_options=runtime.compiler_options())
        self._summarize = summarize
        self._artifacts = artifacts

    def init(self) -> dict | None:
        return None

    def update(self, acc: dict | None, state: Any, batch: dict) -> dict:
        sums = self._batch_sums(state, batch)
        return sums if acc is None else jax.tree.map(jax.numpy.add, acc, sums)

    def merge(self, acc: dict | None) -> dict | None:
        # The sums are global arrays (the jitted step reduced over the whole sharded batch), the
        # same on every process: nothing to combine, only to bring to the host.
        return jax.device_get(acc)

    def result(self, acc: dict | None) -> dict[str, float]:
        if acc is None:
            raise ValueError("the eval split gave no batches")
        return self._summarize(acc)

    def write_artifacts(self, acc: dict, state: Any, workdir: str, step: int) -> None:
        if self._artifacts is not None:
            self._artifacts(state, acc, workdir, step)


class PerExample:
    """Metrics of the whole split's per-example values (a median, an AUROC, an importance-
    sampled likelihood): `per_example(state, batch, rng) -> {name: [B, ...]}` is jitted with
    replicated outputs, the rows that are not padding are kept on the host, and
    `summarize({name: [N, ...]}) -> {name: float}` reduces them. `rng` is fixed per batch
    (`fold_in(key(seed), batch index)`), so the score of a state never changes between evals.
    `artifacts(state, values, workdir, step)`, if given, writes figures."""

    def __init__(
        self,
        per_example: Callable[[Any, dict, jax.Array], dict],
        summarize: Callable[[dict], dict[str, float]],
        artifacts: Callable[[Any, dict, str, int], None] | None = None,
        seed: int = 0,
    ):
        def with_mask(state, batch, rng):
            return {**per_example(state, batch, rng), "_mask": batch["mask"]}

        self._per_example = jax.jit(
            with_mask,
            out_shardings=jax.sharding.PartitionSpec(),
            compiler_options=runtime.compiler_options(),
        )
        self._summarize = summarize
        self._artifacts = artifacts
        self._key = jax.random.PRNGKey(seed)

    def init(self) -> list:
        return []

    def update(self, acc: list, state: Any, batch: dict) -> list:
        rng = jax.random.fold_in(self._key, len(acc))
        values = jax.device_get(self._per_example(state, batch, rng))
        keep = np.asarray(values.pop("_mask")).astype(bool)
        return [*acc, {k: np.asarray(v)[keep] for k, v in values.items()}]

    def merge(self, acc: list) -> dict:
        # Replicated outputs: every process already holds the values of every batch.
        if not acc:
            raise ValueError("the eval split gave no batches")
        return {k: np.concatenate([part[k] for part in acc]) for k in acc[0]}

    def result(self, acc: dict) -> dict[str, float]:
        return self._summarize(acc)

    def write_artifacts(self, acc: dict, state: Any, workdir: str, step: int) -> None:
        if self._artifacts is not None:
            self._artifacts(state, acc, workdir, step)
