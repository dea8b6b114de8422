"""Object detection with a single-stage, anchor-free, YOLO-style model (`dlx.models.yolo`).

Examples carry `image` (uint8 [S, S, C]), `boxes` (float32 [M, 4], (x_min, y_min, x_max, y_max)
in pixels, continuous coordinates) and `labels` (int [M], -1 on padding rows): the
`fashion_mnist_detection` data set's layout (`dlx.data.detection`).

Training. Every cell of the stride-8 grid predicts one box. An object is assigned to the cell
holding its centre and to the nearest horizontal and vertical neighbours (their predicted
centres can reach it: `yolo.decode` lets a centre sit half a cell outside its cell); a cell
claimed by several objects takes the smallest. The loss, as YOLOX normalises it, is summed and
divided by the number of assigned cells:

    box_weight * (1 - CIoU(predicted, true))            on assigned cells
    + BCE(objectness, IoU of the prediction, no grad)   on every cell (0 where unassigned)
    + cross-entropy of the class                        on assigned cells

so objectness learns to rank boxes by how well they fit, which is what AP rewards.

Prediction: each cell's box is a candidate under its `detection.classes_per_box` likeliest
classes, scored sigmoid(objectness) * that class's probability; class-aware greedy NMS on device
(`dlx.layers.boxes.non_max_suppression`) over the `detection.nms_candidates` highest-scored, at
most `detection.max_detections` per image.
Eval: COCO-style AP@0.5 and AP@[.5:.95] per class and their means (`dlx.metrics.detection`),
the loss terms on the test split, and figures: test canvases with predicted (red) and true
(green) boxes, a precision-recall curve per class (`plots/`).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import boxes as box_ops
from dlx.metrics import detection as detection_metrics
from dlx.metrics.evaluators import PerExample
from dlx.models import yolo
from dlx.schema import Float, Int
from dlx.tasks.base import (
    SUPERVISED_RULES,
    SupervisedTask,
    apply_model,
    is_main_process,
    supervised_config,
)
from dlx.tasks.images import first_images, pixels

NUM_SHOWN = 12  # test canvases drawn with their boxes


class Task(SupervisedTask):
    nonfinite_metrics = ("loss", "grad_norm")
    best_metric_default = ("map50", "max")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.detection = ml_collections.ConfigDict(
            dict(
                box_weight=5.0,
                # A cell whose class is uncertain offers its box under its k likeliest classes,
                # each scored objectness * that class's probability (YOLOv5's multi-label
                # evaluation; 1 is the top class only): AP ranks each class's candidates apart,
                # so the true class's lower-scored box still counts.
                classes_per_box=1,
                # NMS visits this many of an image's highest-scored candidates (its cost is
                # quadratic in them); 300 is every candidate of a 12x12 grid at 2 classes a box.
                nms_candidates=300,
                nms_iou=0.6,  # same-class boxes overlapping more are duplicates
                score_threshold=0.001,  # COCO evaluation keeps low scores: AP ranks them
                max_detections=100,
                draw_threshold=0.3,  # boxes drawn in figures and printed by predict
            )
        )
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "detection",
            box_weight=Float(low=0),
            classes_per_box=Int(low=1),
            nms_candidates=Int(low=1),
            nms_iou=Float(0, 1),
            score_threshold=Float(0, 1, high_open=True),
            max_detections=Int(low=1),
            draw_threshold=Float(0, 1),
        ),
    }

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        if config.model.get("name") != "yolo":
            raise ConfigError(
                f"the detection task trains the 'yolo' model, not config.model.name="
                f"'{config.model.get('name')}'"
            )
        num_classes = config.model.get("num_classes", 20)
        if config.detection.classes_per_box > num_classes:
            raise ConfigError(
                f"detection.classes_per_box={config.detection.classes_per_box} is more than the "
                f"model's {num_classes} classes (config.model.num_classes); use 1..{num_classes}"
            )

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        features = data_info.features
        missing = {"image", "boxes", "labels"} - set(features)
        if missing:
            raise ConfigError(
                f"data set '{config.data.name}' has no {sorted(missing)}: the detection task "
                f"needs image, boxes and labels (e.g. config.data.name='fashion_mnist_detection')"
            )
        size = features["image"].shape[0]
        if size is None or size % (2 * yolo.STRIDE) or features["image"].shape[1] != size:
            raise ConfigError(
                f"the detector needs square images with sides divisible by {2 * yolo.STRIDE}, "
                f"data set '{config.data.name}' has {features['image'].shape}"
            )
        super().__init__(config, data_info, data_dir, workdir)
        self.image_shape = tuple(features["image"].shape)
        self.class_names = _class_names(config.data.name, self.num_classes)

    @property
    def num_classes(self) -> int:
        return int(self.config.model.get("num_classes", 20))

    def model_input(self, batch: dict) -> jax.Array:
        return pixels(batch)

    # -------------------------------------------------------------------------------------------
    # Training
    # -------------------------------------------------------------------------------------------
    def assign(self, raw_shape, gt_boxes: jax.Array, gt_labels: jax.Array):
        """For each cell of the [B, G, G] grid: the index of the object it predicts and whether
        it has one (see the module docstring)."""
        grid = raw_shape[1]
        valid = gt_labels >= 0  # [B, M]
        centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / (2 * yolo.STRIDE)  # in cells
        cells = jnp.arange(grid, dtype=jnp.float32)
        # offsets of each object's centre from each cell's corner, in cells: [B, G, M]
        dx = centres[:, None, :, 0] - cells[None, :, None]
        dy = centres[:, None, :, 1] - cells[None, :, None]
        inside_x, inside_y = (dx >= 0) & (dx < 1), (dy >= 0) & (dy < 1)
        reach_x, reach_y = (dx >= -0.5) & (dx < 1.5), (dy >= -0.5) & (dy < 1.5)
        # [B, Gy, Gx, M]: own cell, or a neighbour along one axis whose reach covers the centre
        claims = (
            (reach_x[:, None, :, :] & inside_y[:, :, None, :])
            | (inside_x[:, None, :, :] & reach_y[:, :, None, :])
        ) & valid[:, None, None, :]
        area = box_ops.area(gt_boxes)[:, None, None, :]
        owner = jnp.argmin(jnp.where(claims, area, jnp.inf), axis=-1)
        return owner, claims.any(-1)

    def loss_terms(self, raw: jax.Array, batch: dict) -> dict:
        """Per-image sums of the loss terms and the number of assigned cells, [B] each."""
        gt_boxes, gt_labels = batch["boxes"], batch["labels"]
        owner, positive = self.assign(raw.shape, gt_boxes, gt_labels)
        target_boxes = jnp.take_along_axis(gt_boxes[:, None, None], owner[..., None, None], axis=3)[
            ..., 0, :
        ]
        target_labels = jnp.take_along_axis(gt_labels[:, None, None], owner[..., None], axis=3)[
            ..., 0
        ]
        predicted = yolo.decode(raw)
        overlap = box_ops.ciou(predicted, target_boxes)
        objectness_target = jnp.where(
            positive, jax.lax.stop_gradient(jnp.clip(box_ops.iou(predicted, target_boxes), 0, 1)), 0
        )
        objectness = optax.sigmoid_binary_cross_entropy(raw[..., 4], objectness_target)
        classes = optax.softmax_cross_entropy_with_integer_labels(
            raw[..., yolo.BOX_FIELDS :], jnp.maximum(target_labels, 0)
        )
        per_image = lambda x: x.reshape(x.shape[0], -1).sum(-1)
        return {
            "box": per_image(jnp.where(positive, 1 - overlap, 0)),
            "objectness": per_image(objectness),
            "class": per_image(jnp.where(positive, classes, 0)),
            "assigned": per_image(positive.astype(jnp.float32)),
        }

    def combine(self, sums: dict) -> dict:
        """The loss and its terms from sums over images (YOLOX's normalisation)."""
        assigned = jnp.maximum(sums["assigned"], 1.0)
        terms = {name: sums[name] / assigned for name in ("box", "objectness", "class")}
        loss = self.config.detection.box_weight * terms["box"] + terms["objectness"]
        return {"loss": loss + terms["class"], **{f"{k}_loss": v for k, v in terms.items()}}

    def loss_fn(self, params, model_state, batch, rng):
        raw, model_state = apply_model(
            self.apply_fn, params, model_state, self.model_input(batch), train=True, rng=rng
        )
        sums = jax.tree.map(jnp.sum, self.loss_terms(raw, batch))
        metrics = self.combine(sums)
        return metrics["loss"], (metrics, model_state)

    # -------------------------------------------------------------------------------------------
    # Prediction
    # -------------------------------------------------------------------------------------------
    def detections(self, raw: jax.Array) -> dict:
        """Raw outputs -> {"boxes" [B, K, 4], "scores" [B, K], "labels" [B, K]} after NMS,
        K = detection.max_detections (padding: score 0, label -1)."""
        d = self.config.detection
        batch = raw.shape[0]
        class_probs = jax.nn.softmax(raw[..., yolo.BOX_FIELDS :])
        # Each cell's box is a candidate for each of its `classes_per_box` likeliest classes.
        top_probs, top_classes = jax.lax.top_k(class_probs, d.classes_per_box)
        scores = jax.nn.sigmoid(raw[..., 4])[..., None] * top_probs
        boxes = jnp.broadcast_to(yolo.decode(raw)[..., None, :], (*scores.shape, 4))
        boxes = boxes.reshape(batch, -1, 4)
        nms = jax.vmap(
            lambda b, s, c: box_ops.non_max_suppression(
                b,
                s,
                c,
                iou_threshold=d.nms_iou,
                score_threshold=d.score_threshold,
                max_detections=d.max_detections,
                max_candidates=d.nms_candidates,
            )
        )
        boxes, scores, labels = nms(
            boxes, scores.reshape(batch, -1), top_classes.reshape(batch, -1)
        )
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def predict(self, state, batch: dict) -> dict:
        raw, _ = apply_model(
            state.apply_fn, state.params, state.model_state, self.model_input(batch), train=False
        )
        return self.detections(raw)

    # -------------------------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------------------------
    def per_example(self, state, batch: dict, rng) -> dict:
        raw, _ = apply_model(
            state.apply_fn, state.params, state.model_state, self.model_input(batch), train=False
        )
        return {
            **self.loss_terms(raw, batch),
            **self.detections(raw),
            "gt_boxes": batch["boxes"],
            "gt_labels": batch["labels"],
        }

    def summarize(self, values: dict) -> dict[str, float]:
        ap = self.average_precision(values)
        losses = self.combine(
            {k: float(values[k].sum()) for k in ("box", "objectness", "class", "assigned")}
        )
        return {
            "map50": float(ap["map50"]),
            "map": float(ap["map"]),
            **{k: float(v) for k, v in losses.items()},
        }

    def average_precision(self, values: dict) -> dict:
        return detection_metrics.average_precision(
            values["boxes"],
            values["scores"],
            values["labels"],
            values["gt_boxes"],
            values["gt_labels"],
            self.num_classes,
            max_detections=self.config.detection.max_detections,
        )

    def write_figures(self, state, values: dict, workdir: str, step: int) -> None:
        if not is_main_process():
            return
        plots = os.path.join(workdir, "plots")
        os.makedirs(plots, exist_ok=True)
        ap = self.average_precision(values)
        per_class = {
            name: {"ap50": float(ap["ap50"][i]), "ap": float(ap["ap"][i])}
            for i, name in enumerate(self.class_names)
        }
        with open(os.path.join(plots, "per_class_ap.json"), "w") as f:
            json.dump({"step": step, "classes": per_class}, f, indent=1)
        detection_metrics.pr_curve_figure(
            ap["curves50"], self.class_names, os.path.join(plots, "precision_recall.png")
        )
        split = self.config.data.eval_split
        images = first_images(self.source(split, train=False), NUM_SHOWN)["image"]
        shown = {k: np.asarray(v[:NUM_SHOWN]) for k, v in values.items()}
        draw_detections(
            os.path.join(plots, "detections.png"),
            images,
            shown,
            self.class_names,
            self.config.detection.draw_threshold,
            self.config.detection.nms_iou,
        )

    def evaluator(self):
        return PerExample(self.per_example, self.summarize, self.write_figures, self.config.seed)

    # -------------------------------------------------------------------------------------------
    # launch.py predict
    # -------------------------------------------------------------------------------------------
    def predict_images(self, predict, images: np.ndarray, names, notes, workdir: str, out=None):
        """`launch.py predict`: prints each image's boxes with a score of at least
        detection.draw_threshold and draws them to `<workdir>/predictions/<name>.png`.
        `predict(batch)` runs the jitted `predict` over any number of images, in fixed chunks."""
        out = out or sys.stdout
        found = jax.device_get(predict({"image": images}))
        folder = os.path.join(workdir, "predictions")
        os.makedirs(folder, exist_ok=True)
        d = self.config.detection
        for i, (name, stem) in enumerate(zip(names, unique_stems(names))):
            keep = shown_detections(
                found["boxes"][i], found["scores"][i], d.draw_threshold, d.nms_iou
            )
            note = f" ({notes[i]})" if notes[i] else ""
            out.write(f"{name}{note}: {len(keep)} object(s)\n")
            for box, score, label in zip(
                found["boxes"][i][keep], found["scores"][i][keep], found["labels"][i][keep]
            ):
                corners = ", ".join(f"{v:.1f}" for v in box)
                out.write(f"  {self.class_names[label]:<14} {score:.3f}  [{corners}]\n")
            one = {k: v[i : i + 1] for k, v in found.items()}
            path = os.path.join(folder, f"{stem}.png")
            draw_detections(
                path, images[i : i + 1], one, self.class_names, d.draw_threshold, d.nms_iou, 1
            )
            out.write(f"  drawn to {path}\n")


def unique_stems(paths: list[str]) -> list[str]:
    """File names without folder and extension, a repeated one numbered from its second use
    ("a/x.png", "b/x.jpg" -> "x", "x-2"), so that no drawing overwrites another."""
    stems, seen = [], set()
    for path in paths:
        base = stem = os.path.splitext(os.path.basename(path))[0]
        copy = 1
        while stem in seen:
            copy += 1
            stem = f"{base}-{copy}"
        seen.add(stem)
        stems.append(stem)
    return stems


def shown_detections(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, iou_threshold: float
) -> np.ndarray:
    """Indices of one image's detections (sorted by score, as `Task.detections` returns them)
    to print or draw: score >= `threshold`, and no higher-scored shown box of any class
    overlapping by more than `iou_threshold`. Evaluation keeps them all, class by class; a
    reader wants one box per object, under its likeliest class."""
    scores = np.asarray(scores)
    candidates = np.flatnonzero((scores >= threshold) & (scores > 0))  # score 0: padding
    xywh = detection_metrics.xywh(np.asarray(boxes)[candidates])
    overlaps = detection_metrics.box_iou(xywh, xywh)
    shown: list[int] = []
    for i in range(len(candidates)):
        if all(overlaps[i, j] <= iou_threshold for j in shown):
            shown.append(i)
    return candidates[shown]


def _class_names(data_name: str, num_classes: int) -> tuple[str, ...]:
    """The data set's class names (dlx's detection data set names its 20), else "class i"."""
    from dlx.data import detection as detection_data

    if data_name == detection_data.NAME:
        if num_classes != detection_data.NUM_CLASSES:
            raise ConfigError(
                f"{data_name} has {detection_data.NUM_CLASSES} classes: set "
                f"config.model.num_classes={detection_data.NUM_CLASSES}, not {num_classes}"
            )
        return tuple(detection_data.CLASS_NAMES)
    return tuple(f"class {i}" for i in range(num_classes))


def draw_detections(
    path: str,
    images: np.ndarray,
    values: dict,
    class_names,
    threshold: float,
    iou_threshold: float,
    columns: int = 4,
) -> None:
    """Canvases with predicted boxes (red, class and score; `shown_detections`) and, when
    `values` has them, the true boxes (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = len(images)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:count]):
        ax.imshow(images[i][..., 0] if images[i].shape[-1] == 1 else images[i], cmap="gray")
        if "gt_boxes" in values:
            for box, label in zip(values["gt_boxes"][i], values["gt_labels"][i]):
                if label >= 0:
                    x0, y0, x1, y1 = box
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime"))
        keep = shown_detections(values["boxes"][i], values["scores"][i], threshold, iou_threshold)
        for box, score, label in zip(
            values["boxes"][i][keep], values["scores"][i][keep], values["labels"][i][keep]
        ):
            x0, y0, x1, y1 = box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red"))
            ax.text(
                x0, y0, f"{class_names[label]} {score:.2f}", color="red", fontsize=6, va="bottom"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
