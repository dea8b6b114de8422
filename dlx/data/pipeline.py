"""Input pipelines on grain: batches are dicts of numpy arrays holding this process's rows.

A source is anything with random access: `len(source)` and `source[i] -> dict of arrays`
(a `tfds.data_source`, or an `ArraySource` holding a whole split in memory). Features must be flat
(one array per key) with fixed shapes. Rows are stacked along a new leading axis, and 64-bit
numbers narrowed to what JAX uses by default (int64 -> int32, float64 -> float32). A source may
also make its own global train batches, `global_batch(step, batch_size, seed)` (the whole data
set as one batch, examples drawn on the fly: `dlx.data.sources`), and a boolean "mask" column
marks rows that eval batches do not count.

Reading through a TFDS data source costs ~25-40 us per record in TFDS's Python deserialisation
(~190 batches/s of 128 on one core), so small splits are better read once into an `ArraySource`:
then a batch is one fancy-indexing copy per feature.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np

Batch = dict[str, np.ndarray]

_NARROWER = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.float32)}


def batch_dtype(dtype: Any) -> np.dtype:
    """The dtype a feature of `dtype` has in the batches."""
    dtype = np.dtype(dtype)
    return _NARROWER.get(dtype, dtype)


class RandomAccessSource(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


class ArraySource:
    """A split held in memory: one array per feature, examples along axis 0."""

    def __init__(self, columns: Mapping[str, np.ndarray]):
        lengths = {key: len(column) for key, column in columns.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"ArraySource needs columns of one common length, got {lengths}")
        self.columns = {
            key: np.asarray(column, batch_dtype(np.asarray(column).dtype))
            for key, column in columns.items()
        }
        self._length = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Batch:
        return {key: column[index] for key, column in self.columns.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[Batch]:
        return [self[index] for index in indices]

    def read_rows(self, indices: np.ndarray) -> Batch:
        # np.take copies whole rows; fancy indexing of a [N, 28, 28, 1] column took 2x as long.
        return {key: np.take(column, indices, axis=0) for key, column in self.columns.items()}


def _as_batch_dtypes(record: Mapping[str, Any]) -> Batch:
    return {
        key: np.asarray(value).astype(batch_dtype(np.asarray(value).dtype), copy=False)
        for key, value in record.items()
    }


class NumpyRecords:
    """Wraps a record source (a `tfds.data_source`) so that every record is a dict of numpy
    values in batch dtypes: `source[0]` then tells the shapes and dtypes of a batch's rows."""

    def __init__(self, records: RandomAccessSource):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Batch:
        return _as_batch_dtypes(self.records[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Batch]:
        getitems = getattr(self.records, "__getitems__", None)
        records = getitems(list(indices)) if getitems else [self.records[i] for i in indices]
        return [_as_batch_dtypes(record) for record in records]


def stack_rows(rows: Sequence[Mapping[str, Any]]) -> Batch:
    batch = {}
    for key in rows[0]:
        column = np.stack([np.asarray(row[key]) for row in rows])
        batch[key] = column.astype(batch_dtype(column.dtype), copy=False)
    return batch


def read_rows(source: RandomAccessSource, indices: np.ndarray) -> Batch:
    """The rows `indices` of `source`, stacked; one bulk read where the source offers one
    (its own `read_rows(indices) -> Batch`, as `ArraySource` and `text.WindowSource` have)."""
    bulk_read = getattr(source, "read_rows", None)
    if bulk_read is not None:
        return bulk_read(np.asarray(indices))
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return stack_rows(getitems(keys) if getitems else [source[i] for i in keys])


def load_into_memory(source: RandomAccessSource, chunk_size: int = 4096) -> ArraySource:
    """Reads every record of `source` once, in order (Fashion-MNIST train: ~1.5 s)."""
    chunks = [
        read_rows(source, np.arange(start, min(start + chunk_size, len(source))))
        for start in range(0, len(source), chunk_size)
    ]
    if not chunks:
        raise ValueError("cannot load an empty source into memory")
    return ArraySource({key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]})


def _process_rows(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of each global batch that belong to this process."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of "
            f"the process count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} not in [0, {process_count})")
    local = global_batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    # The legacy RandomState stream is frozen across NumPy versions.
    permutation = np.random.RandomState([seed, epoch]).permutation(num_examples)
    permutation.setflags(write=False)  # shared by the reading threads through the cache
    return permutation


