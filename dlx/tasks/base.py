"""What every supervised task shares: model application with mutable collections, and inputs."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

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


class SupervisedTask:
    """Subclasses define `loss_fn`, `eval_step`, `summarize_eval`; the rest is shared."""

    def __init__(self, config, model, data_info):
        self.config = config
        self.model = model
        self.data_info = data_info

    def init(self, rng: jax.Array, batch: dict) -> Any:
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init({"params": params_rng, "dropout": dropout_rng},
                               model_inputs(batch), train=False)

    loss_fn: LossFn

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        return gradient_step(state, batch, self.loss_fn, self.config.grad_accum_steps)

    def write_eval_artifacts(self, sums: dict, plots_dir: str, step: int) -> None:
        """Figures beyond the learning curves (confusion matrices ...); none by default."""
