"""Variational autoencoder on images (`dlx.models.autoencoder` with `variational=True`).

Likelihood: Bernoulli over binarized pixels. Images are binarized stochastically (each pixel is 1
with probability its intensity), afresh at every train step ("dynamic binarization") and with a
fixed seed per eval batch, so the negative ELBO and the NLL are proper discrete log-likelihoods
in nats per image, comparable with published binarized-MNIST numbers.

    loss = E_q[-log p(x|z)] + beta(step) * KL(q(z|x) || N(0, I))     z = mean + sigma * eps

`vae.kl_warmup_steps > 0` ramps beta linearly from 0 to 1 over that many steps (KL warm-up);
eval always uses beta = 1. Eval reports the negative ELBO and, with `vae.importance_samples = k
> 0`, the importance-weighted estimate of -log p(x) (Burda et al.'s IWAE bound with k samples;
it tightens towards the true NLL as k grows). The sampling noise comes from the runner's
per-step key, never from a key kept in the model.

Figures: samples from the prior, test images and reconstructions, a latent interpolation, and
for a 2-D latent the test set's posterior means coloured by label.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlx import schema
from dlx.errors import ConfigError
from dlx.metrics.evaluators import PerExample
from dlx.schema import Int
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config
from dlx.tasks.images import first_images, image_sample_options, pixels, save_samples, write_grid
from dlx.tasks.losses import bernoulli_nll

NUM_SHOWN = 16


def binarize(images: jax.Array, rng: jax.Array) -> jax.Array:
    return (jax.random.uniform(rng, images.shape) < images).astype(jnp.float32)


def gaussian_kl(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    """KL(N(mean, exp(log_variance)) || N(0, I)), summed over the latent dimensions."""
    return 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance, axis=-1)


class Task(SupervisedTask):
    best_metric_default = ("negative_elbo", "min")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.vae = ml_collections.ConfigDict(dict(kl_warmup_steps=0, importance_samples=100))
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under("vae", kl_warmup_steps=Int(low=0), importance_samples=Int(low=0)),
    }

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        if not config.model.get("variational", False):
            raise ConfigError(
                "the vae task needs config.model.variational=True (an encoder that "
                "gives a mean and a log-variance)"
            )

    def model_input(self, batch: dict) -> jax.Array:
        return pixels(batch)

    def _elbo_terms(self, apply_fn, params, images, rng):
        """(-log p(x|z), KL) per image for one z drawn from q(z|x), x binarized with `rng`."""
        binarize_rng, latent_rng = jax.random.split(rng)
        x = binarize(images, binarize_rng)
        mean, log_variance = apply_fn({"params": params}, x, method="encode")
        z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(latent_rng, mean.shape)
        logits = apply_fn({"params": params}, z, method="decode")
        return bernoulli_nll(logits, x), gaussian_kl(mean, log_variance)

    def beta(self, step: jax.Array) -> jax.Array:
        warmup = self.config.vae.kl_warmup_steps
        if warmup <= 0:
            return jnp.float32(1.0)
        return jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / warmup)

    def step_loss(self, step):
        """Reconstruction plus the KL term at this step's warm-up weight."""
        beta = self.beta(step)

        def loss_fn(params, model_state, batch, rng):
            nll, kl = self._elbo_terms(self.model.apply, params, pixels(batch), rng)
            loss = nll.mean() + beta * kl.mean()
            return loss, (
                {"reconstruction": nll.mean(), "kl": kl.mean(), "negative_elbo": (nll + kl).mean()},
                model_state,
            )

        return loss_fn

    def train_step(self, state, batch, rng, step):
        state, metrics = super().train_step(state, batch, rng, step)
        return state, {**metrics, "kl_weight": self.beta(step)}

    def per_example(self, state, batch, rng) -> dict:
        images = pixels(batch)
        binarize_rng, latent_rng = jax.random.split(rng)
        x = binarize(images, binarize_rng)
        mean, log_variance = state.apply_fn({"params": state.params}, x, method="encode")
        std = jnp.exp(0.5 * log_variance)
        eps = jax.random.normal(latent_rng, mean.shape)
        logits = state.apply_fn({"params": state.params}, mean + std * eps, method="decode")
        values = {
            "negative_elbo": bernoulli_nll(logits, x) + gaussian_kl(mean, log_variance),
            "kl": gaussian_kl(mean, log_variance),
            "mean": mean,
            "label": batch["label"],
        }
        k = self.config.vae.importance_samples
        if k:
            values["nll"] = self._importance_sampled_nll(
                state, x, mean, std, k, jax.random.fold_in(rng, 1)
            )
        return values

    def _importance_sampled_nll(self, state, x, mean, std, k: int, rng) -> jax.Array:
        """-log (1/k sum_i p(x|z_i) p(z_i) / q(z_i|x)), z_i ~ q(z|x), per image."""

        def log_weight(eps):
            z = mean + std * eps
            logits = state.apply_fn({"params": state.params}, z, method="decode")
            log_prior = -0.5 * jnp.sum(z**2 + math.log(2 * math.pi), axis=-1)
            log_posterior = -0.5 * jnp.sum(eps**2 + math.log(2 * math.pi), axis=-1) - jnp.sum(
                jnp.log(std), axis=-1
            )
            return -bernoulli_nll(logits, x) + log_prior - log_posterior

        eps = jax.random.normal(rng, (k, *mean.shape))
        log_weights = jax.lax.map(log_weight, eps)  # [k, B], one decoder pass per sample
        return -(jax.nn.logsumexp(log_weights, axis=0) - math.log(k))

    def summarize(self, values: dict) -> dict[str, float]:
        metrics = {
            "negative_elbo": float(values["negative_elbo"].mean()),
            "kl": float(values["kl"].mean()),
        }
        if "nll" in values:
            metrics["nll"] = float(values["nll"].mean())
        return metrics

    # -------------------------------------------------------------------------------------------
    # Figures and samples
    # -------------------------------------------------------------------------------------------
    @functools.cached_property
    def _decode(self):
        return jax.jit(lambda params, z: self.model.apply({"params": params}, z, method="decode"))

    def decode_images(self, state, z) -> np.ndarray:
        return np.asarray(jax.nn.sigmoid(self._decode(state.params, z)))  # Bernoulli means

    def sample_images(self, state, rng: jax.Array, count: int) -> np.ndarray:
        """`count` images in [0, 1], the Bernoulli means decoded from prior samples drawn with
        `rng` (dlx.tasks.images.draw_images)."""
        return self.decode_images(
            state, jax.random.normal(rng, (count, self.config.model.latent_dim))
        )

    def write_figures(self, state, values: dict, workdir: str, step: int) -> None:
        latent = self.config.model.latent_dim
        prior = jax.random.normal(jax.random.PRNGKey(self.config.seed), (64, latent))
        samples = self.decode_images(state, prior)
        shown = first_images(self.source(self.config.data.eval_split, train=False), NUM_SHOWN)
        images = pixels({"image": jnp.asarray(shown["image"])})
        reconstructions = self.decode_images(state, values["mean"][:NUM_SHOWN])
        start, end = values["mean"][0], values["mean"][1]
        path = start[None] + np.linspace(0, 1, 10)[:, None] * (end - start)[None]
        interpolation = self.decode_images(state, jnp.asarray(path))
        if not is_main_process():
            return
        write_grid(workdir, "samples", samples, columns=8)
        write_grid(
            workdir,
            "reconstructions",
            np.concatenate([np.asarray(images), reconstructions]),
            columns=NUM_SHOWN,
        )
        write_grid(workdir, "interpolation", interpolation, columns=10)
        if latent == 2:
            _plot_latent_means(
                values["mean"],
                values["label"],
                os.path.join(workdir, "plots", "latent_means.png"),
                self.data_info.class_names,
            )

    def evaluator(self):
        return PerExample(
            self.per_example, self.summarize, self.write_figures, seed=self.config.seed
        )

    def check_sample_options(self, options: dict) -> None:
        image_sample_options(options, "vae")

    def sample(self, state, options: dict, out=None) -> str:
        """`launch.py sample`: a grid of images decoded from prior samples, saved under the
        workdir's samples/ (options: num_samples, seed)."""
        out = out or sys.stdout  # looked up now: a caller may have redirected it
        count, seed = image_sample_options(options, "vae")
        z = jax.random.normal(jax.random.PRNGKey(seed), (count, self.config.model.latent_dim))
        return save_samples(
            self.workdir,
            f"prior_seed{seed}",
            self.decode_images(state, z),
            "samples from the prior",
            out,
        )


def _plot_latent_means(means, labels, path: str, class_names) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    scatter = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=3)
    handles, _ = scatter.legend_elements()
    names = list(class_names or range(int(labels.max()) + 1))
    ax.legend(handles, names[: len(handles)], fontsize=7, markerscale=1.5, loc="best")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("Posterior means of the test images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
