"""Data: TFDS builders for the offline corpora, name resolution, and grain input pipelines.

    prepare("fashion_mnist")                       # idempotent; writes array_record files
    train = source("fashion_mnist", "train")       # random access, in memory when small
    batches = train_iterator(train, global_batch_size=128, seed=0)

Names: dlx's offline data sets (`OFFLINE_BUILDERS`: fashion_mnist, mnist5k, digits, diabetes,
shakespeare, kjv_bible, cmudict, fashion_mnist_detection made from the first two, and the graphs
karate_club, les_miserables, drosophila_connectome of `dlx.data.graphs`) are built from files
on this machine; every other name goes to the TFDS
catalog (which downloads, so it needs internet). `fashion_mnist` is built from the local IDX files
when they exist, and is the catalog's `fashion_mnist` otherwise. Text data sets have readers,
language-model windows and G2P arrays in `dlx.data.text`, tokenizers in `dlx.data.tokenizers`.
A task may also train on the whole data set as one batch (a graph) or on examples drawn on the
fly: `WholeBatchSource` and `GeneratedSource` in `dlx.data.sources`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import socket
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dlx.data.builders import OFFLINE_BUILDERS, missing_hint, offline_files_present
from dlx.data.pipeline import (
    ArraySource,
    Batch,
    NumpyRecords,
    RandomAccessSource,
    batch_dtype,
    eval_batches,
    load_into_memory,
    num_eval_batches,
    read_rows,
    train_iterator,
)
from dlx.data.sources import GeneratedSource, WholeBatchSource
from dlx.errors import DataError

__all__ = [
    "ArraySource",
    "Batch",
    "DataInfo",
    "FeatureInfo",
    "GeneratedSource",
    "NumpyRecords",
    "OFFLINE_BUILDERS",
    "RandomAccessSource",
    "WholeBatchSource",
    "default_data_dir",
    "eval_batches",
    "get_builder",
    "info",
    "load_into_memory",
    "num_eval_batches",
    "prepare",
    "read_rows",
    "source",
    "train_iterator",
]

FILE_FORMAT = "array_record"
IN_MEMORY_MAX_BYTES = 1 << 30  # `source` loads a split into memory when its files are this small


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _offline_names() -> str:
    return ", ".join(OFFLINE_BUILDERS)


def _internet_reachable(timeout_s: float = 3.0) -> bool:
    """A quick look before a catalog download, which offline retries for minutes before failing.
    Behind a proxy it answers yes and lets TFDS (whose requests use the proxy) find out."""
    if any(
        os.environ.get(var)
        for var in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
    ):
        return True
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # TFDS's `is_prepared` logs a warning for every directory it finds empty; look first.
    return builder.data_path.exists() and builder.is_prepared()


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder behind `name` (not prepared yet, perhaps)."""
    data_dir = data_dir or default_data_dir()
    if name in OFFLINE_BUILDERS:
        builder = OFFLINE_BUILDERS[name](data_dir=data_dir, file_format=FILE_FORMAT)
        # fashion_mnist alone has a catalog twin to fall back on when the local files are absent.
        if (
            name != "fashion_mnist"
            or _is_prepared(builder)
            or offline_files_present(name, data_dir)
        ):
            return builder
    try:
        return tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
    except tfds.core.DatasetNotFoundError as error:
        raise DataError(
            f"unknown data set {name!r}: dlx builds {_offline_names()} offline and "
            f"sends other names to the TFDS catalog, which has no {name!r} "
            f"either"
        ) from error
    except Exception as error:  # bad config name, missing optional dependency, ...
        raise DataError(f"TFDS cannot build data set {name!r}: {_one_line(error)}") from error


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Generates (or downloads) `name` as array_record files unless already there; returns its
    builder. Not safe to run from several processes at once on one data_dir: prepare first."""
    data_dir = data_dir or default_data_dir()
    builder = get_builder(name, data_dir)
    if _is_prepared(builder):
        return builder
    offline_source_missing = name in OFFLINE_BUILDERS and not offline_files_present(name, data_dir)
    if offline_source_missing and (name != "fashion_mnist" or not _internet_reachable()):
        raise DataError(missing_hint(name, data_dir))
    if name not in OFFLINE_BUILDERS and not _internet_reachable():
        raise DataError(
            f"{name!r} is a TFDS catalog data set, not prepared in "
            f"{builder.data_dir} and this machine has no internet to download it; "
            f"dlx's offline data sets are {_offline_names()}"
        )
    try:
        builder.download_and_prepare(file_format=FILE_FORMAT)
    except DataError:
        raise
    except Exception as error:
        if offline_source_missing:
            raise DataError(
                f"{missing_hint(name, data_dir)} (TFDS download failed: {_one_line(error)})"
            ) from error
        if name in OFFLINE_BUILDERS:
            raise  # the local files are there, so this is a bug: keep the traceback
        raise DataError(
            f"TFDS could not download and prepare {name!r}: {_one_line(error)}"
        ) from error
    return builder


def _split_num_bytes(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Bytes on disk of the splits named in `split` ("train", "train[:10%]", "train+test")."""
    total = 0
    for part in split.split("+"):
        base = part.split("[", 1)[0].strip()
        if base not in builder.info.splits:
            raise DataError(
                f"{builder.name} has no split {base!r}; it has {', '.join(builder.info.splits)}"
            )
        total += builder.info.splits[base].num_bytes
    return total


