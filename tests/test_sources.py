"""Sources beyond random access (dlx.data.sources): the whole data set as one batch (a graph) and
examples drawn on the fly; both iterate through `train_iterator` with the state the runner
checkpoints. End to end: a task defined here (registered as `dlx.tasks.graph_toy`), a graph
network on a k-nearest-neighbour graph of digits, trains on the whole graph every step and
resumes from a checkpoint exactly."""

from __future__ import annotations

import json
import sys
import types

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dlx import data as data_lib
from dlx.data.pipeline import eval_batches, train_iterator
from dlx.data.sources import GeneratedSource, WholeBatchSource
from dlx.errors import ConfigError
from dlx.metrics import BatchSums
from dlx.tasks import losses
from dlx.tasks.base import Task as TaskBase
from dlx.train import config as config_lib
from dlx.train import loop
from helpers import eval_records, train_losses

# --- the whole data set as one batch ----------------------------------------------------------


def small_graph(mask=None) -> WholeBatchSource:
    """8 nodes on a ring: node i holds i, its adjacency row links i-1 and i+1."""
    adjacency = np.roll(np.eye(8), 1, axis=1) + np.roll(np.eye(8), -1, axis=1)
    return WholeBatchSource({"node": np.arange(8), "adjacency": adjacency}, mask=mask)


def test_every_step_is_the_whole_graph_with_the_splits_mask_and_the_state_resumes():
    train_nodes = np.arange(8) % 3 == 0
    source = small_graph(train_nodes)
    batches = train_iterator(source, global_batch_size=8, seed=0)
    for _ in range(3):
        batch = next(batches)
        assert batch["node"].tolist() == list(range(8)) and batch["adjacency"].shape == (8, 8)
        assert batch["mask"].tolist() == train_nodes.tolist()
    state = batches.get_state()
    resumed = train_iterator(source, global_batch_size=8, seed=0)
    resumed.set_state(state)
    assert resumed.get_state() == state
    np.testing.assert_array_equal(next(resumed)["adjacency"], next(batches)["adjacency"])
    # Two processes: each reads its half of the rows; together they are the graph.
    halves = [
        next(train_iterator(source, global_batch_size=8, seed=0, process_index=i, process_count=2))
        for i in range(2)
    ]
    assert [h["node"].tolist() for h in halves] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert halves[1]["adjacency"].shape == (4, 8)  # rows of the whole adjacency


def test_eval_reads_the_whole_graph_as_one_batch_marked_by_the_eval_mask():
    test_nodes = np.arange(8) % 3 != 0
    batches = list(eval_batches(small_graph(test_nodes), global_batch_size=1000))
    assert len(batches) == 1
    assert batches[0]["node"].tolist() == list(range(8))
    assert batches[0]["mask"].tolist() == test_nodes.tolist()


def test_a_batch_size_other_than_the_graph_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"batch_size=4, but this data set is one batch of 8 "
        r"rows; set config.data.batch_size=8",
    ):
        train_iterator(small_graph(), global_batch_size=4, seed=0)


# --- examples drawn on the fly ----------------------------------------------------------------


def noisy_pairs(rng: np.random.Generator, count: int) -> dict:
    x = rng.uniform(-3, 3, (count, 1))
    return {"x": x, "y": np.sin(x) + 0.1 * rng.normal(size=(count, 1))}


def test_generated_batches_depend_only_on_seed_and_step_and_the_state_resumes():
    source = GeneratedSource(noisy_pairs, num_examples=50, seed=7)
    run = train_iterator(source, global_batch_size=16, seed=0)
    first = [next(run) for _ in range(4)]
    assert first[0]["x"].shape == (16, 1) and first[0]["x"].dtype == np.float32
    assert not np.array_equal(first[0]["x"], first[1]["x"])  # a fresh draw every step
    again = next(train_iterator(source, global_batch_size=16, seed=0))
    np.testing.assert_array_equal(again["y"], first[0]["y"])
    other_seed = next(train_iterator(source, global_batch_size=16, seed=1))
    assert not np.array_equal(other_seed["x"], first[0]["x"])

    resumed = train_iterator(source, global_batch_size=16, seed=0)
    resumed.set_state({"next_index": 2})
    np.testing.assert_array_equal(next(resumed)["x"], first[2]["x"])
    assert resumed.get_state() == {"next_index": 3}
    halves = [
        next(train_iterator(source, global_batch_size=16, seed=0, process_index=i, process_count=2))
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([h["x"] for h in halves]), first[0]["x"])


