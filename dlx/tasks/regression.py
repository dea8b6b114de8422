"""Regression: mean squared error on a linear output, RMSE and R^2 at eval."""

from __future__ import annotations

import jax.numpy as jnp

from dlx.tasks import losses
from dlx.tasks.base import SupervisedTask, apply_model, model_inputs


class Task(SupervisedTask):
    supports_lora = True
    best_metric_default = ("rmse", "min")

    def _predict(self, apply_fn, params, model_state, batch, *, train, rng=None):
        out, model_state = apply_model(
            apply_fn, params, model_state, model_inputs(batch), train=train, rng=rng
        )
        return out.reshape(out.shape[0]), model_state

    def loss_fn(self, params, model_state, batch, rng):
        prediction, model_state = self._predict(
            self.apply_fn, params, model_state, batch, train=True, rng=rng
        )
        mse = jnp.mean(losses.squared_error(prediction, batch["target"]))
        loss = losses.with_penalty(mse, params, self.config.loss)
        return loss, ({"mse": mse}, model_state)

    def eval_step(self, state, batch) -> dict:
        prediction, _ = self._predict(
            state.apply_fn, state.params, state.model_state, batch, train=False
        )
        target, mask = batch["target"], batch["mask"].astype(jnp.float32)
        return {
            "squared_error": (losses.squared_error(prediction, target) * mask).sum(),
            "target_sum": (target * mask).sum(),
            "target_sq_sum": (target**2 * mask).sum(),
            "count": mask.sum(),
        }

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        n = float(sums["count"])
        mse = float(sums["squared_error"]) / n
        variance = float(sums["target_sq_sum"]) / n - (float(sums["target_sum"]) / n) ** 2
        return {"loss": mse, "rmse": mse**0.5, "r2": 1.0 - mse / variance}
