"""A trained run loaded for use (dlx.inference): predictions equal the run's own evaluation,
with no data set opened."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dlx import data as data_lib
from dlx import inference
from dlx.tasks.base import Task
from helpers import train


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "digits"
    summary = train("configs/digits_mlp.py", workdir, {"num_epochs": 0.0, "train_steps": 20})
    return workdir, summary


def test_a_run_loads_and_predicts_without_its_data_set(digits_run, monkeypatch):
    workdir, summary = digits_run
    source = data_lib.source("digits", "test")
    images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])

    def no_data(*args, **kwargs):
        raise AssertionError("loading a run for inference opened its data set")

    monkeypatch.setattr(data_lib, "prepare", no_data)
    monkeypatch.setattr(data_lib, "info", no_data)
    monkeypatch.setattr(Task, "source", no_data)
    bundle = inference.load(str(workdir))
    assert bundle.step == 20 and bundle.task.data_info.num_classes == 10
    logits = np.asarray(bundle({"image": images, "label": labels}))
    assert logits.shape == (len(labels), 10)
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    assert accuracy == pytest.approx(summary["final_eval"]["accuracy"], abs=1e-6)


def test_image_files_of_any_depth_and_orientation_read_as_the_runs_pixels(tmp_path):
    from PIL import Image

    from dlx.tasks.images import read_image_files

    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # [8, 16], dark to light
    paths = {}
    for name, image in {
        "grey8": Image.fromarray(ramp),
        "grey16": Image.fromarray(ramp.astype(np.uint16) * 257),  # PIL clips these at 255
        "float": Image.fromarray(ramp.astype(np.float32) / 255),  # ...and these read as black
        "colour": Image.fromarray(np.stack([ramp] * 3, -1)),
    }.items():
        paths[name] = str(tmp_path / f"{name}.{'tiff' if name == 'float' else 'png'}")
        image.save(paths[name])
    turned = Image.fromarray(np.ascontiguousarray(np.rot90(ramp)))  # stored sideways [16, 8]
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: display rotated 90 degrees clockwise
    paths["sideways"] = str(tmp_path / "sideways.jpg")
    turned.save(paths["sideways"], exif=exif, quality=100)

    images, notes = read_image_files(list(paths.values()), (8, 16, 1))
    assert images.shape == (5, 8, 16, 1) and images.dtype == np.uint8
    for name, image in zip(paths, images[..., 0]):
        tolerance = 3 if name == "sideways" else 0  # JPEG
        assert np.abs(image.astype(int) - ramp).max() <= tolerance, name
    assert notes[0] == "" and notes[1] == "converted from I;16 to grey"
    assert notes[4] == "turned upright by its EXIF orientation"
    rgb, _ = read_image_files([paths["grey16"]], (8, 16, 3))
    np.testing.assert_array_equal(rgb, np.repeat(ramp[..., None], 3, -1)[None])
    animated = str(tmp_path / "animated.gif")
    frames = [Image.fromarray(ramp), Image.fromarray(255 - ramp), Image.fromarray(ramp // 2)]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    (first,), (note,) = read_image_files([animated], (8, 16, 1))
    np.testing.assert_array_equal(first[..., 0], ramp)
    assert note == "its first of 3 frames; converted from P to grey"


def test_image_files_whose_values_are_not_intensities_are_refused(tmp_path):
    from PIL import Image

    from dlx.errors import DataError
    from dlx.tasks.images import read_image_files

    with pytest.raises(DataError, match="is a folder; give the image files in it"):
        read_image_files([str(tmp_path)], (8, 8, 1))
    path = str(tmp_path / "counts.tiff")
    Image.fromarray(np.full((8, 8), 300.0, np.float32)).save(path)
    with pytest.raises(DataError, match="counts.tiff is an image of mode F with values from 300.0"):
        read_image_files([path], (8, 8, 1))


def test_predict_images_runs_any_number_of_files_in_fixed_size_chunks(
    digits_run, tmp_path, monkeypatch
):
    from PIL import Image

    workdir, _ = digits_run
    source = data_lib.source("digits", "test")
    images = np.stack([np.asarray(source[i]["image"]) for i in range(5)])  # [5, 8, 8, 1]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[..., 0]).save(paths[-1])
    bundle = inference.load(str(workdir))
    whole = np.asarray(bundle({"image": images}))
    shapes = []
    call = inference.Bundle.__call__
    monkeypatch.setattr(inference, "IMAGES_PER_CALL", 2)
    monkeypatch.setattr(
        inference.Bundle,
        "__call__",
        lambda b, batch: shapes.append(batch["image"].shape) or call(b, batch),
    )
    probabilities = bundle.predict_images(paths, out=io.StringIO())
    assert shapes == [(2, 8, 8, 1)] * 3  # the last chunk padded: one compiled shape
    softmax = np.exp(whole - whole.max(-1, keepdims=True))
    np.testing.assert_allclose(probabilities, softmax / softmax.sum(-1, keepdims=True), atol=1e-6)
