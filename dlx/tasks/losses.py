"""Losses more than one task computes, one definition each.

Per-example values come back unreduced (a task decides how to average, mask or weight them):
`cross_entropy` per position, `bernoulli_nll` and `squared_error` per example (summed over all but
the leading axis). `masked_mean` is the average over real positions of padded sequences, and
`with_penalty` adds the config's L1/L2 terms (`config.loss.l1`, `config.loss.l2`) to a loss.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from dlx.optim.optimizer import regularization_penalty


def sum_per_example(values: jax.Array) -> jax.Array:
    """[B]: `values` [B, ...] summed over every axis but the first."""
    return values.sum(tuple(range(1, values.ndim)))


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy of logits [..., V] against integer labels [...] whose one-hot targets
    are smoothed towards uniform by `label_smoothing` (0: the labels themselves); per position."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean of `values` where `mask` is 1 (0 when nothing is)."""
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """[B]: -log p(x | logits) under independent Bernoullis with probabilities sigmoid(logits),
    summed over all but the leading axis; for intensities x in [0, 1] the binary cross-entropy."""
    return sum_per_example(optax.sigmoid_binary_cross_entropy(logits, x))


def squared_error(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """[B]: (prediction - target)^2 summed over all but the leading axis."""
    return sum_per_example(jnp.square(prediction - target))


def with_penalty(loss: jax.Array, params: Any, loss_config: Any) -> jax.Array:
    """`loss` plus the L1/L2 penalty on `params` that `loss_config` (`config.loss`) asks for."""
    return loss + regularization_penalty(params, loss_config.l1, loss_config.l2)
