"""Sharding never changes the numbers: every model family trains on a mesh whose data, fsdp and
model axes are all > 1 (8 fake devices) to the parameters it reaches on one device.

In-process: the runner's own state layout and jitted step, a mesh over the first N devices.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest

from dlx import data as data_lib
from dlx.train import config as config_lib
from dlx.train import loop

STEPS = 3
ALL_AXES_SHARDED = (2, 2, 2)

FAMILIES = {
    "mlp": ("configs/digits_mlp.py", {}),
    # SGD: the bias before a batch norm has a zero gradient up to rounding, which Adam would
    # blow up to full-size steps of noise on any two devices counts.
    "mlp-batchnorm-regression": (
        "configs/diabetes_mlp.py",
        {"model.batch_norm": True, "optimizer.name": "sgd"},
    ),
    "cnn": ("configs/fashion_cnn.py:test", {"model.dropout": 0.0}),
    "gpt": ("configs/shakespeare_gpt.py:test", {}),
    "lstm": ("configs/shakespeare_lstm.py:test", {}),
    "gru": ("configs/shakespeare_gru.py:test", {}),
    "transformer-seq2seq": ("configs/cmudict_transformer.py:test", {}),
    "gru-attention-seq2seq": ("configs/cmudict_gru_attention.py:test", {}),
    "conv-vae": ("configs/fashion_vae.py:test", {"model.kind": "conv"}),
    "dcgan": ("configs/fashion_dcgan.py:test", {}),
    "gcn": ("configs/graph_gcn.py:connectome", {"model.dropout": 0.0}),
    "gat": ("configs/graph_gcn.py:connectome_gat", {"model.dropout": 0.0}),
    "word2vec": ("configs/word2vec.py:test", {}),
    "resnet": ("configs/fashion_resnet.py:test", {}),
    "vit": ("configs/fashion_vit.py:test", {}),
    "detector": ("configs/fashion_detection.py:test", {}),
}


def _train(spec: str, overrides: dict, mesh_shape: tuple[int, int, int], steps: int = STEPS):
    """(losses, state) after `steps` updates of the config's run on a data x fsdp x model mesh."""
    config = config_lib.load(spec)
    config.progress_bar = False
    for path, value in overrides.items():
        group, key = path.split(".")
        config[group][key] = value
    config.mesh.data, config.mesh.fsdp, config.mesh.model = mesh_shape
    run = loop.prepare_run(config, devices=jax.devices()[: int(np.prod(mesh_shape))])
    state = loop.init_state(run)
    train_step = loop.compile_steps(run)
    batches = data_lib.train_iterator(
        run.task.source(config.data.train_split, train=True),
        global_batch_size=config.data.batch_size,
        seed=config.seed,
        process_index=0,
        process_count=1,
        num_threads=1,
        prefetch=1,
    )
    losses = []
    with loop._tracing_context(run.mesh, config):
        for step in range(steps):
            state, metrics = train_step(state, next(batches), np.int32(step))
            losses.append([float(metrics[k]) for k in run.task.nonfinite_metrics])
    return np.array(losses), jax.device_get(state)


def _assert_same_training(a, b):
    """The same watched losses at every step, and the same train state (every player's
    parameters, optimizer states, batch statistics) at the end."""
    (losses_a, state_a), (losses_b, state_b) = a, b
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    # Relative to the scale of each part of the state (params, optimizer state, statistics):
    # summation order differs between layouts, and a parameter whose gradient is zero up to
    # rounding (a bias before a batch norm) moves by noise.
    for part_a, part_b in zip(_parts(state_a), _parts(state_b)):
        floats = [
            leaf for leaf in jax.tree.leaves(part_b) if np.issubdtype(leaf.dtype, np.floating)
        ]
        scale = max((float(np.abs(leaf).max()) for leaf in floats), default=0.0)
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale),  # noqa: B023
            part_a,
            part_b,
        )


def _parts(state) -> list:
    """The top-level subtrees of a train state (a flax dataclass or a dict)."""
    if not dataclasses.is_dataclass(state):
        return list(state.values())
    return [
        getattr(state, f.name)
        for f in dataclasses.fields(state)
        if f.metadata.get("pytree_node", True)
    ]


@functools.cache
def _one_device(family: str):
    spec, overrides = FAMILIES[family]
    return _train(spec, overrides, (1, 1, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_the_same_on_a_data_fsdp_model_mesh_as_on_one_device(family):
    """(The seq2seq `:test` configs train at full width, `data.length_buckets=()`; the bucketed
    step's sharded equality has its own test in test_g2p.py.)"""
    spec, overrides = FAMILIES[family]
    _assert_same_training(_train(spec, overrides, ALL_AXES_SHARDED), _one_device(family))


@pytest.mark.parametrize(
    "mesh_shape",
    [(8, 1, 1), (1, 8, 1), (1, 1, 8), (4, 2, 1), (2, 1, 4), (1, 2, 4), (2, 2, 1), (1, 2, 2)],
)
def test_the_mlp_trains_the_same_on_every_layout(mesh_shape):
    """The layouts besides 2x2x2 (which failed silently before dlx gathered weights over fsdp
    where they are used), on 8 and on 4 devices."""
    spec, overrides = FAMILIES["mlp"]
    _assert_same_training(_train(spec, overrides, mesh_shape), _one_device("mlp"))


def test_gather_fsdp_gives_exact_gradients_where_xla_alone_does_not():
    """The smallest case of the XLA partitioner bug dlx works around (two matmuls, batch over
    data and fsdp, W2 stored over fsdp and model on a 2x2x2 mesh: XLA alone gets W1's gradient
    wrong by ~80%). With the weights gathered over fsdp where they are used, both gradients are
    exact."""
    import flax.linen as nn
    import jax.numpy as jnp
    from jax.sharding import AxisType, Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from dlx.parallel import gather_fsdp

    mesh = Mesh(
        np.array(jax.devices()[:8]).reshape(2, 2, 2),
        ("data", "fsdp", "model"),
        axis_types=(AxisType.Auto,) * 3,
    )
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "model"))
    logical = {"w1": P(None, "mlp"), "w2": P("embed", "mlp")}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 64)).astype(np.float32)
    params = {k: rng.normal(size=(64, 64)).astype(np.float32) * 0.1 for k in logical}

    def loss(p, x):
        return jnp.sum(((x @ p["w1"]) @ p["w2"]) ** 2)

    expected = jax.jit(jax.grad(loss))(params, x)
    shardings = {
        k: NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(v), rules)) for k, v in logical.items()
    }
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        grads = jax.jit(
            jax.grad(lambda p, x: loss(gather_fsdp(p, logical), x)),
            in_shardings=(shardings, batch_sharding),
            out_shardings=shardings,
        )(jax.device_put(params, shardings), jax.device_put(x, batch_sharding))
    for k in logical:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-4, atol=1e-3)
