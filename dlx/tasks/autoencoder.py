"""Autoencoders on images: reconstruct the input through a bottleneck (`dlx.models.autoencoder`,
dense or convolutional). `autoencoder.noise_std > 0` trains a denoising autoencoder (Gaussian
noise on the input, the clean image as the target).

Anomaly detection as a use: `autoencoder.holdout_class = k` trains without class k; eval then
reports the AUROC of the per-image reconstruction error for "class k" against the rest of the
test split (an autoencoder reconstructs what it has seen better than what it has not).

Eval: mean reconstruction loss (per image, summed over pixels) and mean squared error per pixel;
figures: test images above their reconstructions (`plots/reconstructions.png`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlx import schema
from dlx.errors import ConfigError
from dlx.metrics.evaluators import PerExample
from dlx.schema import Float, Int, OneOf
from dlx.tasks import losses
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config
from dlx.tasks.images import first_images, pixels, without_class, write_grid

LOSSES = ("bce", "mse")
NUM_SHOWN = 16


def reconstruction_loss(logits: jax.Array, target: jax.Array, kind: str) -> jax.Array:
    """Per image, summed over pixels: Bernoulli cross-entropy of sigmoid(logits) against the
    target intensities, or squared error of sigmoid(logits)."""
    if kind == "bce":
        return losses.bernoulli_nll(logits, target)
    return losses.squared_error(jax.nn.sigmoid(logits), target)


class Task(SupervisedTask):
    best_metric_default = ("loss", "min")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.autoencoder = ml_collections.ConfigDict(
            dict(
                loss="bce",  # "bce" (Bernoulli cross-entropy on intensities) or "mse"
                noise_std=0.0,  # > 0: a denoising autoencoder
                holdout_class=-1,
            )
        )  # >= 0: trained without this class; eval reports its AUROC
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "autoencoder", loss=OneOf(*LOSSES), noise_std=Float(low=0), holdout_class=Int(low=-1)
        ),
    }

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        holdout = config.autoencoder.holdout_class
        if holdout >= 0 and holdout >= int(data_info.num_classes or 0):
            raise ConfigError(
                f"config.autoencoder.holdout_class={holdout} is not a class of "
                f"{config.data.name} ({data_info.num_classes} classes)"
            )
        super().__init__(config, data_info, data_dir, workdir)

    def model_input(self, batch: dict) -> jax.Array:
        return pixels(batch)

    def source(self, split: str, *, train: bool):
        source = super().source(split, train=train)
        holdout = self.config.autoencoder.holdout_class
        return without_class(source, holdout) if train and holdout >= 0 else source

    def examples_per_epoch(self) -> int:
        return len(self.source(self.config.data.train_split, train=True))

    def loss_fn(self, params, model_state, batch, rng):
        clean = pixels(batch)
        noisy = clean
        if self.config.autoencoder.noise_std > 0:
            noisy = clean + self.config.autoencoder.noise_std * jax.random.normal(rng, clean.shape)
        logits = self.model.apply({"params": params}, noisy, train=True)
        recon = reconstruction_loss(logits, clean, self.config.autoencoder.loss).mean()
        loss = losses.with_penalty(recon, params, self.config.loss)
        return loss, ({"reconstruction": recon}, model_state)

    def per_example(self, state, batch, rng) -> dict:
        clean = pixels(batch)
        logits = state.apply_fn({"params": state.params}, clean)
        return {
            "loss": reconstruction_loss(logits, clean, self.config.autoencoder.loss),
            "squared_error": jnp.square(jax.nn.sigmoid(logits) - clean).mean((1, 2, 3)),
            "label": batch["label"],
        }

    def summarize(self, values: dict) -> dict[str, float]:
        metrics = {
            "loss": float(values["loss"].mean()),
            "mse": float(values["squared_error"].mean()),
        }
        holdout = self.config.autoencoder.holdout_class
        if holdout >= 0:
            from sklearn.metrics import roc_auc_score

            is_anomaly = values["label"] == holdout
            if is_anomaly.any() and not is_anomaly.all():
                metrics["auroc"] = float(roc_auc_score(is_anomaly, values["squared_error"]))
        return metrics

    def write_reconstructions(self, state, values: dict, workdir: str, step: int) -> None:
        batch = first_images(self.source(self.config.data.eval_split, train=False), NUM_SHOWN)
        clean = pixels({"image": jnp.asarray(batch["image"])})
        recon = jax.nn.sigmoid(jax.jit(state.apply_fn)({"params": state.params}, clean))
        if is_main_process():
            write_grid(
                workdir,
                "reconstructions",
                np.concatenate([np.asarray(clean), np.asarray(recon)]),
                columns=NUM_SHOWN,
            )

    def evaluator(self):
        return PerExample(
            self.per_example, self.summarize, self.write_reconstructions, seed=self.config.seed
        )
