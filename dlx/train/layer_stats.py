"""Per-layer statistics (`config.layer_stats_every_steps`): a task's report of one train step
(`Task.layer_stats`: hidden-layer outputs, and per parameter its value, gradient and update)
summarised on the devices into scalars for metrics.jsonl and value samples for TensorBoard's
histograms. Nothing of it is compiled or run when the key is 0."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

HISTOGRAM_SAMPLE = 4096  # values per tensor sent to the host for a histogram


def tree_paths(tree: Any) -> dict[str, jax.Array]:
    """{"Dense_0/kernel": leaf, ...}: each leaf under its path of keys."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}


def _key(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _scale(x: jax.Array) -> jax.Array:
    """max |x| (1 where x is all zeros): statistics of x / scale cannot underflow in float32,
    so a gradient that has vanished to 1e-25 reads 1e-25, not 0."""
    top = jnp.max(jnp.abs(x))
    return jnp.where(top > 0, top, 1.0)


def _norm(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    scale = _scale(x)
    return scale * jnp.sqrt(jnp.sum(jnp.square(x / scale)))


def _std(x: jax.Array) -> jax.Array:
    scale = _scale(x)
    return scale * jnp.std(x / scale)


def _sample(x: jax.Array) -> jax.Array:
    """At most HISTOGRAM_SAMPLE values, evenly strided over the flattened tensor."""
    flat = x.reshape(-1)
    stride = max(1, flat.size // HISTOGRAM_SAMPLE)
    return flat[::stride][:HISTOGRAM_SAMPLE].astype(jnp.float32)


def summarize(report: dict[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(scalars, histogram samples) of a task's report. Per hidden layer: the mean and std of
    its outputs, the fraction of outputs that are exactly 0, and the fraction of its units (last
    axis) that are 0 for every example and position of the batch ("dead"). Per parameter: the
    norms of its value, gradient and update, and update/value (the relative step size)."""
    scalars, samples = {}, {}
    for name, x in tree_paths(report.get("activation", {})).items():
        x = x.astype(jnp.float32)
        units = x.reshape(-1, x.shape[-1])
        scalars[f"activation/{name}/mean"] = x.mean()
        scalars[f"activation/{name}/std"] = _std(x)
        scalars[f"activation/{name}/zero_fraction"] = jnp.mean(x == 0)
        scalars[f"activation/{name}/dead_fraction"] = jnp.mean(jnp.all(units == 0, axis=0))
        samples[f"activation/{name}"] = _sample(x)
    params = tree_paths(report.get("param", {}))
    for name, value in params.items():
        scalars[f"param_norm/{name}"] = _norm(value)
        samples[f"param/{name}"] = _sample(value)
    for name, grad in tree_paths(report.get("grad", {})).items():
        scalars[f"grad_norm/{name}"] = _norm(grad)
        samples[f"grad/{name}"] = _sample(grad)
    for name, update in tree_paths(report.get("update", {})).items():
        scalars[f"update_norm/{name}"] = _norm(update)
        if name in params:
            scalars[f"update_ratio/{name}"] = _norm(update) / (_norm(params[name]) + 1e-12)
    return scalars, samples
