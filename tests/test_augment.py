"""Augmentation in the input pipeline (dlx/data/augment.py, the classification task's `augment`
group): each operation does what it says on uint8 images; batches are a function of (seed, step)
alone, so an iterator restored mid-epoch, another process count or another device count sees the
same batches; augmented runs train; bad values are one-line errors."""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from dlx import data as data_lib
from dlx.data import ArraySource, train_iterator
from dlx.data import augment as aug
from dlx.data.pipeline import shuffled_batch_indices
from dlx.errors import ConfigError
from dlx.tasks import classification
from dlx.tasks.base import model_inputs
from dlx.train import config as config_lib
from dlx.train import loop
from helpers import cli, load_config, train, train_losses

HEIGHT, WIDTH = 12, 10
ALL_ON = aug.Augment(crop_padding=2, flip=True, erasing=0.5, mixup=0.4, cutmix=1.0)


def _images(count: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, (count, HEIGHT, WIDTH, channels), dtype=np.uint8
    )


def _source(count: int = 100, channels: int = 1) -> ArraySource:
    return ArraySource(
        {
            "image": _images(count, channels),
            "label": np.arange(count) % 7,
            "index": np.arange(count),  # which example each row is
        }
    )


# --- the operations ----------------------------------------------------------------------------


def test_crop_is_a_window_of_the_zero_padded_image_at_the_drawn_offset():
    images = _images(40, channels=3)
    offsets = np.random.default_rng(1).integers(0, 5, (40, 2))
    cropped = aug.crop(images, 2, offsets)
    assert cropped.shape == images.shape and cropped.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for image, window, (top, left) in zip(padded, cropped, offsets):
        np.testing.assert_array_equal(window, image[top : top + HEIGHT, left : left + WIDTH])
    centred = aug.crop(images, 2, np.full((40, 2), 2))
    np.testing.assert_array_equal(centred, images)


def test_flip_mirrors_exactly_the_chosen_images():
    images = _images(20, channels=3)
    which = np.arange(20) % 3 == 0
    flipped = aug.flip(images, which)
    assert flipped.dtype == np.uint8
    np.testing.assert_array_equal(flipped[which], images[which][:, :, ::-1])
    np.testing.assert_array_equal(flipped[~which], images[~which])
    drawn = aug.draw(aug.Augment(flip=True), 0, 0, 4000, HEIGHT, WIDTH)["flip"]
    assert abs(drawn.mean() - 0.5) < 0.03


def test_erasing_boxes_lie_inside_with_area_and_aspect_in_range_and_only_they_change():
    rng = np.random.default_rng(2)
    boxes = aug.erasing_boxes(rng, 4000, 28, 28, probability=0.5)
    top, left, height, width = boxes.T.astype(np.int64)
    erased = height > 0
    assert abs(erased.mean() - 0.5) < 0.03
    area = height[erased] * width[erased] / (28 * 28)
    assert area.min() >= 0.02 and area.max() <= 1 / 3 and area.max() > 0.3
    aspect = height[erased] / width[erased]
    assert aspect.min() >= 0.3 and aspect.max() <= 1 / 0.3
    assert (top + height <= 28).all() and (left + width <= 28).all() and (top >= 0).all()

    images = _images(64, channels=3)
    keys = np.arange(64, dtype=np.uint32)
    boxes = aug.erasing_boxes(rng, 64, HEIGHT, WIDTH, probability=0.75)
    out = aug.erase(images, boxes, keys)
    assert out.shape == images.shape and out.dtype == np.uint8
    inside = aug.box_mask(boxes, HEIGHT, WIDTH)
    np.testing.assert_array_equal(out[~inside], images[~inside])
    noise = out[inside].astype(np.float64)
    assert abs(noise.mean() - 127.5) < 6 and noise.std() > 65  # uniform 0..255: 73.9
    np.testing.assert_array_equal(aug.erase(images, boxes, keys), out)
    assert not np.array_equal(aug.erase(images, boxes, keys + 1)[inside], noise)


