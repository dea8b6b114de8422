"""Semi-supervised node classification on one graph, full batch (Kipf & Welling 2017).

The data set is a graph of `dlx.data.graphs` (one record per node, split "graph"). A few nodes
are labelled; every train step sees the whole graph and is scored on the labelled nodes only;
eval scores the rest (accuracy and cross-entropy over the unlabelled nodes). The config group
`graph`:

    graph.label               "label"  the label column ("community": karate_club's 4
                                       Louvain communities)
    graph.labelled_nodes      ()       these nodes are the labelled ones (the karate club's
                                       classic demonstration: (0, 33), one per club) ...
    graph.labelled_per_class  1        ... else this many per class, drawn with
                                       RandomState(graph.split_seed)
    graph.split_seed          0
    graph.features            "identity": each node's features are its identity (one-hot,
                              stored as the node id); "adjacency": its row of the adjacency
                              matrix (1 where an edge is)

`config.data.batch_size` is the rows of the one batch: at least the node count; the graph is
padded to it with isolated nodes that no split scores, so the same config runs on any number of
data-parallel devices that divides it (and gives the same numbers: the shapes do not change).
Use `config.data.train_split = config.data.eval_split = "graph"`.

Figures (`plots/`): `embedding.png`, drawn when the run ends: the last hidden layer's node
embedding (its first two principal components when wider than 2) at up to six evals, coloured
by label, labelled nodes ringed; the embeddings of every eval are kept in
`plots/embeddings.npz`.
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import data as data_lib
from dlx import schema
from dlx.data.graphs import GRAPH_SPLIT
from dlx.errors import ConfigError
from dlx.optim.state import ModelState
from dlx.tasks import losses
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config
from dlx.tasks.classification import check_outputs_cover_classes

FEATURES = ("identity", "adjacency")
GRAPH_COLUMNS = ("node", "neighbors", "edge_weights")
MAX_EMBEDDING_PANELS = 6


class Task(SupervisedTask):
    best_metric_default = ("accuracy", "max")
    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "graph",
            label=schema.Str(nonempty=True),
            labelled_nodes=schema.Seq(schema.Int(low=0)),
            labelled_per_class=schema.Int(low=1),
            split_seed=schema.Int(low=0),
            features=schema.OneOf(*FEATURES),
        ),
    }

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.graph = ml_collections.ConfigDict(
            dict(
                label="label",
                labelled_nodes=(),
                labelled_per_class=1,
                split_seed=0,
                features="identity",
            )
        )
        return config

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        for key in ("train_split", "eval_split"):
            if config.data[key] != GRAPH_SPLIT:
                raise ConfigError(
                    f"config.data.{key}='{config.data[key]}': node classification reads the "
                    f"whole graph; set config.data.{key}='{GRAPH_SPLIT}' (config.graph picks "
                    "the labelled nodes)"
                )
        if config.grad_accum_steps != 1:
            raise ConfigError(
                f"config.grad_accum_steps={config.grad_accum_steps}: the graph is one batch and "
                "cannot be split into micro-batches; set it to 1"
            )

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        super().__init__(config, data_info, data_dir, workdir)
        columns = self._graph_columns()
        self.num_nodes = len(columns["node"])
        self.labels = columns[config.graph.label]
        check_outputs_cover_classes(config, self.model, self.num_classes, config.graph.label)
        self.labelled = self._labelled_mask()
        if self.labelled.all():
            raise ConfigError(
                f"every node of '{config.data.name}' is labelled, none is left to score; "
                "label fewer (config.graph.labelled_nodes / labelled_per_class)"
            )
        self.columns = self._padded(columns)

    def _graph_columns(self) -> dict[str, np.ndarray]:
        graph = data_lib.source(self.config.data.name, GRAPH_SPLIT, self.data_dir)
        columns = data_lib.read_rows(graph, np.arange(len(graph)))
        missing = [c for c in (*GRAPH_COLUMNS, self.config.graph.label) if c not in columns]
        if missing:
            labels = sorted(k for k in columns if k not in GRAPH_COLUMNS)
            raise ConfigError(
                f"data set '{self.config.data.name}' is not a graph with column "
                f"'{missing[0]}' (it has {sorted(columns)}); config.graph.label must be one of "
                f"{labels}"
                if missing[0] == self.config.graph.label and "neighbors" in columns
                else f"data set '{self.config.data.name}' is not a graph of dlx.data.graphs: "
                f"it has no column '{missing[0]}'"
            )
        if len(columns["node"]) == 0:
            raise ConfigError(f"data set '{self.config.data.name}' is an empty graph: no nodes")
        return columns

    @property
    def num_classes(self) -> int:
        if self.config.graph.label == "label" and self.data_info.num_classes:
            return int(self.data_info.num_classes)
        return int(self.labels.max()) + 1

    def _labelled_mask(self) -> np.ndarray:
        cfg = self.config.graph
        labelled = np.zeros(self.num_nodes, bool)
        if cfg.labelled_nodes:
            outside = [n for n in cfg.labelled_nodes if n >= self.num_nodes]
            if outside:
                raise ConfigError(
                    f"config.graph.labelled_nodes has node {outside[0]}, but "
                    f"'{self.config.data.name}' has nodes 0..{self.num_nodes - 1}"
                )
            labelled[list(cfg.labelled_nodes)] = True
            return labelled
        order = np.random.RandomState(cfg.split_seed).permutation(self.num_nodes)
        for label in range(self.num_classes):
            members = order[self.labels[order] == label]
            if len(members) <= cfg.labelled_per_class:
                raise ConfigError(
                    f"config.graph.labelled_per_class={cfg.labelled_per_class}, but class "
                    f"{label} of '{self.config.data.name}' has {len(members)} nodes and some "
                    f"must stay unlabelled; use at most {len(members) - 1}"
                )
            labelled[members[: cfg.labelled_per_class]] = True
        return labelled

    def _padded(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's columns, the node features, as `batch_size` rows (isolated padding)."""
        rows, extra = self.config.data.batch_size, self.config.data.batch_size - self.num_nodes
        if extra < 0:
            raise ConfigError(
                f"config.data.batch_size={rows}, but '{self.config.data.name}' has "
                f"{self.num_nodes} nodes and the batch is the whole graph; set "
                f"config.data.batch_size to at least {self.num_nodes} (the graph is padded "
                "with isolated nodes to it; a multiple of the data-parallel device count)"
            )
        neighbors = np.pad(columns["neighbors"], ((0, extra), (0, 0)), constant_values=-1)
        weights = np.pad(columns["edge_weights"], ((0, extra), (0, 0)))
        padded = {
            "node": np.arange(rows, dtype=np.int32),
            "neighbors": neighbors,
            "edge_weights": weights,
            "label": np.pad(self.labels, (0, extra)).astype(np.int32),
        }
        if self.config.graph.features == "adjacency":
            adjacency = np.zeros((rows, rows), np.float32)
            for i, row in enumerate(neighbors):
                adjacency[i, row[row >= 0]] = 1.0
            padded["features"] = adjacency
        return padded

    def source(self, split: str, *, train: bool) -> data_lib.WholeBatchSource:
        scored = self.labelled if train else ~self.labelled
        mask = np.pad(scored, (0, self.config.data.batch_size - self.num_nodes))
        return data_lib.WholeBatchSource(self.columns, mask=mask)

    def examples_per_epoch(self) -> int:
        return self.config.data.batch_size

    def model_input(self, batch: dict) -> jax.Array:
        return batch["features"] if "features" in batch else batch["node"]

    def _apply(self, params, batch: dict, *, train: bool, rng=None, mutable=False):
        return self.model.apply(
            {"params": params},
            self.model_input(batch),
            batch["neighbors"],
            batch["edge_weights"],
            train=train,
            rngs={"dropout": rng} if rng is not None else None,
            mutable=mutable,
        )

    def init(self, rng: jax.Array, batch: dict):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init(
            {"params": params_rng, "dropout": dropout_rng},
            self.model_input(batch),
            batch["neighbors"],
            batch["edge_weights"],
            train=False,
        )

    @functools.cached_property
    def param_specs(self):
        batch = {k: jnp.asarray(v) for k, v in self.columns.items()}
        variables = jax.eval_shape(self.init, jax.random.PRNGKey(0), batch)
        return nn.get_partition_spec(variables)["params"]

    def loss_fn(self, params, model_state, batch, rng):
        logits = self._apply(params, batch, train=True, rng=rng)
        labelled = batch["mask"].astype(jnp.float32)
        labels = batch["label"]
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * labelled
        cross_entropy = cross_entropy.sum() / jnp.maximum(labelled.sum(), 1.0)
        accuracy = ((logits.argmax(-1) == labels) * labelled).sum() / jnp.maximum(
            labelled.sum(), 1.0
        )
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def eval_step(self, state: ModelState, batch: dict) -> dict:
        logits, variables = self._apply(state.params, batch, train=False, mutable=["intermediates"])
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = {
            "loss": (nll * mask).sum(),
            "correct": ((logits.argmax(-1) == labels) * mask).sum(),
            "count": mask.sum(),
        }
        embedding = variables.get("intermediates", {}).get("embedding")
        if embedding is not None:  # one batch: its "sum" is the graph's embedding itself
            sums["embedding"] = embedding[0]
        return sums

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        count = float(sums["count"])
        return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}

    def predict(self, state: ModelState, batch: dict) -> jax.Array:
        return self._apply(state.params, batch, train=False)

    def write_run_files(self, workdir: str) -> None:
        from dlx.tasks.model_summary import model_summary

        table = model_summary(self, self.model, self.columns)
        if table is not None:
            with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
                f.write(table)

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        if not is_main_process() or "embedding" not in sums:
            return
        path = os.path.join(workdir, "plots", "embeddings.npz")
        snapshots = dict(np.load(path)) if os.path.exists(path) else {}
        snapshots[f"step_{step}"] = np.asarray(sums["embedding"])[: self.num_nodes]
        with open(path + ".tmp", "wb") as f:
            np.savez(f, **snapshots)
        os.replace(path + ".tmp", path)
        if step >= self.total_steps():  # one figure per run: matplotlib costs more than a step
            self._plot_embeddings(snapshots, os.path.join(workdir, "plots", "embedding.png"))

    def _plot_embeddings(self, snapshots: dict[str, np.ndarray], path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = sorted(int(k.split("_")[1]) for k in snapshots)
        if len(steps) > MAX_EMBEDDING_PANELS:
            picks = np.linspace(0, len(steps) - 1, MAX_EMBEDDING_PANELS).round().astype(int)
            steps = [steps[i] for i in picks]
        fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps), 3.2), squeeze=False)
        names = self.data_info.class_names if self.config.graph.label == "label" else None
        for ax, step in zip(axes[0], steps):
            points = two_dimensions(snapshots[f"step_{step}"])
            for label in range(self.num_classes):
                rows = self.labels == label
                ax.scatter(
                    *points[rows].T,
                    s=14,
                    color=f"C{label}",
                    label=names[label] if names else str(label),
                )
            ax.scatter(*points[self.labelled].T, s=60, facecolors="none", edgecolors="black")
            ax.set_title(f"step {step}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][0].legend(fontsize=6, loc="best")
        fig.suptitle(
            f"{self.config.data.name}: node embedding by {self.config.graph.label} "
            "(ringed: labelled nodes)",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def two_dimensions(points: np.ndarray) -> np.ndarray:
    """[N, 2]: `points` themselves when 2-D (1-D: with a zero column), else their first two
    principal components."""
    points = np.asarray(points, np.float64)
    if points.shape[1] <= 2:
        return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    centred = points - points.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T