_in_memory_splits: dict[tuple[str, str], ArraySource] = {}
COLUMN_CACHE_VERSION = 1


def _column_cache(builder: tfds.core.DatasetBuilder, split: str) -> tuple[Path, str]:
    """(path, fingerprint) of the decoded-columns cache of `split`: an .npz beside the TFDS files,
    valid while the split's record files keep their names, sizes and modification times."""
    data_path = Path(os.fspath(builder.data_path))
    bases = {part.split("[", 1)[0].strip() for part in split.split("+")}
    records = sorted(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in data_path.iterdir()
        if any(p.name.startswith(f"{builder.name}-{base}.") for base in bases)
    )
    fingerprint = hashlib.sha256(
        "\n".join([str(COLUMN_CACHE_VERSION), split, *records]).encode()
    ).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", split)
    return data_path / f"dlx-columns-{slug}.npz", fingerprint


def _load_columns(builder: tfds.core.DatasetBuilder, split: str) -> ArraySource:
    """The split decoded into memory. Decoding TFDS records one by one is slow (CMUdict's
    125k words: ~9 s), so the columns are kept in an .npz beside the data set after the first
    load; a changed data set, an unreadable cache or a read-only data directory only means
    decoding again."""
    path, fingerprint = _column_cache(builder, split)
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["__fingerprint__"]) == fingerprint:
                return ArraySource({k: cached[k] for k in cached.files if k != "__fingerprint__"})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    loaded = load_into_memory(builder.as_data_source(split=split))
    if all(column.dtype.kind != "O" for column in loaded.columns.values()):
        try:  # written whole, then renamed: a reader never sees half a file
            handle, staging = tempfile.mkstemp(prefix=".dlx-columns-", dir=path.parent)
            with os.fdopen(handle, "wb") as f:
                np.savez(f, __fingerprint__=np.array(fingerprint), **loaded.columns)
            os.chmod(staging, 0o644)  # as readable as the data set (mkstemp makes it 0600)
            os.replace(staging, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(staging)
    return loaded


def source(
    name: str, split: str, data_dir: str | None = None, *, in_memory: bool | None = None
) -> RandomAccessSource:
    """Random-access examples of one split (prepared first if needed), records as dicts of numpy
    values in batch dtypes. `in_memory=None` reads the split into an `ArraySource` when its files
    hold at most IN_MEMORY_MAX_BYTES; that copy is kept (read-only) for later calls."""
    builder = prepare(name, data_dir)
    num_bytes = _split_num_bytes(builder, split)
    if in_memory is None:
        in_memory = num_bytes <= IN_MEMORY_MAX_BYTES
    if not in_memory:
        return NumpyRecords(builder.as_data_source(split=split))
    key = (os.fspath(builder.data_path), split)
    if key not in _in_memory_splits:
        split_source = _load_columns(builder, split)
        for column in split_source.columns.values():
            column.setflags(write=False)
        _in_memory_splits[key] = split_source
    return _in_memory_splits[key]


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    shape: tuple[int | None, ...]
    dtype: np.dtype  # as in the batches (see `batch_dtype`)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    name: str
    num_examples: dict[str, int]
    features: dict[str, FeatureInfo]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None


def info(name: str, data_dir: str | None = None) -> DataInfo:
    """Split sizes, feature shapes/dtypes and classes of `name` (prepared first if needed)."""
    tfds_info = prepare(name, data_dir).info
    features = {
        key: FeatureInfo(tuple(feature.shape), batch_dtype(feature.np_dtype))
        for key, feature in tfds_info.features.items()
    }
    labels = [
        feature
        for key, feature in tfds_info.features.items()
        if isinstance(feature, tfds.features.ClassLabel)
    ]
    label = labels[0] if len(labels) == 1 else None
    return DataInfo(
        name=name,
        num_examples={
            split: split_info.num_examples for split, split_info in tfds_info.splits.items()
        },
        features=features,
        num_classes=label.num_classes if label else None,
        class_names=tuple(label.names) if label else None,
    )