def test_mixup_blends_linearly_and_cutmix_pastes_the_partners_box():
    images, partners = _images(2000, seed=3), _images(2000, seed=4)
    draws = aug.draw(aug.Augment(mixup=0.4, cutmix=1.0), 0, 5, 2000, HEIGHT, WIDTH)
    mix, cut = draws["mix"], draws["cut"]
    assert mix.dtype == np.float32 and (mix >= 0).all() and (mix <= 1).all()
    out = aug.mix_images(images, partners, mix, cut)
    assert out.shape == images.shape and out.dtype == np.uint8

    boxed = cut[:, 2] > 0
    chose_cutmix = boxed | (mix == 1)  # a cutmix box may be empty (lam near 1)
    assert abs(chose_cutmix.mean() - 0.5) < 0.045  # each example takes one, p = 0.5 (4 sd)
    weight = mix[:, None, None, None]
    linear = weight * images + (1 - weight) * partners
    np.testing.assert_allclose(out[~boxed], linear[~boxed], atol=0.5 + 1e-3)
    inside = aug.box_mask(cut, HEIGHT, WIDTH)
    np.testing.assert_array_equal(out[inside], partners[inside])
    outside = boxed[:, None, None] & ~inside
    np.testing.assert_array_equal(out[outside], images[outside])
    # The label weight is the share of the image's own pixels.
    np.testing.assert_allclose(mix[boxed], 1 - inside[boxed].mean((1, 2)), rtol=1e-6)
    mixup = ~chose_cutmix
    assert 0.45 < mix[mixup].mean() < 0.55 and mix[mixup].std() > 0.3  # Beta(0.4, 0.4): 0.38


# --- batches: a function of (seed, step) -------------------------------------------------------


def test_same_seed_and_step_give_the_same_batch_and_other_steps_or_seeds_do_not():
    source = aug.AugmentedSource(_source(), ALL_ON)
    batch = source.global_batch(3, 32, 0)
    assert batch["image"].shape == (32, HEIGHT, WIDTH, 1) and batch["image"].dtype == np.uint8
    assert batch["mix"].dtype == np.float32 and batch["label_b"].dtype == np.int32
    again = aug.AugmentedSource(_source(), ALL_ON).global_batch(3, 32, 0)
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key])
    for other in (source.global_batch(4, 32, 0), source.global_batch(3, 32, 1)):
        assert not np.array_equal(other["image"], batch["image"])
    # The rows are the examples the plain shuffle picks; each is mixed with row B-1-i.
    indices = shuffled_batch_indices(100, 32, 0, 3)
    np.testing.assert_array_equal(batch["index"], indices)
    np.testing.assert_array_equal(batch["label_b"], batch["label"][::-1])


def test_one_operation_on_or_off_leaves_the_others_draws_alone():
    flip_only = aug.draw(aug.Augment(flip=True), 0, 9, 64, HEIGHT, WIDTH)
    everything = aug.draw(ALL_ON, 0, 9, 64, HEIGHT, WIDTH)
    np.testing.assert_array_equal(flip_only["flip"], everything["flip"])


def test_with_augmentation_off_the_batches_are_the_plain_iterators():
    plain = train_iterator(_source(), global_batch_size=32, seed=0)
    wrapped = train_iterator(
        aug.AugmentedSource(_source(), aug.Augment()), global_batch_size=32, seed=0
    )
    for _ in range(5):
        a, b = next(plain), next(wrapped)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("augment", [ALL_ON, aug.Augment(crop_padding=1, erasing=1.0)])
