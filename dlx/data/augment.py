"""Seeded image augmentation of training batches: random crop, horizontal flip, random erasing,
mixup and cutmix, as a pure function of (the run's seed, the step, the batch).

    train = AugmentedSource(source("fashion_mnist", "train"), Augment(crop_padding=2, flip=True))
    batches = train_iterator(train, global_batch_size=128, seed=0)

`AugmentedSource` makes its own global batches (`global_batch(step, batch_size, seed)`, see
`dlx.data.pipeline.train_iterator`): the rows `shuffled_batch_indices` picks, as without
augmentation, then augmented. Nothing depends on the order of reading, the device count or the
process count, so the iterator's state stays `{"next_index": step}` and a run resumed at any step
(mid-epoch too) sees exactly the batches an uninterrupted run would.

Images are [H, W, C] uint8 and stay uint8. In this order:
- crop (`crop_padding` p > 0): the image is padded with p zeros on every side and an H x W
  window is cut at an offset drawn per example (0..2p in each direction);
- flip (`flip`): each image is mirrored left-right with probability 0.5;
- erasing (`erasing` = probability, Zhong et al. 2017): a rectangle of 2% to 1/3 of the image's
  area, aspect ratio h/w in [0.3, 1/0.3] (log-uniform), inside the image, is filled with
  uniform random values 0..255 (per pixel and channel); up to 10 draws per example, none erased
  when all 10 miss the image;
- mixup (`mixup` = alpha) and cutmix (`cutmix` = alpha): example i is mixed with example
  B-1-i of the global batch (after the steps above), with a weight lam ~ Beta(alpha, alpha) drawn
  per example. Mixup blends the pixels (rounded to uint8); cutmix pastes a box of the partner
  (side sqrt(1 - lam) of the image's, centre uniform, clipped to the image) and lam becomes the
  uncovered fraction. With both set, each example takes cutmix or mixup with probability 0.5.
  The batch then has two more columns: "label_b" (the partner's label) and "mix" (float32, the
  weight of "label": the loss is mix * CE(label) + (1 - mix) * CE(label_b)).

Each augmentation draws from its own stream (`SeedSequence([seed, step], spawn_key=(STREAM,
op))`), so switching one on leaves the others' draws alone. The draws are a few numbers per
example for the whole global batch, and the pixels of a row depend only on its own draws (the
random fill is a hash of a per-example key): `batch_rows` makes any rows of a global batch,
reading only those rows (and, with mixing, their partners).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from dlx import schema
from dlx.data.pipeline import Batch, RandomAccessSource, read_rows, shuffled_batch_indices

STREAM = 0x617567  # spawn key of the augmentation's draws ("aug"); one more number per operation
ERASING_AREA = (0.02, 1 / 3)  # of the image's area
ERASING_ASPECT = (0.3, 1 / 0.3)  # height / width
ERASING_ATTEMPTS = 10


def default_config() -> ml_collections.ConfigDict:
    """The `augment` config group: every augmentation off. `eval_flip` and `eval_shifts` are not
    training augmentations: the classification task reads them (test-time averaging)."""
    return ml_collections.ConfigDict(
        dict(
            crop_padding=0,
            flip=False,
            erasing=0.0,
            mixup=0.0,
            cutmix=0.0,
            eval_flip=False,
            eval_shifts=0,
        )
    )


RULES: dict[str, schema.Rule] = dict(
    crop_padding=schema.Int(low=0),
    flip=schema.Bool(),
    erasing=schema.Float(0, 1),
    mixup=schema.Float(low=0),
    cutmix=schema.Float(low=0),
    eval_flip=schema.Bool(),
    eval_shifts=schema.Int(low=0),
)


@dataclasses.dataclass(frozen=True)
class Augment:
    """What to do to training images (the `augment` config group; see the module docstring)."""

    crop_padding: int = 0
    flip: bool = False
    erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def from_config(cls, group: Mapping[str, Any]) -> Augment:
        return cls(**{field.name: group[field.name] for field in dataclasses.fields(cls)})

    @property
    def enabled(self) -> bool:
        return self != Augment()

    @property
    def mixes(self) -> bool:
        """Whether batches carry soft targets ("label_b", "mix")."""
        return self.mixup > 0 or self.cutmix > 0


# ---------------------------------------------------------------------------------------------
# Draws: a few numbers per example of the global batch
# ---------------------------------------------------------------------------------------------
CROP, FLIP, ERASING, MIXING = range(4)


def generator(seed: int, step: int, op: int) -> np.random.Generator:
    """The stream operation `op` draws from for batch `step` of a run with `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, step], spawn_key=(STREAM, op)))


def box_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """[n, height, width] bool: the pixels inside each box [n, 4] (top, left, height, width)."""
    top, left, box_h, box_w = boxes.T
    ys, xs = np.arange(height), np.arange(width)
    in_rows = (ys >= top[:, None]) & (ys < (top + box_h)[:, None])
    in_cols = (xs >= left[:, None]) & (xs < (left + box_w)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def erasing_boxes(
    rng: np.random.Generator, count: int, height: int, width: int, probability: float
) -> np.ndarray:
    """[count, 4] int32 boxes (top, left, height, width) to erase, height 0 for none: with
    `probability`, the first of `ERASING_ATTEMPTS` draws (area uniform in ERASING_AREA of the
    image, aspect log-uniform in ERASING_ASPECT, both checked after rounding to pixels) that fits
    inside the image, at a uniform position."""
    uniform = rng.random((3, count, ERASING_ATTEMPTS))
    pixels = height * width
    (low_area, high_area), (low_aspect, high_aspect) = ERASING_AREA, ERASING_ASPECT
    side = np.sqrt((low_area + (high_area - low_area) * uniform[0]) * pixels)
    root_aspect = np.sqrt(low_aspect * (high_aspect / low_aspect) ** uniform[1])
    box_h, box_w = np.rint(side * root_aspect), np.rint(side / root_aspect)
    area = box_h * box_w
    fits = (box_h < height) & (box_w < width)
    fits &= (area >= low_area * pixels) & (area <= high_area * pixels)
    fits &= (box_h >= low_aspect * box_w) & (box_h <= high_aspect * box_w)
    first, rows = fits.argmax(1), np.arange(count)
    erase = (uniform[2, :, 0] < probability) & fits[rows, first]
    box_h = np.where(erase, box_h[rows, first], 0).astype(np.int32)
    box_w = np.where(erase, box_w[rows, first], 0).astype(np.int32)
    corner = rng.random((2, count))
    top = (corner[0] * (height - box_h + 1)).astype(np.int32)
    left = (corner[1] * (width - box_w + 1)).astype(np.int32)
    return np.stack([top, left, box_h, box_w], 1)


def mixing_draws(
    rng: np.random.Generator, count: int, height: int, width: int, mixup: float, cutmix: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mix [count] float32: the weight of each example's own label, cutmix boxes [count, 4]
    int32 (top, left, height, width) of the partner's pixels, height 0 for a mixup row)."""
    if cutmix > 0 and mixup > 0:
        use_cut = rng.random(count) < 0.5
    else:
        use_cut = np.full(count, cutmix > 0)
    lam_mixup = rng.beta(mixup, mixup, count) if mixup > 0 else np.ones(count)
    lam_cut = rng.beta(cutmix, cutmix, count) if cutmix > 0 else np.ones(count)
    side = np.sqrt(1.0 - lam_cut)
    cut_h, cut_w = (height * side).astype(np.int64), (width * side).astype(np.int64)
    centre_y, centre_x = rng.integers(0, height, count), rng.integers(0, width, count)
    top, bottom = (
        np.clip(centre_y - cut_h // 2, 0, height),
        np.clip(centre_y + cut_h // 2, 0, height),
    )
    left, right = np.clip(centre_x - cut_w // 2, 0, width), np.clip(centre_x + cut_w // 2, 0, width)
    box_h, box_w = np.where(use_cut, bottom - top, 0), np.where(use_cut, right - left, 0)
    mix = np.where(use_cut, 1.0 - box_h * box_w / (height * width), lam_mixup)
    boxes = np.stack([top, left, box_h, box_w], 1).astype(np.int32)
    return mix.astype(np.float32), boxes


def draw(augment: Augment, seed: int, step: int, count: int, height: int, width: int) -> Batch:
    """Every draw batch `step` of `count` [height, width] images needs, one row per example
    ("crop" offsets [count, 2], "flip" [count], "erase" boxes [count, 4] with "erase_key"
    [count], "mix" [count] with "cut" boxes [count, 4]); only those of the operations on."""
    draws: Batch = {}
    if augment.crop_padding:
        high = 2 * augment.crop_padding + 1
        draws["crop"] = generator(seed, step, CROP).integers(0, high, (count, 2), dtype=np.int32)
    if augment.flip:
        draws["flip"] = generator(seed, step, FLIP).random(count) < 0.5
    if augment.erasing:
        rng = generator(seed, step, ERASING)
        draws["erase"] = erasing_boxes(rng, count, height, width, augment.erasing)
        draws["erase_key"] = rng.integers(0, 2**32, count, dtype=np.uint32)
    if augment.mixes:
        rng = generator(seed, step, MIXING)
        draws["mix"], draws["cut"] = mixing_draws(
            rng, count, height, width, augment.mixup, augment.cutmix
        )
    return draws


# ---------------------------------------------------------------------------------------------
# The operations on images [n, H, W, C], given their draws
# ---------------------------------------------------------------------------------------------
def crop(images: np.ndarray, padding: int, offsets: np.ndarray) -> np.ndarray:
    """The H x W window at `offsets` [n, 2] (top, left; 0..2*padding) of each image padded with
    `padding` zeros on every side."""
    n, height, width, channels = images.shape
    padded = np.zeros((n, height + 2 * padding, width + 2 * padding, channels), images.dtype)
    padded[:, padding : padding + height, padding : padding + width] = images
    # Every window of every image as a view [n, top, left, H, W, C]; one gather copies n of them.
    s_n, s_y, s_x, s_c = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded,
        (n, 2 * padding + 1, 2 * padding + 1, height, width, channels),
        (s_n, s_y, s_x, s_y, s_x, s_c),
        writeable=False,
    )
    return windows[np.arange(n), offsets[:, 0], offsets[:, 1]]


def flip(images: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Images with those `which` [n] marks mirrored left-right."""
    out = images.copy()
    out[which] = images[which, :, ::-1]
    return out


def _mix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: uint32 -> uint32, every input bit flips about half the
    output bits."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def random_bytes(keys: np.ndarray, count: int) -> np.ndarray:
    """[len(keys), count] uint8, uniform: a hash of (key, position), so each row depends on its
    own key (uint32) alone."""
    positions = _mix32(np.arange(count, dtype=np.uint32))
    return (_mix32(positions ^ keys.astype(np.uint32)[:, None]) >> np.uint32(24)).astype(np.uint8)


def erase(images: np.ndarray, boxes: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Images with each box [n, 4] (top, left, height, width; height 0 for none) filled with
    random values 0..255, a function of the example's key [n] (uint32) and the pixel alone."""
    n, height, width, channels = images.shape
    rows = np.flatnonzero(boxes[:, 2] > 0)
    out = images.copy()
    if rows.size:
        erased = out[rows]
        noise = random_bytes(keys[rows], height * width * channels).reshape(erased.shape)
        np.copyto(erased, noise, where=box_mask(boxes[rows], height, width)[..., None])
        out[rows] = erased
    return out


def mix_images(
    images: np.ndarray, partners: np.ndarray, mix: np.ndarray, cut: np.ndarray
) -> np.ndarray:
    """Each image mixed with its partner: where `cut` [n, 4] has a box (height > 0), the
    partner's pixels inside it and the image's own outside (cutmix); other rows blend into
    mix * image + (1 - mix) * partner, rounded (mixup)."""
    n, height, width, channels = images.shape
    blend = cut[:, 2] == 0
    if blend.any():
        weight = np.where(blend, mix, 1.0).astype(np.float32)[:, None, None, None]
        out = images.astype(np.float32)
        base = partners.astype(np.float32)
        out -= base
        out *= weight
        out += base
        if np.issubdtype(images.dtype, np.integer):
            np.rint(out, out=out)
        out = out.astype(images.dtype)
    else:
        out = images.copy()
    if not blend.all():
        np.copyto(out, partners, where=box_mask(cut, height, width)[..., None])
    return out


def augment_images(images: np.ndarray, augment: Augment, draws: Mapping[str, np.ndarray]):
    """Crop, flip and erasing of `images` [n, H, W, C] with their rows of `draws`."""
    if "crop" in draws:
        images = crop(images, augment.crop_padding, draws["crop"])
    if "flip" in draws:
        images = flip(images, draws["flip"])
    if "erase" in draws:
        images = erase(images, draws["erase"], draws["erase_key"])
    return images


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------
class AugmentedSource:
    """Training batches of `base` (random access; its `image` column [H, W, C] uint8, its
    `label` column integers) augmented by `augment`, as a function of (seed, step).

    `global_batch(step, batch_size, seed)` is what `train_iterator` reads; the rows are those
    `shuffled_batch_indices` picks, so with `augment` all off the batches equal `base`'s.
    `batch_rows(..., rows)` makes only some rows of that global batch. As a random-access
    source (`len`, `source[i]`, `read_rows` where `base` has it) it is `base`, un-augmented:
    the runner learns the batch's shapes from `source[0]`, and eval is never augmented.
    """

    def __init__(
        self,
        base: RandomAccessSource,
        augment: Augment,
        image_key: str = "image",
        label_key: str = "label",
    ):
        example = base[0]
        image = np.asarray(example[image_key])
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"augmentation needs [H, W, C] uint8 images in '{image_key}', got "
                f"{image.dtype} {image.shape}"
            )
        if augment.mixes and label_key not in example:
            raise ValueError(f"mixup and cutmix need integer labels in '{label_key}'")
        self.base, self.augment = base, augment
        self.image_key, self.label_key = image_key, label_key
        self.height, self.width = image.shape[:2]
        if hasattr(base, "read_rows"):  # so `train_iterator` reads it as it reads `base`
            self.read_rows = base.read_rows

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self.base[index]

    def global_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        return self.batch_rows(step, batch_size, seed, slice(None))

    def batch_rows(self, step: int, batch_size: int, seed: int, rows: slice) -> Batch:
        """Rows `rows` of global batch `step`: `global_batch(step, batch_size, seed)[rows]`."""
        indices = shuffled_batch_indices(len(self.base), batch_size, seed, step)
        draws = draw(self.augment, seed, step, batch_size, self.height, self.width)
        own = np.arange(batch_size)[rows]
        if not self.augment.mixes:
            batch = read_rows(self.base, indices[own])
            batch[self.image_key] = augment_images(
                batch[self.image_key], self.augment, {k: v[own] for k, v in draws.items()}
            )
            return batch
        partner = batch_size - 1 - own
        needed = np.union1d(own, partner)  # sorted: own and partner rows, each read once
        batch = read_rows(self.base, indices[needed])
        images = augment_images(
            batch[self.image_key], self.augment, {k: v[needed] for k, v in draws.items()}
        )
        at, partner_at = np.searchsorted(needed, own), np.searchsorted(needed, partner)
        out = {key: column[at] for key, column in batch.items() if key != self.image_key}
        out[self.image_key] = mix_images(
            images[at], images[partner_at], draws["mix"][own], draws["cut"][own]
        )
        out["label_b"] = batch[self.label_key][partner_at]
        out["mix"] = draws["mix"][own]
        return out
