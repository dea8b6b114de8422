"""Axis-aligned boxes on device: overlap measures, the CIoU/GIoU box losses, and non-maximum
suppression with fixed output shapes (so it runs inside jit, on any backend).

Boxes are (x_min, y_min, x_max, y_max) in continuous coordinates (pixel edges: a box covering
the whole 96-pixel canvas is (0, 0, 96, 96)), as COCO measures them (no "+1").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

EPS = 1e-7


def area(boxes: jax.Array) -> jax.Array:
    """[..., 4] -> [...]; zero for empty or inverted boxes."""
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0) * jnp.maximum(
        boxes[..., 3] - boxes[..., 1], 0
    )


def _intersection(a: jax.Array, b: jax.Array) -> jax.Array:
    low = jnp.maximum(a[..., :2], b[..., :2])
    high = jnp.minimum(a[..., 2:], b[..., 2:])
    size = jnp.maximum(high - low, 0)
    return size[..., 0] * size[..., 1]


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Elementwise IoU of broadcastable [..., 4] boxes (0 where both are empty)."""
    inter = _intersection(a, b)
    union = area(a) + area(b) - inter
    return jnp.where(union > 0, inter / jnp.maximum(union, EPS), 0.0)


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """[..., N, 4] x [..., M, 4] -> [..., N, M]."""
    return iou(a[..., :, None, :], b[..., None, :, :])


def _enclosing(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The smallest box holding both: (its low corner, its high corner)."""
    return jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])


def giou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Generalized IoU (Rezatofighi et al., 2019): IoU - (enclosing area - union) / enclosing
    area, in [-1, 1]; it still has a gradient when the boxes do not overlap."""
    inter = _intersection(a, b)
    union = area(a) + area(b) - inter
    low, high = _enclosing(a, b)
    enclosing = jnp.prod(jnp.maximum(high - low, 0), axis=-1)
    return inter / (union + EPS) - (enclosing - union) / (enclosing + EPS)


def ciou(a: jax.Array, b: jax.Array) -> jax.Array:
    """Complete IoU (Zheng et al., 2020): IoU - centre distance^2 / enclosing diagonal^2 -
    alpha * v, with v the aspect-ratio discrepancy and alpha = v / (1 - IoU + v) treated as a
    constant (no gradient), as the paper prescribes."""
    inter = _intersection(a, b)
    union = area(a) + area(b) - inter
    overlap = inter / (union + EPS)
    low, high = _enclosing(a, b)
    diagonal = jnp.sum(jnp.square(high - low), axis=-1) + EPS
    centre_a = (a[..., :2] + a[..., 2:]) / 2
    centre_b = (b[..., :2] + b[..., 2:]) / 2
    distance = jnp.sum(jnp.square(centre_a - centre_b), axis=-1)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi**2) * jnp.square(jnp.arctan(wb / (hb + EPS)) - jnp.arctan(wa / (ha + EPS)))
    alpha = jax.lax.stop_gradient(v / (1 - overlap + v + EPS))
    return overlap - distance / diagonal - alpha * v


def non_max_suppression(
    boxes: jax.Array,
    scores: jax.Array,
    labels: jax.Array,
    *,
    iou_threshold: float,
    score_threshold: float,
    max_detections: int,
    max_candidates: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Greedy class-aware NMS of one image's candidates ([N, 4], [N], [N]): in descending score,
    a box is kept unless a kept box of the same label overlaps it by more than `iou_threshold`.
    Only the `max_candidates` highest-scored candidates are visited (all when None): the loop is
    sequential and its pairwise overlaps quadratic in their number. Returns the first
    `max_detections` kept (boxes, scores, labels), padded with zero boxes, score 0 and label -1.
    vmap it over a batch."""
    order = jnp.argsort(-scores)[:max_candidates]
    count = order.shape[0]
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    same_label = labels[:, None] == labels[None, :]
    suppresses = (pairwise_iou(boxes, boxes) > iou_threshold) & same_label
    candidate = scores > score_threshold

    def visit(i, keep):
        # Box i survives if no kept box before it suppresses it.
        earlier = jnp.arange(count) < i
        suppressed = jnp.any(keep & earlier & suppresses[i])  # symmetric: row i, contiguous
        return keep.at[i].set(candidate[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, count, visit, jnp.zeros(count, bool))
    # Kept boxes first, in score order (a stable sort on "not kept").
    rank = jnp.argsort(~keep, stable=True)[:max_detections]
    kept = keep[rank]
    if max_detections > count:  # fewer candidates than outputs: pad with never-kept rows
        rank = jnp.pad(rank, (0, max_detections - count))
        kept = jnp.pad(kept, (0, max_detections - count))
    return (
        jnp.where(kept[:, None], boxes[rank], 0.0),
        jnp.where(kept, scores[rank], 0.0),
        jnp.where(kept, labels[rank], -1),
    )
