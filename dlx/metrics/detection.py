"""COCO-style average precision of object detections, and a precision-recall figure.

`average_precision` gives the numbers pycocotools' `COCOeval(iouType="bbox")` gives for area range
"all" and `maxDets` = `max_detections`, on the same detections (tests/test_detection_metrics.py
checks it against pycocotools to 1e-6), from fixed-shape arrays and in vectorised numpy:

- Boxes are (x_min, y_min, x_max, y_max) in continuous coordinates (a box's width is
  x_max - x_min, no +1; COCO's [x, y, w, h] is [x_min, y_min, x_max - x_min, y_max - y_min]).
  IoU is computed from that [x, y, w, h] form exactly as pycocotools does.
- Per image and class, at most `max_detections` detections count, the highest scored
  (COCO applies `maxDets` per image and category). Ties in score keep the input order.
- Matching, per image, class and IoU threshold t in 0.50:0.05:0.95: detections in descending
  score take, greedily, the unmatched ground truth of their class with the highest IoU >= t
  (of equal IoUs, the later ground truth). There are no crowd or ignored ground truths; a
  detection with a negative area (x_max < x_min or y_max < y_min, not both) that matches nothing
  is left out, neither true nor false positive, as COCO's area range does.
- Per class and threshold: detections of all images sorted by score, precision and recall after
  each, precision made monotone (each value the maximum of those at higher recall), then read at
  the 101 recall points 0, 0.01, ..., 1 (the first detection reaching that recall; 0 past the
  highest recall). AP is the mean of those 101 values; AP@[.5:.95] also over the 10 thresholds.
- A class without ground truth has AP -1 and is left out of the means (`map50`, `map`), which
  are -1 when no class has ground truth. Detections of such a class change nothing.

Padding: a prediction with score <= 0 or label < 0, and a ground truth with label < 0, do not
exist.

Speed: 4,000 images x 100 detections, 6 ground truths each, 20 classes: 0.7 s on a busy 2-core
machine (pycocotools: 22 s, same numbers bitwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1)  # as pycocotools
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, round(1.0 / 0.01) + 1)
AREA_RANGE = (0.0, 1e5**2)  # COCO's "all"


def xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def box_iou(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """IoU [..., K, M] of [..., K, 4] and [..., M, 4] [x, y, w, h] boxes, in pycocotools' order
    of operations (`bbIou`), so the numbers are bitwise the same."""
    p = pred_xywh[..., :, None, :]
    g = gt_xywh[..., None, :, :]
    width = np.minimum(p[..., 2] + p[..., 0], g[..., 2] + g[..., 0]) - np.maximum(
        p[..., 0], g[..., 0]
    )
    height = np.minimum(p[..., 3] + p[..., 1], g[..., 3] + g[..., 1]) - np.maximum(
        p[..., 1], g[..., 1]
    )
    overlapping = (width > 0) & (height > 0)
    intersection = np.where(overlapping, width * height, 0.0)
    union = p[..., 2] * p[..., 3] + g[..., 2] * g[..., 3] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlapping, intersection / union, 0.0)


def _check_shapes(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels) -> None:
    n, k = pred_scores.shape if pred_scores.ndim == 2 else (None, None)
    m = gt_labels.shape[1] if gt_labels.ndim == 2 else None
    expected = {
        "pred_boxes": (pred_boxes.shape, (n, k, 4)),
        "pred_scores": (pred_scores.shape, (n, k)),
        "pred_labels": (pred_labels.shape, (n, k)),
        "gt_boxes": (gt_boxes.shape, (n, m, 4)),
        "gt_labels": (gt_labels.shape, (n, m)),
    }
    for name, (shape, want) in expected.items():
        if None in want or shape != want:
            raise ValueError(
                "average_precision needs pred_boxes [N, K, 4], pred_scores [N, K], "
                f"pred_labels [N, K], gt_boxes [N, M, 4], gt_labels [N, M]; {name} is {shape}"
            )


def average_precision(
    pred_boxes: np.ndarray,
    pred_scores: np.ndarray,
    pred_labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    num_classes: int,
    *,
    max_detections: int = 100,
) -> dict:
    """COCO AP of detections on N images (see the module docstring).

    Args: pred_boxes [N, K, 4], pred_scores [N, K], pred_labels [N, K] (int), gt_boxes [N, M, 4],
    gt_labels [N, M] (int); boxes (x_min, y_min, x_max, y_max).

    Returns a dict of numpy values, C = num_classes, T = 10 IoU thresholds, R = 101 recall points:
      "ap50", "ap": [C] AP@0.5 and AP@[.5:.95] per class, -1 for classes without ground truth;
      "map50", "map": float, their means over the classes with ground truth (-1 if none);
      "curves50": [C, R] interpolated precision at IoU 0.5 at each of "recall_thresholds" [R]
        (-1 rows for classes without ground truth);
      "precision": [T, R, C] the same at every IoU threshold (COCOeval's `eval["precision"]`
        for this area range and maxDets);
      "num_ground_truth": [C] int.
    """
    pred_boxes, gt_boxes = np.asarray(pred_boxes), np.asarray(gt_boxes)
    pred_scores = np.asarray(pred_scores, np.float64)
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    _check_shapes(pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels)
    num_images, num_preds = pred_scores.shape
    thresholds = IOU_THRESHOLDS  # COCOeval caps them at 1 - 1e-10: none is that high

    gt_valid = gt_labels >= 0
    pred_valid = (pred_scores > 0) & (pred_labels >= 0)
    for name, labels, valid in (("gt", gt_labels, gt_valid), ("pred", pred_labels, pred_valid)):
        if (labels[valid] >= num_classes).any():
            raise ValueError(f"{name}_labels reach {labels[valid].max()}, not < {num_classes}")
    gt_xywh = xywh(gt_boxes)
    if (gt_xywh[..., 2:][gt_valid] < 0).any():
        raise ValueError("a ground-truth box has x_max < x_min or y_max < y_min")

    # Each image's predictions in descending score, ties in input order, padding last.
    order = np.argsort(np.where(pred_valid, -pred_scores, np.inf), axis=1, kind="stable")
    scores = np.take_along_axis(pred_scores, order, axis=1)
    labels = np.take_along_axis(pred_labels, order, axis=1)
    valid = np.take_along_axis(pred_valid, order, axis=1)
    pred_xywh = xywh(np.take_along_axis(pred_boxes, order[..., None], axis=1))
    if num_preds > max_detections:  # keep each image's top max_detections of every class
        for c in np.unique(labels[valid]):
            of_class = valid & (labels == c)
            valid &= ~of_class | (np.cumsum(of_class, axis=1) <= max_detections)

    # Greedy matching, one score rank at a time for all images and thresholds at once, over the
    # images where that rank's detection reaches an object of its class at the lowest threshold.
    ious = box_iou(pred_xywh, gt_xywh)  # [N, K, M]
    same_class = valid[..., None] & gt_valid[:, None, :] & (labels[..., None] == gt_labels[:, None])
    can_match = (same_class & (ious >= thresholds[0])).any(axis=-1)  # [N, K]
    num_gt = gt_labels.shape[1]
    gt_taken = np.zeros((num_images, len(thresholds), num_gt), bool)
    matched = np.zeros((num_images, len(thresholds), num_preds), bool)
    threshold_index = np.arange(len(thresholds))[None, :]
    for rank in range(num_preds):
        rows = np.flatnonzero(can_match[:, rank])
        if not len(rows):
            continue
        iou = ious[rows, rank, None, :]  # [R, 1, M]
        candidate = (
            same_class[rows, rank, None, :] & ~gt_taken[rows] & (iou >= thresholds[None, :, None])
        )  # [R, T, M]
        # The best IoU wins; of equal ones the last ground truth, as in COCOeval's loop.
        best = num_gt - 1 - np.argmax(np.where(candidate, iou, -1.0)[..., ::-1], axis=-1)
        found = candidate.any(axis=-1)
        gt_taken[rows[:, None], threshold_index, best] |= found
        matched[rows, :, rank] = found
    pred_area = pred_xywh[..., 2] * pred_xywh[..., 3]
    out_of_range = (pred_area < AREA_RANGE[0]) | (pred_area > AREA_RANGE[1])
    ignored = ~matched & out_of_range[:, None, :]  # [N, T, K]

    num_thresholds, num_recalls = len(thresholds), len(RECALL_THRESHOLDS)
    precision = -np.ones((num_thresholds, num_recalls, num_classes))
    num_ground_truth = np.bincount(gt_labels[gt_valid], minlength=num_classes)[:num_classes]
    for c in np.flatnonzero(num_ground_truth):
        of_class = valid & (labels == c)  # [N, K]; boolean indexing keeps image-major order
        by_score = np.argsort(-scores[of_class], kind="stable")
        tps = matched.transpose(1, 0, 2)[:, of_class][:, by_score]  # [T, D]
        not_ignored = ~ignored.transpose(1, 0, 2)[:, of_class][:, by_score]
        tp = np.cumsum(tps & not_ignored, axis=1).astype(float)
        fp = np.cumsum(~tps & not_ignored, axis=1).astype(float)
        recall = tp / num_ground_truth[c]
        interpolated = tp / (fp + tp + np.spacing(1))
        interpolated = np.maximum.accumulate(interpolated[:, ::-1], axis=1)[:, ::-1]
        num_dets = tp.shape[1]
        for t in range(num_thresholds):
            at = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
            reached = at < num_dets
            precision[t, reached, c] = interpolated[t, at[reached]]
            precision[t, ~reached, c] = 0.0

    present = num_ground_truth > 0
    ap50 = np.where(present, precision[0].mean(axis=0), -1.0)
    ap = np.where(present, precision.mean(axis=(0, 1)), -1.0)
    return {
        "ap50": ap50,
        "ap": ap,
        "map50": float(ap50[present].mean()) if present.any() else -1.0,
        "map": float(ap[present].mean()) if present.any() else -1.0,
        "curves50": precision[0].T.copy(),
        "recall_thresholds": RECALL_THRESHOLDS.copy(),
        "precision": precision,
        "num_ground_truth": num_ground_truth,
    }


def pr_curve_figure(
    curves: np.ndarray, class_names: Sequence[str], path: str, *, columns: int = 5
) -> None:
    """One PNG at `path`: per class, its interpolated precision-recall curve (a row of
    `average_precision(...)["curves50"]`, [C, 101] over RECALL_THRESHOLDS), titled with its AP
    (the curve's mean); classes without ground truth (-1 rows) say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = np.asarray(curves)
    if curves.ndim != 2 or curves.shape[0] != len(class_names):
        raise ValueError(f"curves {curves.shape} must be [len(class_names), recall points]")
    recall = np.linspace(0.0, 1.0, curves.shape[1])
    rows = math.ceil(len(class_names) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.4 * rows), sharex=True, sharey=True, squeeze=False
    )
    for axis in axes.flat[len(class_names) :]:
        axis.axis("off")
    for axis, name, curve in zip(axes.flat, class_names, curves):
        if (curve < 0).all():
            axis.set_title(f"{name}: no ground truth", fontsize=9)
        else:
            axis.plot(recall, curve, drawstyle="steps-post")
            axis.fill_between(recall, curve, step="post", alpha=0.2)
            axis.set_title(f"{name}: AP {curve.mean():.3f}", fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("recall")
    for axis in axes[:, 0]:
        axis.set_ylabel("precision")
    figure.suptitle("Precision-recall at IoU 0.5 (101-point interpolation)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
