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
    of what was done to it. The EXIF orientation of a photo is applied; 16-bit images are scaled
    to 8 bits over their full range (0-65535) and float images read as [0, 1]. A colour image
    for a one-channel model is converted to grey (ITU-R 601 luma) and a grey one for a colour
    model repeated over the channels; an image of another size is resized to the run's
    (bilinear; the aspect ratio is not kept); of an animated image the first frame is read.
    DataError, naming the file, for a missing file, one that is not an image, or one whose pixel
    values cannot be read as intensities."""
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    images, notes = [], []
    for path in paths:
        if os.path.isdir(path):
            raise DataError(f"{path} is a folder; give the image files in it ({path}/*.png)")
        if not os.path.isfile(path):
            raise DataError(f"image file {path} does not exist")
        try:
            with Image.open(path) as opened:
                original_mode, frames = opened.mode, getattr(opened, "n_frames", 1)
                oriented = opened.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1)
                image = ImageOps.exif_transpose(opened)
                image = _to_eight_bits(image, path).convert(mode)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise DataError(f"{path} is not an image PIL can read ({error})") from None
        note = []
        if frames > 1:
            note.append(f"its first of {frames} frames")
        if oriented:
            note.append("turned upright by its EXIF orientation")
        if original_mode != mode:
            note.append(f"converted from {original_mode} to {'grey' if channels == 1 else mode}")
        if image.size != (width, height):
            note.append(f"resized from {image.size[0]}x{image.size[1]} to {width}x{height}")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels_ = np.asarray(image, np.uint8).reshape(height, width, -1)
        if pixels_.shape[-1] != channels:
            pixels_ = np.repeat(pixels_[..., :1], channels, axis=-1)
        images.append(pixels_)
        notes.append("; ".join(note))
    if not images:
        raise DataError("predict needs at least one image file")
    return np.stack(images), notes


def _to_eight_bits(image, path: str):
    """`image` as 8-bit grey ("L") when its mode holds more than 8 bits per pixel, else itself:
    PIL's own conversion clips those values at 255 instead of scaling them, so a 16-bit PNG
    would read as nearly all white and a float image in [0, 1] as black."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        values, high = np.asarray(image, np.int64), 65535
    elif image.mode == "F":
        values, high = np.asarray(image, np.float64), 1
    else:
        return image
    if values.size and (values.min() < 0 or values.max() > high or not np.isfinite(values).all()):
        raise DataError(
            f"{path} is an image of mode {image.mode} with values from {values.min()} to "
            f"{values.max()}; predict reads integer images as 0-65535 and float images as 0-1: "
            "save it as an 8-bit PNG"
        )
    return Image.fromarray(np.round(values * (255 / high)).astype(np.uint8), "L")