def test_an_iterator_restored_mid_epoch_yields_the_uninterrupted_batches(augment):
    source = aug.AugmentedSource(_source(), augment)  # 100 examples, 32 a batch: epochs straddle
    uninterrupted = train_iterator(source, global_batch_size=32, seed=5)
    batches = [next(uninterrupted) for _ in range(8)]
    resumed = train_iterator(aug.AugmentedSource(_source(), augment), global_batch_size=32, seed=5)
    resumed.set_state({"next_index": 5})
    for expected in batches[5:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    assert resumed.get_state() == {"next_index": 8}


def test_each_process_gets_its_rows_of_the_same_global_batch():
    source = aug.AugmentedSource(_source(channels=3), ALL_ON)
    whole = next(train_iterator(source, global_batch_size=32, seed=0))
    for count in (2, 4):
        parts = [
            next(
                train_iterator(
                    source, global_batch_size=32, seed=0, process_index=i, process_count=count
                )
            )
            for i in range(count)
        ]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    # Rows made alone (reading only them and their partners) are those rows of the batch.
    rows = source.batch_rows(0, 32, 0, slice(8, 16))
    for key in whole:
        np.testing.assert_array_equal(rows[key], whole[key][8:16])


def test_random_access_reads_the_examples_unaugmented():
    base = _source()
    source = aug.AugmentedSource(base, ALL_ON)
    assert len(source) == 100
    np.testing.assert_array_equal(source[7]["image"], base[7]["image"])
    assert source[7].keys() == base[7].keys()
    np.testing.assert_array_equal(
        source.read_rows(np.arange(5))["image"], base.read_rows(np.arange(5))["image"]
    )


# --- the classification task -------------------------------------------------------------------


def test_bad_augment_values_are_refused_in_one_line(tmp_path):
    config = load_config("configs/digits_mlp.py").to_dict()
    for key, value, allowed in [
        ("crop_padding", -1, "an integer >= 0"),
        ("crop_padding", 1.5, "an integer >= 0"),
        ("flip", 1, "True or False"),
        ("erasing", 1.5, "a finite number in [0, 1]"),
        ("mixup", -0.2, "a finite number >= 0"),
        ("cutmix", math.nan, "a finite number >= 0"),
    ]:
        bad = ml_collections.ConfigDict({**config, "augment": {**config["augment"], key: value}})
        with pytest.raises(ConfigError) as error:
            config_lib.validate(bad)
        message = str(error.value)
        assert message.startswith(f"config.augment.{key}={value!r} is not allowed; expected")
        assert allowed in message and "\n" not in message
    workdir = tmp_path / "run"
    result = cli(
        "--config", "configs/digits_mlp.py", "--workdir", str(workdir), "--config.augment.erasing=2"
    )
    assert result.code == 2 and result.error_lines == [
        "error: config.augment.erasing=2.0 is not allowed; expected a finite number in [0, 1]"
    ], result.stderr
    assert not workdir.exists()


def test_augmentation_of_inputs_that_are_not_images_or_too_small_is_refused(tmp_path):
    config = load_config("configs/digits_mlp.py", {"augment.flip": True, "data.name": "diabetes"})
    with pytest.raises(
        ConfigError, match="augment.flip=True augments images, but data set 'diabetes' has no"
    ):
        loop.prepare_run(config)
    config = load_config("configs/digits_mlp.py", {"augment.eval_flip": True})
    config.data.name = "diabetes"
    with pytest.raises(ConfigError, match="augment.eval_flip=True augments images"):
        loop.prepare_run(config)
    result = cli(
        "--config",
        "configs/digits_mlp.py",
        "--workdir",
        str(tmp_path / "run"),
        "--config.augment.crop_padding=8",
    )
    assert result.code == 2 and len(result.error_lines) == 1, result.stderr
    assert "crop_padding=8 is not smaller than the 8x8 images of 'digits'" in result.error_lines[0]
    assert not (tmp_path / "run").exists()


def test_the_loss_of_a_mixed_batch_weighs_both_smoothed_labels_accuracy_the_dominant_one():
    config = load_config(
        "configs/digits_mlp.py", {"augment.mixup": 0.4, "loss.label_smoothing": 0.1}
    )
    task = classification.Task(config, data_lib.info("digits"))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
        "label_b": rng.integers(0, 10, 16).astype(np.int32),
        "mix": rng.random(16).astype(np.float32),
    }
    params = nn.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0), batch))["params"]

    @jax.jit
    def loss_and_log_p(params, batch):
        logits = task.model.apply({"params": params}, model_inputs(batch), train=False)
        return task.loss_fn(params, {}, batch, jax.random.PRNGKey(1)), jax.nn.log_softmax(logits)

    (loss, (metrics, _)), log_p = loss_and_log_p(params, batch)

    def smoothed(labels):
        return 0.9 * np.eye(10)[labels] + 0.1 / 10

    mix = batch["mix"][:, None]
    targets = mix * smoothed(batch["label"]) + (1 - mix) * smoothed(batch["label_b"])
    np.testing.assert_allclose(loss, -(targets * log_p).sum(1).mean(), rtol=1e-5)
    dominant = np.where(batch["mix"] >= 0.5, batch["label"], batch["label_b"])
    np.testing.assert_allclose(metrics["accuracy"], (log_p.argmax(1) == dominant).mean())


def test_eval_flip_scores_the_mean_softmax_of_each_image_and_its_mirror():
    config = load_config("configs/digits_mlp.py", {"augment.eval_flip": True})
    task = classification.Task(config, data_lib.info("digits"))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 16).astype(np.int32),
        "mask": np.ones(16, bool),
    }
    state = task.init_state(jax.random.PRNGKey(0), batch)
    variables = {"params": nn.meta.unbox(state.params)}
    log_p = np.asarray(jax.jit(task.predict)(state, batch))
    mirrored = {**batch, "image": batch["image"][:, :, ::-1]}
    probabilities = [
        jax.nn.softmax(task.model.apply(variables, model_inputs(b), train=False))
        for b in (batch, mirrored)
    ]
    np.testing.assert_allclose(np.exp(log_p), (probabilities[0] + probabilities[1]) / 2, rtol=1e-5)
    # the score of an image and of its mirror are the same
    np.testing.assert_allclose(jax.jit(task.predict)(state, mirrored), log_p, rtol=1e-5)
    sums = jax.jit(task.eval_step)(state, batch)
    assert float(sums["correct"]) == (log_p.argmax(1) == batch["label"]).sum()


