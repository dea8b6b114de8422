"""Classification: softmax cross-entropy, accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import optax

from dlx.tasks import losses
from dlx.tasks.base import SupervisedTask, apply_model, is_main_process, model_inputs


class Task(SupervisedTask):
    best_metric_default = ("accuracy", "max")

    @property
    def num_classes(self) -> int:
        return int(self.data_info.num_classes)

    def loss_fn(self, params, model_state, batch, rng):
        logits, model_state = apply_model(
            self.model.apply, params, model_state, model_inputs(batch), train=True, rng=rng
        )
        labels = batch["label"]
        cross_entropy = losses.cross_entropy(
            logits, labels, self.config.loss.label_smoothing
        ).mean()
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = (logits.argmax(-1) == labels).mean()
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def eval_step(self, state, batch) -> dict:
        logits, _ = apply_model(
            state.apply_fn, state.params, state.model_state, model_inputs(batch), train=False
        )
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
