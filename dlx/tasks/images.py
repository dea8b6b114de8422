"""What the image tasks share: pixels as floats, a train split without one class (anomaly
detection), and figures of image grids."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from dlx.data import ArraySource, load_into_memory, read_rows
from dlx.errors import ConfigError, DataError
from dlx.layers.images import image_grid, save_image


def pixels(batch: dict) -> jax.Array:
    """batch["image"] (uint8 [B, H, W, C]) as floats in [0, 1]."""
    image = batch["image"]
    return image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image


def without_class(source, label: int) -> ArraySource:
    """`source`'s examples whose label is not `label`."""
    source = source if isinstance(source, ArraySource) else load_into_memory(source)
    keep = source.columns["label"] != label
    return ArraySource({k: v[keep] for k, v in source.columns.items()})


def write_grid(
    workdir: str, name: str, images, columns: int | None = None, folder: str = "plots"
) -> str:
    """Saves [N, H, W, C] images in [0, 1] as `<workdir>/<folder>/<name>.png`; returns the
    path."""
    os.makedirs(os.path.join(workdir, folder), exist_ok=True)
    path = os.path.join(workdir, folder, f"{name}.png")
    save_image(path, image_grid(np.asarray(images), columns))
    return path


def image_sample_options(options: dict, task: str) -> tuple[int, int]:
    """(num_samples, seed) of `launch.py sample` for a task that generates images."""
    unknown = set(options) - {"num_samples", "seed"}
    if unknown:
        raise ConfigError(f"{task} sampling takes num_samples and seed, not {sorted(unknown)}")
    count, seed = options.get("num_samples", 64), options.get("seed", 0)
    if count < 1:
        raise ConfigError(f"num_samples must be >= 1, got {count}")
    return count, seed


def save_samples(workdir: str, name: str, images, description: str, out) -> str:
    """`launch.py sample`'s output for an image task: the grid saved as
    `<workdir>/samples/<name>.png` (by the main process), its path reported on `out`."""
    if jax.process_index() != 0:
        return ""
    grid = write_grid(workdir, name, images, folder="samples")
    out.write(f"{len(images)} {description}: {grid}\n")
    return grid


def draw_images(task, state, count: int, seed: int, batch_size: int = 500) -> np.ndarray:
    """`count` generated images [count, H, W, C] in [0, 1] from a generative task's
    `sample_images(state, rng, n)`, drawn `batch_size` at a time (batch i with
    `fold_in(key(seed), i)`; every batch full size, so it compiles once), so that 10,000 images
    fit in memory."""
    if count < 1 or batch_size < 1:
        raise ConfigError(
            f"draw_images needs count >= 1 and batch_size >= 1, got {count} and {batch_size}"
        )
    key, batch_size = jax.random.PRNGKey(seed), min(batch_size, count)
    batches = [
        np.asarray(task.sample_images(state, jax.random.fold_in(key, i), batch_size))
        for i in range(-(-count // batch_size))
    ]
    return np.concatenate(batches)[:count]


def first_images(source, count: int) -> dict:
    """The first `count` examples of `source` as one batch."""
    return read_rows(source, np.arange(min(count, len(source))))


def read_image_files(paths: list[str], shape: tuple[int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Image files as one uint8 batch [N, H, W, C] of a run's input `shape`, and a note per file
    of what was done to it. A colour image for a one-channel model is converted to grey
    (ITU-R 601 luma) and a grey one for a colour model repeated over the channels; an image of
    another size is resized to the run's (bilinear; the aspect ratio is not kept). DataError,
    naming the file, for a missing file or one that is not an image."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    images, notes = [], []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"image file {path} does not exist")
        mode = "L" if channels == 1 else "RGB"
        try:
            with Image.open(path) as opened:
                image, original, original_mode = opened.convert(mode), opened.size, opened.mode
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{path} is not an image PIL can read ({error})") from None
        note = []
        if original_mode != mode:
            note.append(f"converted from {original_mode} to {'grey' if channels == 1 else mode}")
        if original != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            note.append(f"resized from {original[0]}x{original[1]} to {width}x{height}")
        pixels_ = np.asarray(image, np.uint8).reshape(height, width, -1)
        if pixels_.shape[-1] != channels:
            pixels_ = np.repeat(pixels_[..., :1], channels, axis=-1)
        images.append(pixels_)
        notes.append("; ".join(note))
    if not images:
        raise DataError("predict needs at least one image file")
    return np.stack(images), notes
