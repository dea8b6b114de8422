"""Data: TFDS builders for the offline corpora, name resolution, and grain input pipelines.

    prepare("fashion_mnist")                       # idempotent; writes array_record files
    train = source("fashion_mnist", "train")       # random access, in memory when small
    batches = train_iterator(train, global_batch_size=128, seed=0)

Names: dlx's offline data sets (`OFFLINE_BUILDERS`: fashion_mnist, mnist5k, digits, diabetes)
are built from files on this machine; every other name goes to the TFDS catalog (which downloads,
so it needs internet). `fashion_mnist` is built from the local IDX files when they exist, and is
the catalog's `fashion_mnist` otherwise.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from dlx.data.builders import OFFLINE_BUILDERS, missing_hint, offline_files_present
from dlx.data.pipeline import (ArraySource, Batch, batch_dtype, eval_batches, load_into_memory,
                               num_eval_batches, read_rows, train_iterator)
from dlx.errors import DataError

__all__ = ["ArraySource", "Batch", "DataInfo", "FeatureInfo", "OFFLINE_BUILDERS", "default_data_dir",
           "eval_batches", "get_builder", "info", "load_into_memory", "num_eval_batches", "prepare",
           "read_rows", "source", "train_iterator"]

FILE_FORMAT = "array_record"
IN_MEMORY_MAX_BYTES = 1 << 30  # `source` loads a split into memory when its files are this small


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _offline_names() -> str:
    return ", ".join(OFFLINE_BUILDERS)


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder behind `name` (not prepared yet, perhaps)."""
    data_dir = data_dir or default_data_dir()
    if name in OFFLINE_BUILDERS:
        builder = OFFLINE_BUILDERS[name](data_dir=data_dir, file_format=FILE_FORMAT)
        # fashion_mnist alone has a catalog twin to fall back on when the local files are absent.
        if name != "fashion_mnist" or builder.is_prepared() or offline_files_present(name):
            return builder
    try:
        return tfds.builder(name, data_dir=data_dir, file_format=FILE_FORMAT)
    except tfds.core.DatasetNotFoundError as error:
        raise DataError(f"unknown data set {name!r}: dlx builds {_offline_names()} offline and "
                        f"sends other names to the TFDS catalog, which has no {name!r} "
                        f"either") from error
    except Exception as error:  # bad config name, missing optional dependency, ...
        raise DataError(f"TFDS cannot build data set {name!r}: {_one_line(error)}") from error


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Generates (or downloads) `name` as array_record files unless already there; returns its
    builder. Not safe to run from several processes at once on one data_dir: prepare first."""
    builder = get_builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if name in OFFLINE_BUILDERS and name != "fashion_mnist" and not offline_files_present(name):
        raise DataError(missing_hint(name))
    try:
        builder.download_and_prepare(file_format=FILE_FORMAT)
    except DataError:
        raise
    except Exception as error:
        if name in OFFLINE_BUILDERS and not offline_files_present(name):
            raise DataError(f"{missing_hint(name)} (TFDS download failed: "
                            f"{_one_line(error)})") from error
        if name in OFFLINE_BUILDERS:
            raise  # the local files are there, so this is a bug: keep the traceback
        raise DataError(f"TFDS could not download and prepare {name!r} (no internet? dlx's "
                        f"offline data sets are {_offline_names()}): {_one_line(error)}") from error
    return builder


def _split_num_bytes(builder: tfds.core.DatasetBuilder, split: str) -> int:
    base = split.split("[", 1)[0]  # "train[:10%]" -> "train"
    if base not in builder.info.splits:
        raise DataError(f"{builder.name} has no split {split!r}; it has "
                        f"{', '.join(builder.info.splits)}")
    return builder.info.splits[base].num_bytes


def source(name: str, split: str, data_dir: str | None = None, *,
           in_memory: bool | None = None):
    """Random-access examples of one split (prepared first if needed). `in_memory=None` reads the
    split into an `ArraySource` when its files hold at most IN_MEMORY_MAX_BYTES."""
    builder = prepare(name, data_dir)
    num_bytes = _split_num_bytes(builder, split)
    data_source = builder.as_data_source(split=split)
    if in_memory is None:
        in_memory = num_bytes <= IN_MEMORY_MAX_BYTES
    return load_into_memory(data_source) if in_memory else data_source


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
    features = {key: FeatureInfo(tuple(feature.shape), batch_dtype(feature.np_dtype))
                for key, feature in tfds_info.features.items()}
    labels = [feature for key, feature in tfds_info.features.items()
              if isinstance(feature, tfds.features.ClassLabel)]
    label = labels[0] if len(labels) == 1 else None
    return DataInfo(
        name=name,
        num_examples={split: split_info.num_examples
                      for split, split_info in tfds_info.splits.items()},
        features=features,
        num_classes=label.num_classes if label else None,
        class_names=tuple(label.names) if label else None)