def shuffled_batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of global batch `step`: each epoch is a fresh seeded permutation of the
    examples, epochs are concatenated and cut into batches, so a batch may straddle epochs.
    The result may be a read-only view of the cached permutation."""
    epoch, start = divmod(step * batch_size, num_examples)
    if start + batch_size <= num_examples:  # the usual case: the batch lies within one epoch
        return _epoch_permutation(num_examples, seed, epoch)[start : start + batch_size]
    epochs, offsets = np.divmod(np.arange(step * batch_size, (step + 1) * batch_size), num_examples)
    return np.concatenate(
        [
            _epoch_permutation(num_examples, seed, int(epoch))[offsets[epochs == epoch]]
            for epoch in np.unique(epochs)
        ]
    )


def train_iterator(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """Endless shuffled batches, reshuffled every epoch (see `shuffled_batch_indices`).

    Every process draws the same global batches of indices from `seed` and reads only its own
    rows. The iterator's `get_state()` is a small JSON-able dict (`{"next_index": step}`);
    `set_state()` on a fresh iterator built with the same arguments resumes exactly. A source
    with its own `global_batch(step, batch_size, seed)` is not shuffled: batch `step` is that
    (this process's rows of it), with the same iterator state; one that also has
    `batch_rows(step, batch_size, seed, rows)` makes only this process's rows of it
    (`augment.AugmentedSource`).

    `num_threads` reader threads (and `prefetch` batches) serve record sources such as TFDS; a
    source with a bulk `read_rows` (an `ArraySource`, a `text.WindowSource`) is read on the
    calling thread, as the step runs asynchronously anyway.

    The step -> indices map is computed here with one numpy permutation per epoch rather than with
    `MapDataset.range(n).shuffle(seed).repeat(None).batch(b)`, whose per-index Python path costs
    ~7 us, i.e. ~1 ms of CPU per batch of 128 (which capped the pipeline at ~900 batches/s).
    """
    if len(source) == 0:
        raise ValueError("cannot train on an empty source")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    rows = _process_rows(global_batch_size, process_index, process_count)
    num_examples = len(source)
    own_batch = getattr(source, "global_batch", None)
    own_rows = getattr(source, "batch_rows", None)
    if hasattr(source, "check_batch_size"):  # refused now rather than at the first batch
        source.check_batch_size(global_batch_size)

    def read_batch(step: int) -> Batch:
        if own_rows is not None:
            return own_rows(step, global_batch_size, seed, rows)
        if own_batch is not None:
            return {
                key: column[rows]
                for key, column in own_batch(step, global_batch_size, seed).items()
            }
        indices = shuffled_batch_indices(num_examples, global_batch_size, seed, step)
        return read_rows(source, indices[rows])

    if getattr(source, "read_rows", None) is not None:
        # A bulk read is one numpy gather (~20 us a batch): handing it to reader threads costs
        # more CPU than it saves, and on a small machine that CPU is taken from the train step.
        num_threads = 0
    batches = grain.MapDataset.range(sys.maxsize).map(read_batch)
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(read_options))


def num_eval_batches(source: RandomAccessSource, global_batch_size: int) -> int:
    if getattr(source, "one_batch", False):
        return 1
    return -(-len(source) // global_batch_size)


def eval_batches(
    source: RandomAccessSource,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The split once, in order, in global batches of which this process gets its rows.

    Every batch has a boolean `mask`; the last global batch is padded to full size with copies
    of the split's last example marked False, so every process yields the same number of batches
    (`num_eval_batches`) of the same shape. Rows the source's own "mask" column marks False stay
    False. A source whose batch is all of it (`one_batch`, as `sources.WholeBatchSource`) is read
    as one batch, whatever `global_batch_size`.
    """
    if getattr(source, "one_batch", False):
        global_batch_size = len(source)
    rows = _process_rows(global_batch_size, process_index, process_count)
    size = len(source)
    for start in range(0, size, global_batch_size):
        indices = np.arange(start, start + global_batch_size)[rows]
        batch = read_rows(source, np.minimum(indices, size - 1))
        batch["mask"] = (indices < size) & batch["mask"] if "mask" in batch else indices < size
        yield batch
