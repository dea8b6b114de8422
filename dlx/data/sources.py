"""Sources beyond random access to a TFDS split, for a task's `source(split, train=...)`:

- `WholeBatchSource`: the whole data set is one batch (a graph: node features, adjacency rows and
  labels, with the rows a split scores marked in `mask`). Every train step gets all of it, and
  eval is that one batch too.
- `GeneratedSource`: examples drawn on the fly (noise, pairs) by a function of a numpy
  Generator; train batch `step` depends only on (the source's seed, the run's seed, step).

Both make their own global batches (`global_batch(step, batch_size, seed)`, which
`pipeline.train_iterator` calls in place of shuffling indices), so their iterators keep the
same state as any other (`{"next_index": step}`), checkpointed and restored by the runner. Both
are also random-access sources (`len`, `source[i]`, `read_rows`): the runner reads `source[0]`
to learn the batch's shapes, and `pipeline.eval_batches` reads them in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dlx.data.pipeline import ArraySource, Batch
from dlx.errors import ConfigError

MASK = "mask"  # the boolean column of the rows that count (in eval batches: also not padding)


class WholeBatchSource(ArraySource):
    """A data set whose batch is all of it: `columns` hold one row per node (example) along
    axis 0, e.g. features [N, F], adjacency [N, N] and labels [N]; `mask` [N] (default all True)
    marks the rows this split scores (the train nodes in the train split's source, the test
    nodes in the eval split's), and every batch carries it as its "mask" column.

    The global batch size must be N (`check_batch_size`; call it from the task's `source` or
    `check_for_mesh` so a wrong one is refused before the workdir is touched), and N must split
    evenly over the data-parallel devices (pad with rows outside the mask if it does not).
    Each process gets its share of the rows; the runner assembles them into the global batch.
    Eval reads the source as one batch, whatever the eval batch size.
    """

    one_batch = True

    def __init__(self, columns: Mapping[str, np.ndarray], mask: np.ndarray | None = None):
        if MASK in columns:
            raise ValueError(f"'{MASK}' is the split's row mask; pass it as `mask`, not a column")
        size = len(next(iter(columns.values()))) if columns else 0
        mask = np.ones(size, bool) if mask is None else np.asarray(mask)
        if mask.dtype != bool or mask.shape != (size,):
            raise ValueError(
                f"mask must be a boolean array of the {size} rows, got {mask.dtype} {mask.shape}"
            )
        super().__init__({**columns, MASK: mask})

    def check_batch_size(self, batch_size: int, key: str = "config.data.batch_size") -> None:
        if batch_size != len(self):
            raise ConfigError(
                f"{key}={batch_size}, but this data set is one batch of "
                f"{len(self)} rows; set {key}={len(self)}"
            )

    def global_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """Every step's batch: all of it (`step` and `seed` change nothing)."""
        self.check_batch_size(batch_size)
        return dict(self.columns)


class GeneratedSource:
    """Examples drawn on the fly by `draw(rng: np.random.Generator, count) -> {name: [count,
    ...]}` (noise for a generator, (x, f(x) + noise) pairs ...).

    Train batch `step` is `draw(Generator(seed, run seed, step), batch_size)`: every process draws
    the same global batch and keeps its rows, so the batches depend on neither the process count
    nor the order of reading, and resuming at a step redraws exactly what an uninterrupted run
    saw. As a random-access source it holds `num_examples` fixed examples, drawn once from
    `seed` alone (a separate stream from the train batches): the eval split, and the size of an
    "epoch" for durations given in epochs.
    """

    def __init__(
        self,
        draw: Callable[[np.random.Generator, int], Mapping[str, np.ndarray]],
        num_examples: int,
        seed: int = 0,
    ):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        self.draw = draw
        self.num_examples = num_examples
        self.seed = seed
        self._fixed: ArraySource | None = None

    def _drawn(self, entropy: list[int], stream: int, count: int) -> Batch:
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(stream,)))
        columns = {key: np.asarray(value) for key, value in self.draw(rng, count).items()}
        wrong = {
            key: value.shape
            for key, value in columns.items()
            if value.ndim == 0 or len(value) != count
        }
        if not columns or wrong:
            raise ValueError(
                f"draw(rng, {count}) must return arrays of {count} rows, got {wrong or 'nothing'}"
            )
        return ArraySource(columns).columns  # in batch dtypes (int64 -> int32 ...)

    def global_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self._drawn([self.seed, seed, step], 0, batch_size)

    @property
    def fixed(self) -> ArraySource:
        """The `num_examples` fixed examples."""
        if self._fixed is None:
            self._fixed = ArraySource(self._drawn([self.seed], 1, self.num_examples))
        return self._fixed

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Batch:
        return self.fixed[index]

    def read_rows(self, indices: np.ndarray) -> Batch:
        return self.fixed.read_rows(indices)
