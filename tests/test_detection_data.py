"""fashion_mnist_detection: the canvas generator and its TFDS builder (tiny builds from fake items),
and the prepared data set when this machine has it."""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dlx.data as data
from dlx.data import builders
from dlx.data import detection as detection_data

TRAIN_VALUES, TEST_VALUES = (1, 100), (156, 255)  # fake items' pixel values, per split
ITEMS_PER_CLASS = {"train": 3, "test": 2}


def fake_items(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per class, items holding a random blob of values in the split's own range on black: every
    nonzero canvas pixel then tells which split's items it came from (resizing only blends
    values with the black background, which lowers them)."""
    rng = np.random.RandomState(0 if split == "train" else 1)
    low, high = TRAIN_VALUES if split == "train" else TEST_VALUES
    labels = np.repeat(np.arange(detection_data.NUM_CLASSES), ITEMS_PER_CLASS[split])
    images = np.zeros((len(labels), 28, 28), np.uint8)
    for image in images:
        y0, x0 = rng.randint(0, 10, 2)
        y1, x1 = rng.randint(18, 29, 2)
        blob = rng.randint(low, high + 1, (y1 - y0, x1 - x0))
        blob[rng.rand(*blob.shape) < 0.3] = 0  # holes, so boxes come from the pixels
        blob[0, 0] = blob[-1, -1] = high  # the blob's corners mark its box
        image[y0:y1, x0:x1] = blob
    return images, labels


@pytest.fixture
def tiny_sizes(monkeypatch):
    monkeypatch.setattr(detection_data, "NUM_CANVASES", {"train": 60, "test": 30})
    calls = []

    def load(split, data_dir=None):
        calls.append(split)
        return fake_items(split)

    monkeypatch.setattr(detection_data, "load_items", load)
    return calls


def build(data_dir) -> dict[str, dict[str, np.ndarray]]:
    builder = detection_data.FashionMnistDetection(
        data_dir=str(data_dir), file_format=data.FILE_FORMAT
    )
    builder.download_and_prepare(file_format=data.FILE_FORMAT)
    splits = {}
    for split in ("train", "test"):
        records = builder.as_data_source(split=split)
        splits[split] = data.read_rows(data.NumpyRecords(records), np.arange(len(records)))
    return splits


def generated(split: str) -> list[dict[str, np.ndarray]]:
    images, labels = fake_items(split)
    return list(
        detection_data.generate_canvases(
            images,
            labels,
            detection_data.NUM_CANVASES[split],
            detection_data.SPLIT_SEEDS[split],
        )
    )


def check_canvases(columns: dict[str, np.ndarray]) -> None:
    """Layout and box invariants that hold without knowing how the canvases were made."""
    size, max_objects = detection_data.CANVAS_SIZE, detection_data.MAX_OBJECTS
    n = len(columns["image"])
    assert columns["image"].shape == (n, size, size, 1) and columns["image"].dtype == np.uint8
    assert columns["boxes"].shape == (n, max_objects, 4) and columns["boxes"].dtype == np.float32
    assert columns["labels"].shape == (n, max_objects)
    assert columns["num_objects"].shape == (n,)
    for image, boxes, labels, count in zip(
        columns["image"][..., 0], columns["boxes"], columns["labels"], columns["num_objects"]
    ):
        assert 1 <= count <= max_objects
        assert (labels[:count] >= 0).all() and (labels[:count] < detection_data.NUM_CLASSES).all()
        assert (labels[count:] == -1).all() and (boxes[count:] == 0).all()
        boxes = boxes[:count]
        assert (boxes == np.round(boxes)).all()  # pixel edges
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        covered = np.zeros_like(image, bool)
        for x0, y0, x1, y1 in boxes.astype(int):
            covered[y0:y1, x0:x1] = True
            inside = image[y0:y1, x0:x1]
            # Tight: each edge row and column of the box holds a nonzero pixel (max blending
            # never darkens the item's own pixels).
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
        assert not image[~covered].any()  # every nonzero pixel lies in some box
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        for i in range(count):
            for j in range(i):
                width = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                height = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                overlap = max(width, 0) * max(height, 0)
                assert overlap <= detection_data.MAX_COVERED * min(areas[i], areas[j])


# --- the generator ----------------------------------------------------------------------------


def test_resize_matches_pil_bilinear():
    rng = np.random.RandomState(0)
    items = [rng.randint(0, 256, (28, 28)).astype(np.uint8), fake_items("train")[0][5]]
    for item in items:
        np.testing.assert_array_equal(detection_data.resize_item(item, 28), item)
        for side in range(detection_data.MIN_SIDE, detection_data.MAX_SIDE + 1):
            ours = detection_data.resize_item(item, side).astype(int)
            pil = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))
            assert ours.shape == (side, side)
            assert np.abs(ours - pil.astype(int)).max() <= 1, side  # PIL rounds in 2 passes


def test_boxes_are_the_tight_boxes_of_the_pasted_items(monkeypatch):
    monkeypatch.setattr(detection_data, "NUM_CANVASES", {"train": 200, "test": 30})
    images, _ = fake_items("train")
    canvases = generated("train")
    columns = {key: np.stack([c[key] for c in canvases]) for key in detection_data.FEATURE_KEYS}
    check_canvases(columns)
    counts = np.bincount(columns["num_objects"], minlength=7)
    assert counts[1:].min() > 10  # every count from 1 to 6 occurs
    for canvas in canvases:
        # Re-render: each object is its item resized to its side, cropped to its nonzero
        # pixels, placed at its box; the canvas is the max of them.
        redrawn = np.zeros((96, 96), np.uint8)
        count = canvas["num_objects"]
        for box, label, row, side in zip(
            canvas["boxes"][:count],
            canvas["labels"][:count],
            canvas["item_rows"][:count],
            canvas["sides"][:count],
        ):
            assert label == row // ITEMS_PER_CLASS["train"]
            resized = detection_data.resize_item(images[row], side)
            rows, cols = np.flatnonzero(resized.any(1)), np.flatnonzero(resized.any(0))
            crop = resized[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            x0, y0, x1, y1 = box.astype(int)
            assert (x1 - x0, y1 - y0) == (crop.shape[1], crop.shape[0])
            redrawn[y0:y1, x0:x1] = np.maximum(redrawn[y0:y1, x0:x1], crop)
        np.testing.assert_array_equal(canvas["image"][..., 0], redrawn)


def test_classes_are_drawn_evenly(monkeypatch):
    monkeypatch.setattr(detection_data, "NUM_CANVASES", {"train": 300, "test": 30})
    labels = np.concatenate([c["labels"] for c in generated("train")])
    counts = np.bincount(labels[labels >= 0], minlength=20)
    assert len(counts) == 20 and counts.min() > 0.6 * counts.mean()


# --- the builder ------------------------------------------------------------------------------


def test_builder_writes_the_generated_canvases_and_splits_keep_their_items(tiny_sizes, tmp_path):
    splits = build(tmp_path)
    assert sorted(tiny_sizes) == ["test", "train"]
    for split, columns in splits.items():
        assert set(columns) == set(detection_data.FEATURE_KEYS)
        assert len(columns["image"]) == detection_data.NUM_CANVASES[split]
        check_canvases(columns)
        expected = generated(split)
        for key in detection_data.FEATURE_KEYS:
            np.testing.assert_array_equal(columns[key], np.stack([c[key] for c in expected]))
    # Pixels above TRAIN_VALUES' top only come from test items, and the test items' blob
    # corners (at their top value) survive resizing at least somewhat: no crossing either way.
    assert splits["train"]["image"].max() <= TRAIN_VALUES[1]
    assert (splits["test"]["image"].reshape(30, -1).max(1) > TRAIN_VALUES[1]).all()


BUILD_IN_ANOTHER_PROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
import test_detection_data as t
t.detection_data.NUM_CANVASES = {"train": 60, "test": 30}
t.detection_data.load_items = lambda split, data_dir=None: t.fake_items(split)
t.build(sys.argv[2])
"""


