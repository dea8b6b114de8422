"""Device mesh and logical-axis sharding.

Parameters and activations carry logical axis names (``embed``, ``mlp``, ``conv_out`` ...); the
config's ``sharding_rules`` map those names to the mesh axes ``data``, ``fsdp`` and ``model``.
Nothing is ever materialised unsharded: the runner asks for shapes with ``jax.eval_shape``,
turns the logical specs into ``NamedSharding``s here, and jit-compiles the initialiser with them
as ``out_shardings``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlx.errors import ConfigError
from dlx.parallel import BATCH_AXES, MESH_AXES, fit_to_shape


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves ``{data: -1, fsdp: 2, model: 1}`` against the device count (-1 fills the rest)."""
    unknown = set(axis_sizes) - set(MESH_AXES)
    if unknown:
        raise ConfigError(
            f"config.mesh has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}"
        )
    sizes = [int(axis_sizes.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(
            f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(
            f"config.mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}"
        )
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ConfigError(
                f"config.mesh: {num_devices} devices do not divide by the fixed axes' product {fixed}"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one axis to -1 to fill the rest"
        )
    return tuple(sizes)


def fit_mesh_to_devices(axis_sizes, num_devices: int) -> None:
    """For using a trained run (eval, sample, inference): a mesh this machine cannot build (a run
    trained on 8 devices, read on 1) becomes all devices along `data`. The mesh is layout only;
    checkpoints restore onto any."""
    try:
        mesh_shape(axis_sizes, num_devices)
    except ConfigError:
        axis_sizes.update(data=-1, fsdp=1, model=1)


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axis_sizes, len(devices))
    try:  # topology-aware placement on TPU/GPU slices
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # CPU and odd device counts: plain order is as good as any
        grid = np.array(devices).reshape(shape)
    # Auto axes: Explicit ones (jax.make_mesh's default) break several optax/flax ops.
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for an ``eval_shape``'d tree of (possibly) logically-partitioned leaves.

    The result has the structure of the *unboxed* tree. Leaves without names are replicated.
    """
    logical_specs = nn.get_partition_spec(abstract_boxed)
    shapes = nn.meta.unbox(abstract_boxed)

    def to_sharding(spec: P, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules) if spec else P()
        return NamedSharding(mesh, fit_to_shape(mesh_spec, leaf.shape, mesh.shape))

    return jax.tree.map(to_sharding, logical_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's rows of the global batch."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }
