"""`fashion_mnist_detection`: real Fashion-MNIST and MNIST items pasted onto black canvases, with
exact boxes and class labels, for object detection.

    from dlx import data
    train = data.source("fashion_mnist_detection", "train")   # prepares it (and its sources)
    train[0]["image"], train[0]["boxes"], train[0]["labels"], train[0]["num_objects"]

Items. The 20 classes are the 10 Fashion-MNIST classes (ids 0-9, `FASHION_MNIST_CLASSES`)
followed by the 10 digits (ids 10-19, "digit 0".."digit 9"). The train canvases are made of the
items of `fashion_mnist` train (60,000) and `mnist5k` train (4,000) only, the test canvases of
their test splits (10,000 and 1,000) only; both data sets are read with `dlx.data.source` from
the same data dir (prepared first if needed).

Generator (`generate_canvases`), per canvas, drawing from `np.random.RandomState(SPLIT_SEEDS[split])`
(NumPy's legacy generator, whose streams are frozen across versions; all arithmetic below is
exact, and the records are serialized with sorted feature maps, so the files are byte-identical
on every machine):

1. the number of objects, uniform in 1..MAX_OBJECTS (6);
2. per object: a class uniform over the 20, an item uniform among that class's items, a side
   uniform in MIN_SIDE..MAX_SIDE (20..56 px); the 28x28 item is resized to side x side
   (`resize_item`: PIL's BILINEAR filter, i.e. a triangle filter with half-pixel centres, widened
   by the scale factor when shrinking, taps outside the item dropped and the weights
   renormalised; the weights in 12-bit fixed point, so the result is exact integer arithmetic)
   and cropped to the tight box of its nonzero pixels;
3. the crop's top-left corner uniform over the positions that keep it inside the canvas, redrawn
   (up to PLACEMENT_TRIES times) until the crop's box overlaps every box already placed by at
   most MAX_COVERED (40%) of the smaller box's area (so IoU <= 0.25 and every object stays mostly
   visible); an object that finds no place is left out, so a canvas may hold fewer objects than
   drawn, never fewer than one;
4. pasted with max() blending onto the black (0) canvas.

Boxes are float32 (x_min, y_min, x_max, y_max) in continuous pixel-edge coordinates: pixel (row r,
column c) covers [c, c + 1) x [r, r + 1), so the whole canvas is [0, 0, 96, 96] and a box's width
is x_max - x_min (COCO's convention since 2.0: [x, y, w, h] = [x_min, y_min, x_max - x_min,
y_max - y_min], no +1). Each box is the exact tight box of its item's nonzero pixels as pasted.

Features (every one a fixed-shape array): `image` uint8 [96, 96, 1]; `boxes` float32 [6, 4], rows
past `num_objects` zero; `labels` int32 [6], -1 past `num_objects`; `num_objects` int32 [].
Objects are in placement order (later ones pasted over earlier ones). Splits: train 24,000
canvases, test 4,000, records in generation order.

Measured (2-core machine, busy): `python -m dlx.data prepare fashion_mnist_detection` takes 28 s
(13 s CPU) with fashion_mnist and mnist5k prepared, 39 s without; 66 MB on disk. Train holds
3.46 objects per canvas on average (6-object canvases 3,478 of 24,000: some sixth objects find no
place), each class 4,000-4,300 objects, box sides 4-56 px. The image is stored as raw bytes:
reading 8,000 canvases took 1.4 s (zlib-encoded Tensor 1.5 s, PNG `Image` 4.1 s) for files within
7% of the same size (array_record compresses them all alike).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from dlx.data.builders import FASHION_MNIST_CLASSES, _info, _OfflineBuilder
from dlx.errors import DataError

NAME = "fashion_mnist_detection"
CLASS_NAMES: tuple[str, ...] = FASHION_MNIST_CLASSES + tuple(f"digit {d}" for d in range(10))
NUM_CLASSES = len(CLASS_NAMES)  # 20
DIGIT_OFFSET = len(FASHION_MNIST_CLASSES)  # digit d has class id DIGIT_OFFSET + d
CANVAS_SIZE = 96
MAX_OBJECTS = 6
ITEM_SIZE = 28
MIN_SIDE, MAX_SIDE = 20, 56  # the resized item's side in pixels, both inclusive
MAX_COVERED = 0.4  # intersection of two boxes <= this fraction of the smaller one's area
PLACEMENT_TRIES = 30
NUM_CANVASES = {"train": 24_000, "test": 4_000}
SPLIT_SEEDS = {"train": 1, "test": 2}
FEATURE_KEYS = ("image", "boxes", "labels", "num_objects")

_WEIGHT_BITS = 12  # fixed-point resize weights: each row of integer weights sums to 2**12


# ---------------------------------------------------------------------------------------------
# Resizing an item
# ---------------------------------------------------------------------------------------------


@functools.cache
def _resize_weights(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] integer-valued float64 weights of PIL's BILINEAR filter, rows summing
    to 2**_WEIGHT_BITS."""
    scale = size_in / size_out
    support = max(scale, 1.0)  # the triangle widens when shrinking (antialiasing)
    centres = (np.arange(size_out) + 0.5) * scale
    taps = np.arange(size_in) + 0.5
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / support, 0.0, None)
    weights /= weights.sum(axis=1, keepdims=True)
    fixed = np.rint(weights * 2**_WEIGHT_BITS)
    # Rounding may leave a row off by a unit or two: the largest weight takes up the difference.
    fixed[np.arange(size_out), fixed.argmax(axis=1)] += 2**_WEIGHT_BITS - fixed.sum(axis=1)
    fixed.setflags(write=False)
    return fixed


