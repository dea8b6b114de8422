"""What every supervised task shares: model application with mutable collections, and inputs."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlx import data as data_lib
from dlx.data import RandomAccessSource
from dlx.models import get_model
from dlx.train.state import LossFn, TrainState, gradient_step


def model_inputs(batch: dict) -> jax.Array:
    """Images arrive as uint8 (4x less host-to-device traffic) and become floats in [0, 1] here."""
    if "image" in batch:
        image = batch["image"]
        return image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image
    return batch["features"].astype(jnp.float32)


def apply_model(apply_fn, params, model_state: dict, x: jax.Array, *, train: bool,
                rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Runs the model; in training the mutable collections (batch_stats ...) are updated."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else None
    if train and model_state:
        out, new_state = apply_fn(variables, x, train=True, rngs=rngs, mutable=list(model_state))
        return out, dict(new_state)
    return apply_fn(variables, x, train=train, rngs=rngs), model_state


def is_main_process() -> bool:
    return jax.process_index() == 0


class SupervisedTask:
    """What the runner asks of a task. Subclasses define `loss_fn`, `eval_step`,
    `summarize_eval`; the defaults here read `config.data.name` through `dlx.data` and build
    `config.model` by name.

    Construction happens before the workdir is touched (a bad config must not harm a run), so a
    task may read files of an existing `workdir` (a saved tokenizer) but writes them only in
    `write_run_files`.
    """

    best_metric_default: tuple[str, str] = ("loss", "min")

    def __init__(self, config, data_info, data_dir: str | None = None,
                 workdir: str | None = None):
        self.config = config
        self.data_info = data_info
        self.data_dir = data_dir
        self.workdir = workdir
        self.model = get_model(config.model.name, **self.model_kwargs())

    def model_kwargs(self) -> dict:
        return {k: v for k, v in self.config.model.items() if k != "name"}

    def source(self, split: str, *, train: bool) -> RandomAccessSource:
        """Random-access examples of `split`: shuffled batches for training (`train=True`),
        in order once for evaluation."""
        return data_lib.source(self.config.data.name, split, self.data_dir)

    def examples_per_epoch(self) -> int:
        return self.data_info.num_examples[self.config.data.train_split]

    def model_input(self, batch: dict) -> jax.Array:
        return model_inputs(batch)

    def init(self, rng: jax.Array, batch: dict) -> Any:
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng},
                               self.model_input(batch), train=False)

    loss_fn: LossFn

    @functools.cached_property
    def param_specs(self) -> Any:
        """The logical PartitionSpec of every parameter, from the model's boxed variables."""
        example = {k: np.asarray(v)[None] for k, v in
                   self.source(self.config.data.train_split, train=True)[0].items()}
        variables = jax.eval_shape(self.init, jax.random.PRNGKey(0), example)
        return nn.get_partition_spec(variables)["params"]

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return gradient_step(state, batch, self.loss_fn, self.config.grad_accum_steps,
                             self.param_specs)

    def write_run_files(self, workdir: str) -> None:
        """Files the run needs besides its checkpoints (a tokenizer ...); none by default."""

    def write_eval_artifacts(self, state: TrainState, sums: dict, workdir: str, step: int) -> None:
        """Figures and samples beyond the learning curves, under `workdir`. Called on every
        process (sampling runs sharded); only the main process writes."""