@pytest.mark.parametrize("eval_flip", [False, True])
def test_eval_shifts_score_the_mean_softmax_of_the_image_and_its_four_shifts(eval_flip):
    overrides = {"augment.eval_shifts": 2, "augment.eval_flip": eval_flip}
    task = classification.Task(
        load_config("configs/digits_mlp.py", overrides), data_lib.info("digits")
    )
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (8, 8, 8, 1), dtype=np.uint8)
    batch = {"image": images, "label": rng.integers(0, 10, 8).astype(np.int32)}
    state = task.init_state(jax.random.PRNGKey(0), batch)
    variables = {"params": nn.meta.unbox(state.params)}
    zeros = np.zeros_like(images)
    down, up, right, left = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    down[:, 2:], up[:, :-2] = images[:, :-2], images[:, 2:]
    right[:, :, 2:], left[:, :, :-2] = images[:, :, :-2], images[:, :, 2:]
    views = [images, down, up, right, left]
    views += [view[:, :, ::-1] for view in views] if eval_flip else []
    probabilities = [
        jax.nn.softmax(task.model.apply(variables, model_inputs({"image": v}), train=False))
        for v in views
    ]
    log_p = np.asarray(jax.jit(task.predict)(state, batch))
    np.testing.assert_allclose(np.exp(log_p), np.mean(probabilities, 0), rtol=1e-5, atol=1e-7)
    too_far = load_config("configs/digits_mlp.py", {"augment.eval_shifts": 8})
    with pytest.raises(ConfigError, match="eval_shifts=8 is not smaller than the 8x8 images"):
        classification.Task(too_far, data_lib.info("digits"))


def test_the_fashion_cnn_trains_on_augmented_images_with_soft_targets(tmp_path):
    """configs/fashion_cnn.py:test on MNIST-5k (the same 28x28 images, a tenth of the reading)."""
    overrides = {
        "data.name": "mnist5k",
        "augment.crop_padding": 2,
        "augment.flip": True,
        "augment.erasing": 0.25,
        "augment.mixup": 0.2,
        "augment.cutmix": 1.0,
        "loss.label_smoothing": 0.1,
        "log_every_steps": 5,
    }
    summary = train("configs/fashion_cnn.py:test", tmp_path, overrides)
    losses = train_losses(tmp_path)
    assert sorted(losses) == [5, 10, 15, 20] and all(map(math.isfinite, losses.values()))
    assert summary["steps"] == 20


DIGITS_AUGMENTED = {
    "augment.crop_padding": 1,
    "augment.flip": True,
    "augment.erasing": 0.5,
    "augment.mixup": 0.4,
    "augment.cutmix": 1.0,
    "num_epochs": 0.0,
    "log_every_steps": 1,
}


def test_augmented_runs_resume_exactly_and_match_on_one_device(tmp_path):
    """Digits (1,437 train examples, 64 a batch): 30 steps cross an epoch boundary. The second run
    stops at step 15, mid-epoch, and resumes on 1 device instead of 8: its steps 1-15 equal the
    uninterrupted run's, and 16-30 match them to float rounding (another device count sums in
    another order), which they would not with other batches."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    train("configs/digits_mlp.py", uninterrupted, {**DIGITS_AUGMENTED, "train_steps": 30})
    train("configs/digits_mlp.py", resumed, {**DIGITS_AUGMENTED, "train_steps": 15})
    train("configs/digits_mlp.py", resumed, {**DIGITS_AUGMENTED, "train_steps": 30}, devices=1)
    reference, losses = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(reference) == sorted(losses) == list(range(1, 31))
    assert all(map(math.isfinite, reference.values()))
    assert [losses[s] for s in range(1, 16)] == [reference[s] for s in range(1, 16)]
    np.testing.assert_allclose(
        [losses[s] for s in range(16, 31)], [reference[s] for s in range(16, 31)], rtol=1e-5
    )


def test_a_run_saved_before_augmentation_existed_loads_with_it_off(tmp_path):
    from dlx.train import config as config_lib

    config = load_config("configs/fashion_cnn.py:test")
    values = json.loads(config.to_json())
    del values["augment"]  # a config.json written by an older dlx
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    restored = config_lib.from_json(str(path))
    assert restored.augment.to_dict() == config.augment.to_dict()
    assert not restored.augment.flip and restored.augment.crop_padding == 0
    # one written before test-time flips existed: an augment group without eval_flip
    values["augment"] = {**config.augment.to_dict(), "flip": True}
    del values["augment"]["eval_flip"], values["augment"]["eval_shifts"]
    path.write_text(json.dumps(values))
    restored = config_lib.from_json(str(path))
    assert restored.augment.flip and restored.augment.eval_flip is False
    assert restored.augment.eval_shifts == 0