def resize_item(item: np.ndarray, side: int) -> np.ndarray:
    """A square uint8 [H, H] image resized to [side, side] with PIL's BILINEAR filter.

    Computed as W @ item @ W.T with integer weights (`_resize_weights`), rounded half up: every
    product and partial sum is an integer below 2**53, so float64 gives the exact result whatever
    the summation order (identical on every machine and BLAS)."""
    weights = _resize_weights(item.shape[0], side)
    total = weights @ item.astype(np.float64) @ weights.T
    half = 2 ** (2 * _WEIGHT_BITS - 1)
    return np.floor((total + half) / 2 ** (2 * _WEIGHT_BITS)).astype(np.uint8)


def tight_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) of the nonzero pixels of a 2-D image, max exclusive."""
    rows, columns = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    if not len(rows):
        raise DataError("an item with no nonzero pixel cannot be boxed")
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------------------------------------
# The canvas generator
# ---------------------------------------------------------------------------------------------


def _overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in placed:
        width, height = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if width > 0 and height > 0:
            smaller = min(area, (a1 - a0) * (b1 - b0))
            if width * height > MAX_COVERED * smaller:
                return False
    return True


def generate_canvases(
    images: np.ndarray, labels: np.ndarray, num_canvases: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yields `num_canvases` canvases made from items `images` (uint8 [N, 28, 28]) of class ids
    `labels` ([N], 0..NUM_CLASSES-1), as described in the module docstring: the FEATURE_KEYS
    arrays, plus `item_rows` (int32 [MAX_OBJECTS], the row of `images` each object was cut from,
    -1 on padding) and `sides` (int32 [MAX_OBJECTS], its resized side, 0 on padding)."""
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (ITEM_SIZE, ITEM_SIZE) or len(images) != len(labels):
        raise DataError(
            f"items must be [N, {ITEM_SIZE}, {ITEM_SIZE}] with N labels, got "
            f"{images.shape} and {labels.shape}"
        )
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(f"item labels must lie in 0..{NUM_CLASSES - 1} (and be at least one)")
    classes = np.unique(labels)
    rows_of_class = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.RandomState(seed)
    for _ in range(num_canvases):
        canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), np.uint8)
        boxes = np.zeros((MAX_OBJECTS, 4), np.float32)
        object_labels = np.full(MAX_OBJECTS, -1, np.int32)
        item_rows = np.full(MAX_OBJECTS, -1, np.int32)
        sides = np.zeros(MAX_OBJECTS, np.int32)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(rng.randint(1, MAX_OBJECTS + 1)):
            class_index = rng.randint(len(classes))
            row = rows_of_class[class_index][rng.randint(len(rows_of_class[class_index]))]
            side = rng.randint(MIN_SIDE, MAX_SIDE + 1)
            resized = resize_item(images[row], side)
            x0, y0, x1, y1 = tight_box(resized)
            crop = resized[y0:y1, x0:x1]
            height, width = crop.shape
            for _ in range(PLACEMENT_TRIES):
                x = rng.randint(CANVAS_SIZE - width + 1)
                y = rng.randint(CANVAS_SIZE - height + 1)
                box = (x, y, x + width, y + height)
                if _overlap_ok(box, placed):
                    break
            else:
                continue  # no room for this object
            region = canvas[y : y + height, x : x + width]
            np.maximum(region, crop, out=region)
            n = len(placed)
            boxes[n], object_labels[n] = box, classes[class_index]
            item_rows[n], sides[n] = row, side
            placed.append(box)
        yield {
            "image": canvas[..., None],
            "boxes": boxes,
            "labels": object_labels,
            "num_objects": np.int32(len(placed)),
            "item_rows": item_rows,
            "sides": sides,
        }