def test_builds_in_two_processes_are_byte_identical(tiny_sizes, tmp_path):
    def digests(root):
        folder = root / detection_data.NAME / "1.0.0"
        return {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in folder.glob("*.array_record*")
        }

    build(tmp_path / "a")
    subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD_IN_ANOTHER_PROCESS,
            str(Path(__file__).parent),
            str(tmp_path / "b"),
        ],
        check=True,
        capture_output=True,
    )
    first = digests(tmp_path / "a")
    assert len(first) == 2 and first == digests(tmp_path / "b")


def test_registered_offline_with_a_hint_naming_the_missing_source(monkeypatch, tmp_path):
    assert builders.OFFLINE_BUILDERS[detection_data.NAME] is detection_data.FashionMnistDetection
    monkeypatch.setattr(builders, "mnist5k_file", lambda: None)
    assert not builders.offline_files_present(detection_data.NAME)
    hint = builders.missing_hint(detection_data.NAME)
    assert "mnist5k" in hint and '"make data"' in hint


# --- the prepared data set (when present) -----------------------------------------------------


def prepared_builder():
    builder = data.get_builder(detection_data.NAME)
    return builder if builder.data_path.exists() and builder.is_prepared() else None


# sha256 of the prepared files (generator, tensorflow-datasets 4.9.10, array_record as pinned).
PREPARED_FILE_DIGESTS = {
    "fashion_mnist_detection-test.array_record-00000-of-00001": (
        "7053b5db2ef33453bbe46a9e5f92afdea222fa02feec9992e65bbaa797cb07cc"
    ),
    "fashion_mnist_detection-train.array_record-00000-of-00002": (
        "921e30f33c219152043f280dd716935234778dcd60d54023c6ca6aa2dc754a0f"
    ),
    "fashion_mnist_detection-train.array_record-00001-of-00002": (
        "0a542a8301aa2dd2e4b07c65fcf3f76a0efc55fa18b5a2329c383c877b1f9002"
    ),
}


@pytest.mark.skipif(prepared_builder() is None, reason="fashion_mnist_detection not prepared")
def test_prepared_files_are_the_same_as_on_every_other_machine():
    folder = prepared_builder().data_path
    for name, digest in PREPARED_FILE_DIGESTS.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.skipif(prepared_builder() is None, reason="fashion_mnist_detection not prepared")
def test_prepared_data_set_is_what_the_generator_makes_from_the_test_items():
    info = data.info(detection_data.NAME)
    assert info.num_examples == {"train": 24_000, "test": 4_000}
    assert info.features["image"].shape == (96, 96, 1)
    assert info.features["boxes"].shape == (6, 4)
    test = data.source(detection_data.NAME, "test")
    stored = data.read_rows(test, np.arange(len(test)))
    check_canvases({key: value[:500] for key, value in stored.items()})
    images, labels = detection_data.load_items("test")
    canvases = detection_data.generate_canvases(
        images, labels, 4_000, detection_data.SPLIT_SEEDS["test"]
    )
    for i, canvas in enumerate(canvases):
        for key in detection_data.FEATURE_KEYS:
            np.testing.assert_array_equal(stored[key][i], canvas[key], err_msg=f"{key} {i}")
