"""Graphs: the graph layers against dense numpy references, the graph data sets, and node
classification end to end (the karate club's classic semi-supervised split)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlx.data import graphs as graph_data
from dlx.layers import graph as graph_layers
from dlx.tasks import node_classification
from helpers import cli, refused


def random_graph(num_nodes=7, isolated=(6,), seed=0):
    """Neighbour lists of an undirected weighted graph with `isolated` nodes, and its dense
    adjacency."""
    rng = np.random.default_rng(seed)
    adjacency = np.zeros((num_nodes, num_nodes), np.float32)
    for i in range(num_nodes):
        for j in range(i + 1, num_nodes):
            if i not in isolated and j not in isolated and rng.random() < 0.5:
                adjacency[i, j] = adjacency[j, i] = rng.integers(1, 5)
    graph = graph_data.Graph(
        num_nodes,
        np.argwhere(np.triu(adjacency, 1)),
        adjacency[np.triu(adjacency, 1) > 0],
        {"label": np.zeros(num_nodes, np.int64)},
    )
    neighbors, weights = graph.neighbor_lists()
    return neighbors, weights, adjacency


def reference_gcn_matrix(adjacency: np.ndarray, self_loops: bool = True) -> np.ndarray:
    a = adjacency + (np.eye(len(adjacency)) if self_loops else 0)
    degree = a.sum(1)
    inv_sqrt = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


@pytest.mark.parametrize("self_loops", [True, False])
def test_normalised_adjacency_equals_the_dense_formula_with_isolated_nodes(self_loops):
    neighbors, weights, adjacency = random_graph()
    edges = graph_layers.Edges.from_neighbor_lists(jnp.asarray(neighbors), jnp.asarray(weights))
    matrix = np.asarray(graph_layers.gcn_normalized(edges, self_loops).dense())
    np.testing.assert_allclose(matrix, reference_gcn_matrix(adjacency, self_loops), atol=1e-6)
    assert np.isfinite(matrix).all()
    # the isolated node keeps exactly itself with self loops, and gets nothing without
    assert matrix[6].tolist() == [0.0] * 6 + [1.0 if self_loops else 0.0]


def test_graph_convolution_sparse_equals_dense_equals_reference():
    neighbors, weights, adjacency = random_graph(num_nodes=9, isolated=(2, 8), seed=1)
    edges = graph_layers.gcn_normalized(
        graph_layers.Edges.from_neighbor_lists(jnp.asarray(neighbors), jnp.asarray(weights))
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (9, 5))
    sparse = graph_layers.GraphConv(3)
    dense = graph_layers.GraphConv(3, dense_adjacency=True)
    params = sparse.init(jax.random.PRNGKey(1), x, edges)
    kernel = np.asarray(params["params"]["Dense_0"]["kernel"].unbox())
    expected = reference_gcn_matrix(adjacency) @ (np.asarray(x) @ kernel)
    np.testing.assert_allclose(sparse.apply(params, x, edges), expected, atol=1e-5)
    np.testing.assert_allclose(dense.apply(params, x, edges), expected, atol=1e-5)


def test_graph_attention_is_a_softmax_over_each_nodes_neighbourhood():
    neighbors, weights, adjacency = random_graph(num_nodes=6, isolated=(5,), seed=2)
    edges = graph_layers.Edges.from_neighbor_lists(jnp.asarray(neighbors)).with_self_loops()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
    layer = graph_layers.GraphAttention(3, heads=2, concat=True)
    params = layer.init(jax.random.PRNGKey(1), x, edges)
    p = jax.tree.map(np.asarray, nn_unbox(params["params"]))
    h = (np.asarray(x) @ p["Dense_0"]["kernel"]).reshape(6, 2, 3)
    src = (h * p["attention_source"]).sum(-1)  # [N, heads]
    dst = (h * p["attention_target"]).sum(-1)
    scores = dst[:, None, :] + src[None, :, :]  # [receiver, sender, heads]
    scores = np.where(scores > 0, scores, 0.2 * scores)
    connected = (adjacency > 0) | np.eye(6, dtype=bool)
    scores = np.where(connected[..., None], scores, -np.inf)
    alpha = np.exp(scores - scores.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    expected = np.einsum("rsk,skf->rkf", alpha, h).reshape(6, 6) + p["bias"]
    np.testing.assert_allclose(layer.apply(params, x, edges), expected, atol=1e-5)


def nn_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)


@pytest.mark.parametrize(
    "conv, inputs, expected",
    [
        # identity features: the first layer's weights are a row per node (5 x 4), then 4 x 2
        ("gcn", "ids", (5 * 4 + 4) + (4 * 2 + 2) + (2 * 3 + 3)),
        ("gcn_dense", "features", (6 * 4 + 4) + (4 * 2 + 2) + (2 * 3 + 3)),
        # two heads: W (in x heads*width), a_src and a_dst (heads x width), bias (heads*width);
        # the output layer averages its heads: bias of its width
        (
            "gat",
            "features",
            (6 * 8 + 2 * 2 * 4 + 8) + (8 * 4 + 2 * 2 * 2 + 4) + (4 * 6 + 2 * 2 * 3 + 3),
        ),
        ("none", "features", (6 * 4 + 4) + (4 * 2 + 2) + (2 * 3 + 3)),
    ],
)
def test_gcn_model_shapes_and_parameter_counts(conv, inputs, expected):
    from dlx.models import get_model

    neighbors, weights, _ = random_graph(num_nodes=5, isolated=(4,), seed=3)
    x = jnp.arange(5) if inputs == "ids" else jnp.ones((5, 6))
    model = get_model("gcn", num_outputs=3, hidden=(4, 2), conv=conv, heads=2)
    variables = model.init(jax.random.PRNGKey(0), x, neighbors, weights)
    count = sum(v.size for v in jax.tree.leaves(nn_unbox(variables["params"])))
    assert count == expected
    logits = model.apply(
        variables, x, neighbors, weights, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    assert logits.shape == (5, 3) and bool(jnp.isfinite(logits).all())


def test_graph_data_sets_are_the_published_graphs():
    karate = graph_data.karate_club()
    assert karate.num_nodes == 34 and len(karate.edges) == 78
    assert np.bincount(karate.labels["label"]).tolist() == [17, 17]
    assert karate.labels["label"][0] == 0 and karate.labels["label"][33] == 1
    assert sorted(np.bincount(karate.labels["community"]).tolist()) == [5, 6, 11, 12]
    neighbors, weights = karate.neighbor_lists()
    for i, row in enumerate(neighbors):  # undirected: j lists i with the same weight
        for j, w in zip(row[row >= 0], weights[i][row >= 0]):
            k = list(neighbors[j]).index(i)
            assert weights[j][k] == w
    miserables = graph_data.les_miserables()
    assert (miserables.num_nodes, len(miserables.edges)) == (77, 254)


def test_connectome_is_read_from_the_graspologic_wheel(tmp_path):
    from dlx import data as data_lib

    wheel = graph_data.graspologic_wheel(data_lib.default_data_dir())
    assert wheel is not None and wheel.is_file(), 'run "make data"'
    connectome = graph_data.drosophila_connectome(wheel)
    assert connectome.num_nodes == 213
    assert np.bincount(connectome.labels["label"]).tolist() == [100, 63, 29, 21]
    damaged = tmp_path / graph_data.GRASPOLOGIC_WHEEL
    damaged.write_bytes(wheel.read_bytes()[:5000])
    with pytest.raises(graph_data.DataError, match="not a readable graspologic"):
        graph_data.drosophila_connectome(damaged)


def test_gcn_learns_the_karate_clubs_split_and_beats_the_baseline_in_the_study(tmp_path):
    from experiments import graphs as study

    results = study.main(
        ["--quick", "--out", str(tmp_path / "runs"), "--report_dir", str(tmp_path / "report")]
    )
    club = results["club"]
    # the 32 unlabelled members from the 2 labelled ones: the classic result misplaces 0-2
    assert min(club["gcn"]) >= 30 / 32 and max(club["logreg"]) < min(club["gcn"])
    report = (tmp_path / "report/report.md").read_text()
    assert "| karate_club | club; nodes 0 and 33 labelled |" in report
    run = tmp_path / "runs/club/gcn/seed_0"
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    snapshots = np.load(run / "plots/embeddings.npz")
    assert sorted(snapshots) == ["step_10", "step_20"] and snapshots["step_20"].shape == (34, 2)
    assert (tmp_path / "report/embedding_club.png").exists()


def test_labelled_nodes_are_drawn_per_class_and_the_rest_are_scored(tmp_path):
    from tests.helpers import load_config

    config = load_config("configs/graph_gcn.py:connectome", {"graph.split_seed": 3})
    from dlx import data as data_lib

    task = node_classification.Task(config, data_lib.info(config.data.name))
    assert np.bincount(task.labels[task.labelled]).tolist() == [10, 10, 10, 10]
    train_mask = task.source("graph", train=True).columns["mask"]
    eval_mask = task.source("graph", train=False).columns["mask"]
    assert train_mask.sum() == 40 and eval_mask.sum() == 213 - 40
    assert not (train_mask & eval_mask).any() and len(train_mask) == 256


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.data.batch_size=16", "config.data.batch_size to at least 34"),
        ("--config.data.batch_size=36", "not divisible by the data-parallel size 8"),
        ("--config.graph.labelled_nodes=(0,34)", "has nodes 0..33"),
        ("--config.graph.label=club", "config.graph.label must be one of ['community', 'label']"),
        ("--config.graph.labelled_nodes=() --config.graph.labelled_per_class=17", "at most 16"),
        ("--config.data.eval_split=test", "set config.data.eval_split='graph'"),
        ("--config.graph.features=degree", "config.graph.features"),
        ("--config.model.conv=chebyshev", "model.conv"),
        ("--config.graph.label=community", "set config.model.num_outputs=4"),
        ("--config.graph.labelled_nodes=" + str(tuple(range(34))).replace(" ", ""), "none is left"),
    ],
)
def test_bad_graph_configs_are_one_error_line(tmp_path, override, expected):
    workdir = str(tmp_path / "w")
    result = cli("--config", "configs/graph_gcn.py", "--workdir", workdir, *override.split())
    refused(result, expected)
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_data_set_that_is_not_a_graph_is_refused(tmp_path):
    result = cli(
        "--config",
        "configs/graph_gcn.py",
        "--workdir",
        str(tmp_path / "w"),
        "--config.data.name=digits",
    )
    assert refused(result, "data set 'digits' has no split 'graph'").startswith("error: ")


def test_an_empty_graph_is_refused(monkeypatch):
    from dlx import data as data_lib
    from tests.helpers import load_config

    empty = data_lib.ArraySource(
        {
            "node": np.zeros(0, np.int32),
            "neighbors": np.zeros((0, 1), np.int32),
            "edge_weights": np.zeros((0, 1), np.float32),
            "label": np.zeros(0, np.int64),
        }
    )
    monkeypatch.setattr(data_lib, "source", lambda *args, **kwargs: empty)
    config = load_config("configs/graph_gcn.py")
    with pytest.raises(node_classification.ConfigError, match="empty graph: no nodes"):
        node_classification.Task(config, data_lib.info("karate_club"))
