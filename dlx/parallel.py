"""What the mesh axes mean, shared by the runner (which builds the mesh) and the tasks (whose
steps run on it).

``data`` and ``fsdp`` split the batch rows; ``fsdp`` also splits the stored parameters and
optimizer state (each device keeps a slice), ``model`` splits the weights' inner dimensions
(tensor parallelism). Logical axis names on parameters and activations map to these axes through
``config.sharding_rules``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
# Batch rows are split over every axis that holds a different slice of the data.
BATCH_AXES = ("data", "fsdp")
FSDP_AXIS = "fsdp"


def _axis_names(entry: Any) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def fit_to_shape(spec: P, shape: tuple[int, ...], axis_sizes: Mapping[str, int]) -> P:
    """Drops mesh axes from the dimensions they do not divide (e.g. a 1-channel conv input)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = _axis_names(entry)
        size = math.prod(axis_sizes[a] for a in names)
        fitted.append(entry if names and dim % size == 0 else None)
    return P(*fitted)


def without_axis(spec: P, axis: str) -> P:
    """`spec` with mesh axis `axis` removed from every dimension."""
    entries = []
    for entry in spec:
        kept = tuple(a for a in _axis_names(entry) if a != axis)
        entries.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return P(*entries)


def gather_fsdp(params: Any, logical_specs: Any) -> Any:
    """Each parameter constrained to its stored layout with the ``fsdp`` axis gathered: what FSDP
    means (weights are stored sliced and all-gathered where they are used; their gradients come
    back reduce-scattered).

    Call it on the parameters inside the differentiated function, under the runner's trace (mesh
    and logical-axis rules in scope); with no mesh in scope it returns `params` unchanged.
    `logical_specs` is the params tree of logical ``PartitionSpec``s
    (``nn.get_partition_spec`` of the boxed variables).

    Why it is not left to XLA: with ``data``, ``fsdp`` and ``model`` all > 1, XLA's SPMD
    partitioner (jax/jaxlib 0.10.2, Shardy and GSPMD alike) drops an all-reduce from a weight's
    gradient when the weights' layouts are only propagated (a wrong update from step 2 on,
    silently; tests/test_mesh.py). Stating the gathered layout at the point of use gives exact
    gradients on every mesh, and costs nothing the partitioner would not do anyway.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return params
    axis_sizes = dict(mesh.shape)

    def gather(param, logical):
        stored = fit_to_shape(nn.logical_to_mesh_axes(tuple(logical)), param.shape, axis_sizes)
        return jax.lax.with_sharding_constraint(param, without_axis(stored, FSDP_AXIS))

    return jax.tree.map(gather, params, logical_specs, is_leaf=lambda x: isinstance(x, P))
