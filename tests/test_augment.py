"""Augmentation in the input pipeline (dlx/data/augment.py): each operation does what it says on
uint8 images; batches are a function of (seed, step) alone, so an iterator restored mid-epoch or
another process count sees the same batches."""

from __future__ import annotations

import numpy as np
import pytest

from dlx.data import ArraySource, train_iterator
from dlx.data import augment as aug
from dlx.data.pipeline import shuffled_batch_indices

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