def load_items(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The items of one split: `fashion_mnist` `split` (class ids 0-9) then `mnist5k` `split`
    (ids 10-19), as (uint8 [N, 28, 28], int64 [N]); both read (prepared first if needed) with
    `dlx.data.source` from `data_dir`."""
    from dlx import data  # dlx.data imports this module (through the builders' registry)

    images, labels = [], []
    for name, offset in (("fashion_mnist", 0), ("mnist5k", DIGIT_OFFSET)):
        source = data.source(name, split, data_dir)
        rows = data.read_rows(source, np.arange(len(source)))
        images.append(rows["image"][..., 0])
        labels.append(rows["label"].astype(np.int64) + offset)
    return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------
# The TFDS builder
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic_serialization() -> Iterator[None]:
    """TFDS writes each record as a tf.train.Example whose feature map protobuf serializes in a
    per-process hash order: the same records made different files in two processes. Within this
    block the map is serialized sorted by key, so the files are byte-identical everywhere."""
    serializer = example_serializer.ExampleSerializer
    original = serializer.serialize_example

    def serialize_sorted(self, example):
        return self.get_tf_example(example).SerializeToString(deterministic=True)

    serializer.serialize_example = serialize_sorted
    try:
        yield
    finally:
        serializer.serialize_example = original


class FashionMnistDetection(_OfflineBuilder, skip_registration=True):
    """`fashion_mnist_detection` (see the module docstring): generated from the prepared
    `fashion_mnist` and `mnist5k` in the same data dir."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            f"Object detection on {CANVAS_SIZE}x{CANVAS_SIZE} black canvases holding 1-"
            f"{MAX_OBJECTS} real Fashion-MNIST and MNIST items (from the matching split of "
            f"fashion_mnist and mnist5k) resized to {MIN_SIDE}-{MAX_SIDE} px and pasted with "
            f"max blending; {NUM_CLASSES} classes, exact tight boxes (x_min, y_min, x_max, "
            "y_max) in continuous pixel coordinates. Seeded generator in "
            "dlx/data/detection.py.",
            {
                "image": tfds.features.Tensor(
                    shape=(CANVAS_SIZE, CANVAS_SIZE, 1), dtype=np.uint8, encoding="bytes"
                ),
                "boxes": tfds.features.Tensor(
                    shape=(MAX_OBJECTS, 4), dtype=np.float32, encoding="bytes"
                ),
                "labels": tfds.features.Tensor(
                    shape=(MAX_OBJECTS,), dtype=np.int32, encoding="bytes"
                ),
                "num_objects": tfds.features.Tensor(shape=(), dtype=np.int32),
            },
            None,
            "",
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        with _deterministic_serialization():
            return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in NUM_CANVASES}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        images, labels = load_items(split, self.data_dir_root)
        canvases = generate_canvases(images, labels, NUM_CANVASES[split], SPLIT_SEEDS[split])
        for key, canvas in enumerate(canvases):
            yield key, {name: canvas[name] for name in FEATURE_KEYS}
