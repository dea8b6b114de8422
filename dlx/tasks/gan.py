"""Generative adversarial training (DCGAN, `dlx.models.dcgan`): two players with their own
optimizers (`gan.generator_optimizer`, `gan.discriminator_optimizer`), both in the state and in
every checkpoint, updated in turn at every step:

    discriminator: minimise BCE(D(x), 1) + BCE(D(G(z)), 0)     on a real batch and fresh fakes
    generator:     minimise BCE(D(G(z')), 1)                    the non-saturating loss

Pixels are scaled to [-1, 1] (the generator ends in tanh). The noise z comes from the runner's
per-step key, so a resumed run draws the same noise. Eval scores the discriminator on the test
images and on as many fresh samples (`d_accuracy`: how often it tells them apart at 0.5; 0.5 is
a generator it cannot tell from the data) and writes a grid of samples from fixed noise
(`plots/samples.png`), so the grids of successive evals show the same z.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import models, schema
from dlx.metrics.evaluators import PerExample
from dlx.optim import optimizer as optimizer_lib
from dlx.optim.state import global_norm
from dlx.parallel import gather_fsdp
from dlx.tasks.base import Task as TaskBase
from dlx.tasks.base import is_main_process
from dlx.tasks.images import image_sample_options, pixels, save_samples, write_grid

NUM_SHOWN = 64


@flax.struct.dataclass
class GanState:
    generator: Any  # params
    discriminator: Any  # params
    batch_stats: Any  # the generator's batch-norm statistics
    generator_opt: optax.OptState
    discriminator_opt: optax.OptState


def _dcgan_optimizer() -> ml_collections.ConfigDict:
    config = optimizer_lib.default_config()
    config.update(name="adam", learning_rate=2e-4, b1=0.5, b2=0.999)
    return config


def _to_unit(images: jax.Array) -> jax.Array:
    return (images + 1.0) / 2.0


class Task(TaskBase):
    nonfinite_metrics = ("d_loss", "g_loss")
    best_metric_default = ("d_accuracy", "min")
    warm_start_items = ("generator", "discriminator", "batch_stats")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {
                "gan": dict(
                    generator_optimizer=_dcgan_optimizer(),
                    discriminator_optimizer=_dcgan_optimizer(),
                )
            }
        )

    config_rules = {
        **schema.under("gan.generator_optimizer", **optimizer_lib.RULES),
        **schema.under("gan.discriminator_optimizer", **optimizer_lib.RULES),
    }

    @staticmethod
    def check_config(config) -> None:
        models.check_config(config.model)
        for player in ("generator", "discriminator"):
            optimizer_lib.check_config(config.gan[f"{player}_optimizer"], f"gan.{player}_optimizer")

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        super().__init__(config, data_info, data_dir, workdir)
        self.model = models.get_model(
            config.model.name, **{k: v for k, v in config.model.items() if k != "name"}
        )
        steps = self.total_steps()
        self.tx = {
            player: optimizer_lib.build_optimizer(config.gan[f"{player}_optimizer"], steps)
            for player in ("generator", "discriminator")
        }

    def _noise(self, rng, count: int) -> jax.Array:
        return jax.random.normal(rng, (count, self.model.latent_dim))

    def init_state(self, rng, batch) -> GanState:
        params_rng, noise_rng = jax.random.split(rng)
        images = pixels(batch)
        variables = self.model.init(
            params_rng, self._noise(noise_rng, images.shape[0]), images, train=False
        )
        params = variables["params"]
        return GanState(
            params["generator"],
            params["discriminator"],
            variables["batch_stats"]["generator"],
            self.tx["generator"].init(params["generator"]),
            self.tx["discriminator"].init(params["discriminator"]),
        )

    @functools.cached_property
    def param_specs(self) -> dict:
        images = jax.ShapeDtypeStruct((1, *self.model.image_shape), jnp.float32)
        z = jax.ShapeDtypeStruct((1, self.model.latent_dim), jnp.float32)
        variables = jax.eval_shape(
            functools.partial(self.model.init, train=False), jax.random.PRNGKey(0), z, images
        )
        return nn.get_partition_spec(variables)["params"]

    def _generate(self, generator, batch_stats, z, *, train: bool):
        variables = {"params": {"generator": generator}, "batch_stats": {"generator": batch_stats}}
        if train:
            images, updates = self.model.apply(
                variables, z, train=True, method="generate", mutable=["batch_stats"]
            )
            return images, updates["batch_stats"]["generator"]
        return self.model.apply(variables, z, method="generate"), batch_stats

    def _discriminate(self, discriminator, images):
        return self.model.apply(
            {"params": {"discriminator": discriminator}}, images, method="discriminate"
        )

    def train_step(self, state: GanState, batch, rng, step):
        specs = self.param_specs
        d_rng, g_rng = jax.random.split(rng)
        real = pixels(batch) * 2.0 - 1.0
        count = real.shape[0]
        fake, _ = self._generate(
            state.generator, state.batch_stats, self._noise(d_rng, count), train=True
        )
        fake = jax.lax.stop_gradient(fake)

        def d_loss_fn(discriminator):
            discriminator = gather_fsdp(discriminator, specs["discriminator"])
            real_logits = self._discriminate(discriminator, real)
            fake_logits = self._discriminate(discriminator, fake)
            loss = (
                optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones(count)).mean()
                + optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros(count)).mean()
            )
            return loss, (jax.nn.sigmoid(real_logits).mean(), jax.nn.sigmoid(fake_logits).mean())

        (d_loss, (d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            state.discriminator
        )
        updates, d_opt = self.tx["discriminator"].update(
            d_grads, state.discriminator_opt, state.discriminator
        )
        discriminator = optax.apply_updates(state.discriminator, updates)

        def g_loss_fn(generator):
            generator = gather_fsdp(generator, specs["generator"])
            images, batch_stats = self._generate(
                generator, state.batch_stats, self._noise(g_rng, count), train=True
            )
            logits = self._discriminate(gather_fsdp(discriminator, specs["discriminator"]), images)
            return optax.sigmoid_binary_cross_entropy(logits, jnp.ones(count)).mean(), batch_stats

        (g_loss, batch_stats), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            state.generator
        )
        updates, g_opt = self.tx["generator"].update(g_grads, state.generator_opt, state.generator)
        new_state = GanState(
            optax.apply_updates(state.generator, updates), discriminator, batch_stats, g_opt, d_opt
        )
        return new_state, {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": d_real,
            "d_fake": d_fake,
            "d_grad_norm": global_norm(d_grads),
            "g_grad_norm": global_norm(g_grads),
        }

    # -------------------------------------------------------------------------------------------
    # Evaluation and samples
    # -------------------------------------------------------------------------------------------
    def per_example(self, state: GanState, batch, rng) -> dict:
        real = pixels(batch) * 2.0 - 1.0
        fake, _ = self._generate(
            state.generator, state.batch_stats, self._noise(rng, real.shape[0]), train=False
        )
        return {
            "real": jax.nn.sigmoid(self._discriminate(state.discriminator, real)),
            "fake": jax.nn.sigmoid(self._discriminate(state.discriminator, fake)),
        }

    @staticmethod
    def summarize(values: dict) -> dict[str, float]:
        correct = np.concatenate([values["real"] > 0.5, values["fake"] < 0.5])
        return {
            "d_accuracy": float(correct.mean()),
            "d_real": float(values["real"].mean()),
            "d_fake": float(values["fake"].mean()),
        }

    @functools.cached_property
    def _generate_eval(self):
        return jax.jit(functools.partial(self._generate, train=False))

    def sample_images(self, state: GanState, rng: jax.Array, count: int) -> np.ndarray:
        """`count` images in [0, 1] from noise drawn with `rng` (dlx.tasks.images.draw_images)."""
        images, _ = self._generate_eval(state.generator, state.batch_stats, self._noise(rng, count))
        return np.asarray(_to_unit(images))

    def samples(self, state: GanState, count: int, seed: int) -> np.ndarray:
        return self.sample_images(state, jax.random.PRNGKey(seed), count)

    def write_samples(self, state, values, workdir: str, step: int) -> None:
        images = self.samples(state, NUM_SHOWN, self.config.seed)
        if is_main_process():
            write_grid(workdir, "samples", images, columns=8)

    def evaluator(self):
        return PerExample(
            self.per_example, self.summarize, self.write_samples, seed=self.config.seed
        )

    def check_sample_options(self, options: dict) -> None:
        image_sample_options(options, "gan")

    def sample(self, state, options: dict, out=None) -> str:
        """`launch.py sample`: a grid of generated images under the workdir's samples/
        (options: num_samples, seed)."""
        out = out or sys.stdout  # looked up now: a caller may have redirected it
        count, seed = image_sample_options(options, "gan")
        return save_samples(
            self.workdir,
            f"generated_seed{seed}",
            self.samples(state, count, seed),
            "generated images",
            out,
        )

    def num_params(self, state: GanState) -> int:
        return sum(
            int(np.prod(x.shape)) for x in jax.tree.leaves((state.generator, state.discriminator))
        )
