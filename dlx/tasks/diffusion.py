"""Denoising diffusion (DDPM, Ho et al., 2020) on images, with a `dlx.models.unet` noise
predictor, EMA weights in the state, ancestral sampling and DDIM (Song et al., 2021).

Forward process over `diffusion.timesteps` steps with a "linear" (Ho et al.: beta 1e-4 to 0.02)
or "cosine" (Nichol and Dhariwal, 2021) noise schedule:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,     loss = |eps - eps_theta(x_t, t)|^2

Pixels are scaled to [-1, 1] and padded with -1 (background) to `diffusion.image_size`; samples
are cropped back. The state holds the trained params, their Adam state and an exponential moving
average of the params (`diffusion.ema_decay`), which is what eval and sampling use.

Eval: the denoising loss of the EMA weights on the test split (a t and noise fixed per image, so
successive evals compare), and figures: a grid of DDIM samples (`plots/samples.png`) and a
denoising trajectory (`plots/trajectory.png`: rows are samples, columns the prediction of x_0 at
evenly spaced steps). `launch.py sample` draws with `diffusion.sampler` ("ddim", with
`diffusion.sample_steps` steps and `diffusion.eta`, or "ancestral", every step).
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import runtime, schema
from dlx.errors import ConfigError
from dlx.metrics.evaluators import PerExample
from dlx.optim.state import compute_gradients, global_norm
from dlx.schema import Float, Int, OneOf
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config
from dlx.tasks.images import image_sample_options, pixels, save_samples, write_grid

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddim", "ancestral")
NUM_SHOWN = 64
TRAJECTORY_ROWS, TRAJECTORY_COLUMNS = 8, 10


@flax.struct.dataclass
class DiffusionState:
    params: Any
    opt_state: optax.OptState
    ema: Any  # exponential moving average of params: what eval and sampling use


def noise_schedule(kind: str, timesteps: int) -> np.ndarray:
    """beta_1..beta_T (float64)."""
    if kind == "linear":
        scale = 1000.0 / timesteps  # Ho et al.'s 1e-4..0.02 at T = 1000, rescaled for other T
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = np.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


class Task(SupervisedTask):
    nonfinite_metrics = ("loss", "grad_norm")
    best_metric_default = ("loss", "min")
    warm_start_items = ("params", "ema")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.diffusion = ml_collections.ConfigDict(
            dict(
                timesteps=1000,
                schedule="linear",
                ema_decay=0.999,
                image_size=32,
                sampler="ddim",
                sample_steps=50,
                eta=0.0,
            )
        )
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "diffusion",
            timesteps=Int(low=2),
            schedule=OneOf(*SCHEDULES),
            ema_decay=Float(0, 1, high_open=True),
            image_size=Int(low=1),
            sampler=OneOf(*SAMPLERS),
            sample_steps=Int(low=1),
            eta=Float(low=0),
        ),
    }

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        d = config.diffusion
        if d.sample_steps > d.timesteps:
            raise ConfigError(
                f"config.diffusion.sample_steps={d.sample_steps} must be <= "
                f"config.diffusion.timesteps={d.timesteps}"
            )

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        super().__init__(config, data_info, data_dir, workdir)
        d = config.diffusion
        height, width, channels = data_info.features["image"].shape
        if d.image_size < max(height, width):
            raise ConfigError(
                f"config.diffusion.image_size={d.image_size} is smaller than the "
                f"{height}x{width} images"
            )
        self.image_shape = (height, width, channels)
        betas = noise_schedule(d.schedule, d.timesteps)
        self.alpha_bar = jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)
        self.betas = jnp.asarray(betas, jnp.float32)

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        size, channels = (
            self.config.diffusion.image_size,
            self.data_info.features["image"].shape[-1],
        )
        kwargs["image_shape"] = (size, size, channels)
        return kwargs

    # -------------------------------------------------------------------------------------------
    # Images in and out
    # -------------------------------------------------------------------------------------------
    def to_model_space(self, batch: dict) -> jax.Array:
        """[B, H, W, C] uint8 -> [-1, 1], padded with -1 to image_size."""
        x = pixels(batch) * 2.0 - 1.0
        size = self.config.diffusion.image_size
        pad_h, pad_w = size - x.shape[1], size - x.shape[2]
        return jnp.pad(
            x,
            ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
            constant_values=-1.0,
        )

    def to_images(self, x: jax.Array) -> np.ndarray:
        """Model space -> [B, H, W, C] in [0, 1], cropped to the data's size."""
        height, width, _ = self.image_shape
        top = (x.shape[1] - height) // 2
        left = (x.shape[2] - width) // 2
        x = np.asarray(x)[:, top : top + height, left : left + width]  # on the host: no compile
        return np.clip((x + 1.0) / 2.0, 0.0, 1.0)

    def model_input(self, batch: dict) -> jax.Array:
        return self.to_model_space(batch)

    def init(self, rng, batch):
        x = self.to_model_space(batch)
        return self.model.init(
            {"params": rng, "dropout": rng}, x, jnp.zeros((x.shape[0],), jnp.int32), train=False
        )

    def init_state(self, rng, batch) -> DiffusionState:
        params = self.init(rng, batch)["params"]
        return DiffusionState(params, self.tx.init(params), params)

    # -------------------------------------------------------------------------------------------
    # Training
    # -------------------------------------------------------------------------------------------
    def noisy(self, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
        a = self.alpha_bar[t][:, None, None, None]
        return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps

    def denoising_loss(self, params, x0, rng, *, train: bool, dropout_rng=None) -> jax.Array:
        """Per image: mean over pixels of |eps - eps_theta(x_t, t)|^2, t and eps from rng."""
        t_rng, eps_rng = jax.random.split(rng)
        t = jax.random.randint(t_rng, (x0.shape[0],), 0, self.config.diffusion.timesteps)
        eps = jax.random.normal(eps_rng, x0.shape)
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        predicted = self.model.apply(
            {"params": params}, self.noisy(x0, t, eps), t, train=train, rngs=rngs
        )
        return jnp.mean(jnp.square(predicted - eps), axis=(1, 2, 3))

    def step_loss(self, step):
        """The denoising loss of a batch; rng draws t, the noise and dropout."""

        def loss_fn(params, model_state, batch, rng):
            noise_rng, dropout_rng = jax.random.split(rng)
            loss = self.denoising_loss(
                params, self.to_model_space(batch), noise_rng, train=True, dropout_rng=dropout_rng
            ).mean()
            return loss, ({}, model_state)

        return loss_fn

    def train_step(self, state: DiffusionState, batch, rng, step):
        grads, loss, _, _ = compute_gradients(
            state.params,
            {},
            batch,
            rng,
            self.step_loss(step),
            self.config.grad_accum_steps,
            self.param_specs,
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = self.config.diffusion.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        return DiffusionState(params, opt_state, ema), {
            "loss": loss,
            "grad_norm": global_norm(grads),
            "learning_rate": self.schedule(step),
        }

    # -------------------------------------------------------------------------------------------
    # Sampling
    # -------------------------------------------------------------------------------------------
    def ddim_steps(self, count: int) -> np.ndarray:
        """`count` steps from T-1 down to 0, evenly spaced."""
        timesteps = self.config.diffusion.timesteps
        return np.unique(np.linspace(0, timesteps - 1, count).round().astype(np.int32))[::-1]

    @functools.cached_property
    def _jitted_sample(self):
        # Built on first use, not at import: the compiler options depend on the backend, which
        # must not be initialized before the runner has set up the devices.
        return jax.jit(
            self._sample, static_argnums=(2, 3), compiler_options=runtime.compiler_options()
        )

    @functools.cached_property
    def _jitted_final_samples(self):
        # Only x: the predictions along the way are dropped inside the jit, so they are never
        # kept (1,000 ancestral steps of them are 4 GB for 1,000 images).
        return jax.jit(
            lambda params, rng, count: self._sample(
                params, rng, count, self.config.diffusion.sampler
            )[0],
            static_argnums=(2,),
            compiler_options=runtime.compiler_options(),
        )

    def _sample(self, params, rng, count: int, sampler: str):
        """(samples [count, S, S, C] in model space, predictions of x_0 along the way
        [steps, count, S, S, C])."""
        size, channels = self.config.diffusion.image_size, self.image_shape[-1]
        start_rng, rng = jax.random.split(rng)
        x = jax.random.normal(start_rng, (count, size, size, channels))

        def predict(x, t):
            eps = self.model.apply({"params": params}, x, jnp.full((count,), t))
            a = self.alpha_bar[t]
            x0 = jnp.clip((x - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a), -1.0, 1.0)
            return x0, (x - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)  # eps consistent with clip

        if sampler == "ancestral":
            steps = jnp.arange(self.config.diffusion.timesteps)[::-1]

            def body(x, xs):
                t, step_rng = xs
                x0, eps = predict(x, t)
                a, beta = self.alpha_bar[t], self.betas[t]
                a_prev = jnp.where(t > 0, self.alpha_bar[jnp.maximum(t - 1, 0)], 1.0)
                mean = (jnp.sqrt(a_prev) * beta / (1.0 - a)) * x0 + (
                    jnp.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a)
                ) * x
                variance = beta * (1.0 - a_prev) / (1.0 - a)
                noise = jax.random.normal(step_rng, x.shape)
                return mean + jnp.where(t > 0, jnp.sqrt(variance), 0.0) * noise, x0
        else:
            steps = jnp.asarray(self.ddim_steps(self.config.diffusion.sample_steps))
            previous = jnp.concatenate([steps[1:], jnp.array([-1], jnp.int32)])
            eta = self.config.diffusion.eta

            def body(x, xs):
                (t, t_prev), step_rng = xs
                x0, eps = predict(x, t)
                a = self.alpha_bar[t]
                a_prev = jnp.where(t_prev >= 0, self.alpha_bar[jnp.maximum(t_prev, 0)], 1.0)
                sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
                direction = jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0.0)) * eps
                noise = sigma * jax.random.normal(step_rng, x.shape)
                return jnp.sqrt(a_prev) * x0 + direction + noise, x0

            steps = (steps, previous)

        count_steps = len(jax.tree.leaves(steps)[0])
        x, predictions = jax.lax.scan(body, x, (steps, jax.random.split(rng, count_steps)))
        return x, predictions

    def generate(self, params, count: int, seed: int, sampler: str | None = None):
        sampler = sampler or self.config.diffusion.sampler
        x, predictions = self._jitted_sample(params, jax.random.PRNGKey(seed), count, sampler)
        return self.to_images(x), predictions

    def sample_images(self, state: DiffusionState, rng: jax.Array, count: int) -> np.ndarray:
        """`count` images in [0, 1] from the EMA weights with config.diffusion.sampler, noise
        from `rng` (dlx.tasks.images.draw_images)."""
        return self.to_images(self._jitted_final_samples(state.ema, rng, count))

    # -------------------------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------------------------
    def per_example(self, state: DiffusionState, batch, rng) -> dict:
        return {
            "loss": self.denoising_loss(state.ema, self.to_model_space(batch), rng, train=False)
        }

    @staticmethod
    def summarize(values: dict) -> dict[str, float]:
        return {"loss": float(values["loss"].mean())}

    def write_figures(self, state: DiffusionState, values, workdir: str, step: int) -> None:
        images, predictions = self.generate(state.ema, NUM_SHOWN, self.config.seed, "ddim")
        if not is_main_process():
            return
        write_grid(workdir, "samples", images, columns=8)
        predictions = np.asarray(predictions)  # indexed on the host, not by eager device slices
        columns = np.linspace(0, predictions.shape[0] - 1, TRAJECTORY_COLUMNS).round().astype(int)
        rows = [self.to_images(predictions[c, :TRAJECTORY_ROWS]) for c in columns]
        trajectory = np.stack(rows, axis=1).reshape(-1, *self.image_shape)  # row-major
        write_grid(workdir, "trajectory", trajectory, columns=TRAJECTORY_COLUMNS)

    def evaluator(self):
        return PerExample(
            self.per_example, self.summarize, self.write_figures, seed=self.config.seed
        )

    def check_sample_options(self, options: dict) -> None:
        image_sample_options(options, "diffusion")

    def sample(self, state: DiffusionState, options: dict, out=None) -> str:
        """`launch.py sample`: a grid of images from the EMA weights under the workdir's
        samples/ (options: num_samples, seed; the sampler is config.diffusion's)."""
        out = out or sys.stdout  # looked up now: a caller may have redirected it
        count, seed = image_sample_options(options, "diffusion")
        images, _ = self.generate(state.ema, count, seed)
        sampler = self.config.diffusion.sampler
        return save_samples(
            self.workdir, f"{sampler}_seed{seed}", images, f"samples ({sampler})", out
        )

    def num_params(self, state: DiffusionState) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    @functools.cached_property
    def param_specs(self) -> Any:
        size, channels = self.config.diffusion.image_size, self.image_shape[-1]
        x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.int32)
        variables = jax.eval_shape(
            functools.partial(self.model.init, train=False), jax.random.PRNGKey(0), x, t
        )
        return nn.get_partition_spec(variables)["params"]
