"""A trained run loaded for use: no training loop, no optimizer steps.

    bundle = inference.load("runs/fashion_cnn")
    logits = bundle(batch)                      # the task's `predict`, jitted, on the run's mesh
    bundle.sample({"prompt": "ROMEO:"})         # what `launch.py sample` does
    bundle.predict_images(["shoe.png"])         # what `launch.py predict` does

`load` reads the workdir's config.json (or takes a config), builds the task and the state layout
as the runner does, and restores the latest checkpoint onto this machine's devices, whatever mesh
it was trained on. The data set is not needed: the run's data_spec.json holds what the layout
needs of it (runs trained before that file existed open their data set instead). Pipelines and
`predict` stand on this.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from dlx import runtime
from dlx.errors import ConfigError
from dlx.tasks.images import read_image_files
from dlx.train import config as config_lib
from dlx.train import loop, sharding

IMAGES_PER_CALL = 256  # images per forward pass of `Bundle.predict_images`


@dataclasses.dataclass
class Bundle:
    config: ml_collections.ConfigDict
    task: Any
    state: Any
    step: int
    run: loop.Run
    workdir: str

    @functools.cached_property
    def _predict(self):
        return jax.jit(self.task.predict, compiler_options=runtime.compiler_options())

    def __call__(self, batch: dict) -> Any:
        with loop._tracing_context(self.run.mesh, self.config):
            return self._predict(self.state, batch)

    def sample(self, options: dict, out=None) -> Any:
        check_sample_options(self.task, options)
        with loop._tracing_context(self.run.mesh, self.config):
            return self.task.sample(self.state, options, out)

    def predict_images(self, paths: list[str], out=None) -> Any:
        """The task's report on image files (top-5 classes, boxes ...), as `launch.py predict`
        prints it; files of another size or colour are converted (`read_image_files`)."""
        check_predicts_images(self.task, self.run.data_info)
        shape = tuple(self.run.data_info.features["image"].shape)
        images, notes = read_image_files(list(paths), shape)
        with loop._tracing_context(self.run.mesh, self.config):
            return self.task.predict_images(
                self._in_chunks, images, list(paths), notes, self.workdir, out or sys.stdout
            )

    def _in_chunks(self, batch: dict) -> Any:
        """`self(batch)` on host arrays, IMAGES_PER_CALL examples at a time (the last chunk
        padded, so one compilation serves any number of files): memory stays bounded however
        many files `launch.py predict` is given."""
        count = len(batch["image"])
        size = min(count, IMAGES_PER_CALL)
        outputs = []
        for start in range(0, count, size):
            chunk = {k: v[start : start + size] for k, v in batch.items()}
            chunk = {
                k: np.concatenate([v, v[-1:].repeat(size - len(v), 0)]) for k, v in chunk.items()
            }
            outputs.append(jax.device_get(self(chunk)))
        return jax.tree.map(lambda *parts: np.concatenate(parts)[:count], *outputs)


def check_predicts_images(task, data_info) -> None:
    if not hasattr(task, "predict_images"):
        raise ConfigError(
            f"task '{task.config.task}' has no image prediction; `launch.py predict` needs "
            f"a run of an image classifier or a detector"
        )
    image = data_info.features.get("image")
    if image is None or len(image.shape) != 3 or None in image.shape:
        raise ConfigError(
            f"this run trained on '{task.config.data.name}', which has no fixed-size images; "
            f"`launch.py predict` takes image files for runs trained on images"
        )


def check_sample_options(task, options: dict) -> None:
    if not hasattr(task, "sample"):
        raise ConfigError(
            f"task '{task.config.task}' has no sampling; `launch.py sample` needs a "
            f"task that generates (language_model, vae, gan, diffusion)"
        )
    if hasattr(task, "check_sample_options"):
        task.check_sample_options(options)


def load(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    sample_options: dict | None = None,
    predicts_images: bool = False,
) -> Bundle:
    """The latest checkpoint of `workdir`, ready to call; `config` defaults to its config.json.
    `sample_options` (and, with `predicts_images`, that the task predicts on image files) are
    checked against the task before anything is restored."""
    if config is None:
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            raise ConfigError(
                f"{workdir} holds no run (no config.json); give the --workdir of a "
                f"run that has trained"
            )
        config = config_lib.from_json(path)
    sharding.fit_mesh_to_devices(config.mesh, jax.device_count())
    run = loop.prepare_run(config, workdir, data_spec=loop.read_data_spec(workdir))
    if sample_options is not None:
        check_sample_options(run.task, sample_options)
    if predicts_images:
        check_predicts_images(run.task, run.data_info)
    state, step = loop.restore_latest(run, workdir)
    return Bundle(config, run.task, state, step, run, workdir)
