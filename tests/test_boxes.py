"""Box overlaps, the CIoU/GIoU losses and on-device NMS against plain-Python references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.layers import boxes as box_ops


def random_boxes(rng: np.random.Generator, count: int, size: float = 96.0) -> np.ndarray:
    corner = rng.uniform(0, size * 0.8, (count, 2))
    side = rng.uniform(2, size * 0.4, (count, 2))
    return np.concatenate([corner, corner + side], axis=1).astype(np.float32)


def reference_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_giou(a, b) -> float:
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    inter_union = reference_iou(a, b)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return inter_union - (enclosing - union) / enclosing


def reference_ciou(a, b) -> float:
    overlap = reference_iou(a, b)
    diagonal = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    distance = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + (
        (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    ) ** 2
    v = (4 / math.pi**2) * (
        math.atan((b[2] - b[0]) / (b[3] - b[1])) - math.atan((a[2] - a[0]) / (a[3] - a[1]))
    ) ** 2
    alpha = v / (1 - overlap + v) if v > 0 else 0.0
    return overlap - distance / diagonal - alpha * v


@pytest.mark.parametrize(
    "ours, reference",
    [
        (box_ops.iou, reference_iou),
        (box_ops.giou, reference_giou),
        (box_ops.ciou, reference_ciou),
    ],
)
def test_overlaps_equal_the_textbook_formulas(ours, reference):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 200), random_boxes(rng, 200)
    b[:20] = a[:20]  # identical boxes: IoU 1, no penalty
    b[20:40, :2] = a[20:40, 2:] + 1  # disjoint boxes: IoU 0, GIoU and CIoU negative
    b[20:40, 2:] = b[20:40, :2] + 5
    got = np.asarray(ours(jnp.asarray(a), jnp.asarray(b)))
    want = np.array([reference(x, y) for x, y in zip(a.astype(float), b.astype(float))])
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got[:20], 1.0, atol=1e-6)
    if ours is not box_ops.iou:
        assert (got[20:40] < 0).all()


def test_pairwise_iou_and_empty_boxes():
    a = jnp.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], jnp.float32)
    got = np.asarray(box_ops.pairwise_iou(a, a))
    assert got.shape == (3, 3)
    np.testing.assert_allclose(got[0, 1], 25 / 175, rtol=1e-6)
    assert got[2, 2] == 0.0  # two empty boxes do not overlap (no 0/0)


def test_ciou_gradient_treats_alpha_as_a_constant():
    a = jnp.array([10.0, 10.0, 30.0, 50.0])
    b = jnp.array([12.0, 8.0, 40.0, 44.0])

    def aspect_term(x):
        wx, hx = x[2] - x[0], x[3] - x[1]
        return (4 / math.pi**2) * (
            jnp.arctan((b[2] - b[0]) / (b[3] - b[1])) - jnp.arctan(wx / hx)
        ) ** 2

    overlap, v = float(box_ops.iou(a, b)), float(aspect_term(a))
    alpha = v / (1 - overlap + v)  # fixed at the current boxes, as the paper prescribes
    with_constant_alpha = jax.grad(
        lambda x: box_ops.iou(x, b) - _centre_distance_term(x, b) - alpha * aspect_term(x)
    )(a)
    np.testing.assert_allclose(
        jax.grad(box_ops.ciou)(a, b), with_constant_alpha, rtol=1e-4, atol=1e-7
    )
    # disjoint boxes still pull together: the distance term has a gradient
    far = jnp.array([60.0, 60.0, 70.0, 70.0])
    assert float(jnp.abs(jax.grad(box_ops.ciou)(a, far)).sum()) > 0


def _centre_distance_term(a, b):
    low, high = jnp.minimum(a[:2], b[:2]), jnp.maximum(a[2:], b[2:])
    diagonal = jnp.sum(jnp.square(high - low))
    distance = jnp.sum(jnp.square((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2))
    return distance / diagonal


def reference_nms(
    boxes, scores, labels, iou_threshold, score_threshold, max_detections, max_candidates=None
):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:max_candidates]
    kept = []
    for i in order:
        if scores[i] <= score_threshold:
            continue
        if all(
            labels[j] != labels[i] or reference_iou(boxes[i], boxes[j]) <= iou_threshold
            for j in kept
        ):
            kept.append(i)
    return kept[:max_detections]


@pytest.mark.parametrize(
    "max_detections, max_candidates", [(5, None), (100, None), (5, 20), (100, 20)]
)
def test_nms_keeps_what_greedy_class_aware_nms_keeps(max_detections, max_candidates):
    """Of the `max_candidates` best-scored candidates when given, all otherwise."""
    rng = np.random.default_rng(1)
    nms = jax.jit(
        lambda b, s, c: box_ops.non_max_suppression(
            b,
            s,
            c,
            iou_threshold=0.5,
            score_threshold=0.05,
            max_detections=max_detections,
            max_candidates=max_candidates,
        )
    )
    for _ in range(5):
        count = 60
        base = random_boxes(rng, 8)
        # crowded: jittered copies of a few boxes, two labels, many near-duplicates
        boxes = base[rng.integers(0, 8, count)] + rng.normal(0, 3, (count, 4)).astype(np.float32)
        scores = rng.uniform(0, 1, count).astype(np.float32)
        labels = rng.integers(0, 2, count).astype(np.int32)
        got_boxes, got_scores, got_labels = map(np.asarray, nms(boxes, scores, labels))
        want = reference_nms(boxes, scores, labels, 0.5, 0.05, max_detections, max_candidates)
        assert got_boxes.shape == (max_detections, 4)
        np.testing.assert_array_equal(got_scores[: len(want)], scores[want])
        np.testing.assert_array_equal(got_labels[: len(want)], labels[want])
        np.testing.assert_array_equal(got_boxes[: len(want)], boxes[want])
        assert (got_scores[len(want) :] == 0).all() and (got_labels[len(want) :] == -1).all()
        assert (got_boxes[len(want) :] == 0).all()
