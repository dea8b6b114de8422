"""Classification: softmax cross-entropy, accuracy, per-class accuracy, confusion matrix.

Training images may be augmented in the input pipeline (`dlx.data.augment`), seeded by
(config.seed, step) and so resumed exactly, mid-epoch too. The config group `augment`, all off by
default (the batches are then those of the data set as it is):

    augment.crop_padding  0      > 0: pad each image with this many zero pixels on every side
                                 and cut a window of the image's size at a random offset
    augment.flip          False  mirror each image left-right with probability 0.5
    augment.erasing       0.0    probability of random erasing (Zhong et al. 2017): a rectangle
                                 of 2%-33% of the image, aspect 0.3-3.3, filled with uniform
                                 random values 0..255
    augment.mixup         0.0    > 0: mixup with weights ~ Beta(mixup, mixup) per example
    augment.cutmix        0.0    > 0: cutmix with box weights ~ Beta(cutmix, cutmix) per example;
                                 with mixup too, each example takes one of the two (p = 0.5)

    augment.eval_flip     False  test-time augmentation: eval and `predict` score each image
                                 and its mirror and average the two softmaxes (the output is
                                 then the log of that average)
    augment.eval_shifts   0      > 0: test-time augmentation too: the image moved this many
                                 pixels up, down, left and right (zero-filled) is scored with
                                 it, 5 views averaged as above (10 with eval_flip)

The training augmentations run in that order on [H, W, C] uint8 images (the data set needs an
"image" feature). Mixup and cutmix mix example i with example B-1-i of the global batch: the loss
is then mix * CE(label) + (1 - mix) * CE(partner's label), each smoothed by
`loss.label_smoothing`, and the train accuracy counts the label of weight >= 0.5. Eval images are
never augmented (`eval_flip` and `eval_shifts` aside).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlx import schema
from dlx.data import augment as augment_lib
from dlx.errors import ConfigError
from dlx.tasks import losses
from dlx.tasks.base import (
    SUPERVISED_RULES,
    SupervisedTask,
    apply_model,
    is_main_process,
    model_inputs,
    supervised_config,
)


class Task(SupervisedTask):
    supports_lora = True
    best_metric_default = ("accuracy", "max")
    config_rules = {**SUPERVISED_RULES, **schema.under("augment", **augment_lib.RULES)}

    @staticmethod
    def config_defaults():
        config = supervised_config()
        config.augment = augment_lib.default_config()
        return config

    def __init__(self, config, data_info, data_dir: str | None = None, workdir: str | None = None):
        self.augment = augment_lib.Augment.from_config(config.augment)
        self.eval_flip = bool(config.augment.eval_flip)
        self.eval_shifts = int(config.augment.eval_shifts)
        if self.augment.enabled or self.eval_flip or self.eval_shifts:
            _check_images_for_augmentation(config, data_info, self.augment)
        super().__init__(config, data_info, data_dir, workdir)
        check_outputs_cover_classes(config, self.model, data_info.num_classes, "labels")

    def source(self, split: str, *, train: bool):
        source = super().source(split, train=train)
        if train and self.augment.enabled:
            return augment_lib.AugmentedSource(source, self.augment)
        return source

    @property
    def num_classes(self) -> int:
        return int(self.data_info.num_classes)

    def loss_fn(self, params, model_state, batch, rng):
        logits, model_state = apply_model(
            self.apply_fn, params, model_state, model_inputs(batch), train=True, rng=rng
        )
        labels, smoothing = batch["label"], self.config.loss.label_smoothing
        cross_entropy = losses.cross_entropy(logits, labels, smoothing)
        if "mix" in batch:  # mixup / cutmix: two labels, weights mix and 1 - mix
            mix, partner_labels = batch["mix"], batch["label_b"]
            cross_entropy = mix * cross_entropy + (1 - mix) * losses.cross_entropy(
                logits, partner_labels, smoothing
            )
            labels = jnp.where(mix >= 0.5, labels, partner_labels)
        cross_entropy = cross_entropy.mean()
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = (logits.argmax(-1) == labels).mean()
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def predict(self, state, batch: dict) -> jax.Array:
        views = [batch["image"]]
        if self.eval_shifts:
            views += [_shifted(batch["image"], self.eval_shifts, axis) for axis in _SHIFTS]
        if self.eval_flip:
            views += [view[:, :, ::-1] for view in views]
        score = super().predict  # bound here: zero-argument super() fails in a comprehension
        if len(views) == 1:
            return score(state, batch)
        log_p = [jax.nn.log_softmax(score(state, {**batch, "image": v})) for v in views]
        return jax.nn.logsumexp(jnp.stack(log_p), axis=0) - jnp.log(float(len(views)))

    def eval_step(self, state, batch) -> dict:
        logits = self.predict(state, batch)
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        predictions = logits.argmax(-1)
        confusion = jnp.zeros((self.num_classes, self.num_classes), jnp.float32)
        confusion = confusion.at[labels, predictions].add(mask)
        return {
            "loss": (nll * mask).sum(),
            "correct": ((predictions == labels) * mask).sum(),
            "count": mask.sum(),
            "confusion": confusion,
        }

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        count = float(sums["count"])
        return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}

    def predict_images(self, predict, images: np.ndarray, names, notes, workdir: str, out=None):
        """`launch.py predict`: the five most probable classes of each image file.
        `predict(batch)` runs the jitted `predict` over any number of images, in fixed chunks."""
        out = out or sys.stdout
        logits = np.asarray(jax.device_get(predict({"image": images})), np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        class_names = list(self.data_info.class_names or range(self.num_classes))
        for name, note, row in zip(names, notes, probabilities):
            out.write(f"{name}{f' ({note})' if note else ''}:\n")
            for index in np.argsort(-row, kind="stable")[:5]:
                out.write(f"  {row[index]:7.2%}  {class_names[index]}\n")
        return probabilities

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        if not is_main_process():
            return
        plots_dir = os.path.join(workdir, "plots")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        confusion = np.asarray(sums["confusion"], np.int64)
        names = list(self.data_info.class_names or range(self.num_classes))
        per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
        with open(os.path.join(plots_dir, "per_class_accuracy.json"), "w") as f:
            json.dump(
                {"step": step, **{str(n): float(a) for n, a in zip(names, per_class)}}, f, indent=1
            )

        fig, ax = plt.subplots(figsize=(7, 6))
        ax.imshow(confusion, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(
            range(len(names)), [f"{n} ({a:.0%})" for n, a in zip(names, per_class)], fontsize=8
        )
        for (i, j), v in np.ndenumerate(confusion):
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if v > confusion.max() / 2 else "black",
                )
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (per-class accuracy)")
        ax.set_title(
            f"Confusion matrix, step {step}, accuracy {confusion.trace() / confusion.sum():.2%}"
        )
        fig.tight_layout()
        fig.savefig(os.path.join(plots_dir, "confusion_matrix.png"), dpi=120)
        plt.close(fig)


def check_outputs_cover_classes(config, model, num_classes: int | None, what: str) -> None:
    """ConfigError when the model has fewer outputs than the data has classes: a label beyond
    the outputs would have an all-zero one-hot target and count for nothing, silently."""
    outputs = getattr(model, "num_outputs", None)
    if outputs is not None and num_classes and outputs < num_classes:
        raise ConfigError(
            f"config.model.num_outputs={outputs}, but '{config.data.name}' has {num_classes} "
            f"classes of {what}; set config.model.num_outputs={num_classes}"
        )


_SHIFTS = ((1, 1), (1, -1), (2, 1), (2, -1))  # (axis of [B, H, W, C], direction): down, up, ...


def _shifted(images: jax.Array, pixels: int, axis_and_sign: tuple[int, int]) -> jax.Array:
    """`images` moved `pixels` along one spatial axis, the uncovered border filled with zeros."""
    axis, sign = axis_and_sign
    pad = [(0, 0)] * images.ndim
    pad[axis] = (pixels, 0) if sign > 0 else (0, pixels)
    start = 0 if sign > 0 else pixels
    return jax.lax.slice_in_dim(jnp.pad(images, pad), start, start + images.shape[axis], axis=axis)


def _check_images_for_augmentation(config, data_info, augment: augment_lib.Augment) -> None:
    """ConfigError unless the data set's inputs are [H, W, C] uint8 images the augmentation
    fits."""
    on = ", ".join(f"augment.{key}={value}" for key, value in config.augment.items() if value != 0)
    image = data_info.features.get("image")
    shape = tuple(image.shape) if image is not None else ()
    if len(shape) != 3 or None in shape or np.dtype(image.dtype) != np.uint8:
        found = ", ".join(
            f"{key} {np.dtype(f.dtype).name} {list(f.shape)}"
            for key, f in data_info.features.items()
        )
        raise ConfigError(
            f"config.{on} augments images, but data set '{config.data.name}' has no "
            f"fixed-size [H, W, C] uint8 'image' feature (it has {found}); turn config.augment off"
        )
    height, width = shape[:2]
    eval_shifts = int(config.augment.eval_shifts)
    if eval_shifts >= min(height, width):
        raise ConfigError(
            f"config.augment.eval_shifts={eval_shifts} is not smaller than the {height}x{width} "
            f"images of '{config.data.name}'; use at most {min(height, width) - 1}"
        )
    if augment.crop_padding >= min(height, width):
        raise ConfigError(
            f"config.augment.crop_padding={augment.crop_padding} is not smaller than the "
            f"{height}x{width} images of '{config.data.name}'; use at most {min(height, width) - 1}"
        )