def test_generated_eval_examples_are_a_fixed_set_apart_from_the_train_draws():
    source = GeneratedSource(noisy_pairs, num_examples=50, seed=7)
    batches = list(eval_batches(source, global_batch_size=32))
    assert [int(b["mask"].sum()) for b in batches] == [32, 18]
    examples = np.concatenate([b["x"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(
        examples, GeneratedSource(noisy_pairs, 50, seed=7).read_rows(np.arange(50))["x"]
    )
    assert source[3]["x"] == examples[3]
    train = next(train_iterator(source, global_batch_size=50, seed=7))
    assert not np.isin(train["x"], examples).any()
    with pytest.raises(ValueError, match=r"draw\(rng, 4\) must return arrays of 4 rows"):
        GeneratedSource(lambda rng, n: {"x": np.zeros(3)}, num_examples=4)[0]


# --- a graph task through the runner ----------------------------------------------------------

NODES = 64  # a whole-graph batch splits evenly over the 8 test devices


def knn_graph(features: np.ndarray, k: int) -> np.ndarray:
    """Row-normalised adjacency of the symmetric k-nearest-neighbour graph, self loops included."""
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    nearest = np.argsort(distances, axis=1)[:, : k + 1]  # each node is its own nearest
    adjacency = np.zeros_like(distances)
    np.put_along_axis(adjacency, nearest, 1.0, axis=1)
    adjacency = np.maximum(adjacency, adjacency.T)
    return (adjacency / adjacency.sum(1, keepdims=True)).astype(np.float32)


class GraphNetwork(nn.Module):
    """Two graph convolutions: logits = A relu(A X W1) W2."""

    @nn.compact
    def __call__(self, features, adjacency):
        dense = lambda n, names: nn.Dense(  # noqa: E731
            n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
        )
        hidden = nn.relu(adjacency @ dense(32, ("embed", "mlp"))(features))
        return adjacency @ dense(10, ("mlp", "classes"))(hidden)


@flax.struct.dataclass
class GraphState:
    params: dict
    opt_state: optax.OptState


class Task(TaskBase):
    """Node classification on one graph (transductive): the nodes are the first NODES digits of
    the train split, edges join nearest neighbours in pixel space; half of the nodes are
    labelled for training, the other half are scored at eval."""

    best_metric_default = ("accuracy", "max")

    @staticmethod
    def config_defaults():
        return ml_collections.ConfigDict({"graph": dict(learning_rate=0.01)})

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        super().__init__(config, data_info, data_dir, workdir)
        self.network = GraphNetwork()
        self.tx = optax.adam(config.graph.learning_rate)
        digits = data_lib.source("digits", "train", data_dir).read_rows(np.arange(NODES))
        features = digits["image"].reshape(NODES, -1).astype(np.float32) / 16.0
        self.columns = {
            "features": features,
            "adjacency": knn_graph(features, k=4),
            "label": digits["label"],
        }
        self.train_nodes = np.arange(NODES) % 2 == 0

    def source(self, split, *, train):
        source = WholeBatchSource(
            self.columns, mask=self.train_nodes if train else ~self.train_nodes
        )
        source.check_batch_size(self.config.data.batch_size)  # before the workdir is touched
        return source

    def examples_per_epoch(self):
        return NODES

    def init_state(self, rng, batch):
        params = self.network.init(rng, batch["features"], batch["adjacency"])["params"]
        return GraphState(params, self.tx.init(params))

    def _logits(self, params, batch):
        return self.network.apply({"params": params}, batch["features"], batch["adjacency"])

    def train_step(self, state, batch, rng, step):
        def loss_fn(params):
            per_node = losses.cross_entropy(self._logits(params, batch), batch["label"])
            return losses.masked_mean(per_node, batch["mask"].astype(jnp.float32))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        return GraphState(optax.apply_updates(state.params, updates), opt_state), {"loss": loss}

    def eval_sums(self, state, batch):
        correct = self._logits(state.params, batch).argmax(-1) == batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        return {"correct": (correct * mask).sum(), "nodes": mask.sum()}

    def evaluator(self):
        return BatchSums(
            self.eval_sums,
            lambda sums: {
                "accuracy": float(sums["correct"]) / float(sums["nodes"]),
                "nodes": float(sums["nodes"]),
            },
        )


@pytest.fixture(autouse=True, scope="module")
def registered():
    module = types.ModuleType("dlx.tasks.graph_toy")
    module.Task = Task
    sys.modules[module.__name__] = module
    yield
    del sys.modules[module.__name__]


def _config(**changes):
    config = config_lib.base_config("graph_toy")
    config.data.update(name="digits", batch_size=NODES, eval_batch_size=NODES)
    config.update(
        {
            **dict(
                train_steps=30,
                log_every_steps=1,
                eval_every_steps=15,
                checkpoint_every_steps=15,
                progress_bar=False,
            ),
            **changes,
        }
    )
    return config


def test_a_graph_task_trains_on_the_whole_graph_and_resumes_exactly(tmp_path):
    whole = loop.train_and_evaluate(_config(), str(tmp_path / "whole"))
    assert whole["final_eval"]["nodes"] == NODES // 2  # the unlabelled nodes, once
    assert whole["final_eval"]["accuracy"] > 0.6  # ten classes: chance is 0.1
    losses_whole = train_losses(tmp_path / "whole")
    assert losses_whole[30] < 0.2 * losses_whole[1]

    # Stopped at step 15 (its checkpoint holds the iterator state), then resumed to 30.
    loop.train_and_evaluate(_config(train_steps=15), str(tmp_path / "resumed"))
    resumed = loop.train_and_evaluate(_config(), str(tmp_path / "resumed"))
    assert resumed["resumed_from_step"] == 15
    saved = tmp_path / "resumed" / "checkpoints" / "15" / "data" / "metadata"
    assert json.loads(saved.read_text()) == {"next_index": 15}  # the iterator's state
    losses_resumed = train_losses(tmp_path / "resumed")
    assert [losses_resumed[s] for s in range(1, 31)] == [losses_whole[s] for s in range(1, 31)]
    assert eval_records(tmp_path / "resumed") == eval_records(tmp_path / "whole")


def test_a_graph_task_refuses_another_batch_size_before_the_workdir_is_touched(tmp_path):
    config = _config()
    config.data.batch_size = 32
    with pytest.raises(ConfigError, match="set config.data.batch_size=64"):
        loop.train_and_evaluate(config, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
