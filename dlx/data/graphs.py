"""Graphs as TFDS data sets: one example per node, the whole graph in one split named "graph".

Each node's record holds its index (`node`), its neighbours (`neighbors`, padded with -1 to the
graph's largest degree), the weights of those edges (`edge_weights`, 0 where padded) and its
class (`label`; karate_club also has `community`). Edges are undirected: j is in i's list exactly
when i is in j's, with the same weight. There are no self loops and no node features (the task
adds self loops and uses the node's identity or adjacency row as its features).

- `karate_club`: Zachary's karate club (networkx 3.6.1 `karate_club_graph`), 34 members, 78
  friendships weighted by the number of contexts the two met in (1-7). `label`: the club each
  member joined after the split (0 "Mr. Hi", 1 "Officer", 17 each). `community`: the 4
  communities of Louvain modularity clustering (networkx `louvain_communities`, unweighted,
  seed 0; modularity 0.420, the best known for this graph; sizes 11, 5, 12, 6), the labels of Kipf & Welling's demonstration.
- `les_miserables`: the co-appearance network of the novel's characters (networkx
  `les_miserables_graph`, from Knuth's Stanford GraphBase), 77 characters, 254 edges weighted by
  the chapters two characters share (1-31). `label`: its 6 Louvain communities (weighted, seed 0;
  the graph has no ground-truth classes).
- `drosophila_connectome`: the right mushroom body of the Drosophila larva (Eichler et al.,
  Nature 2017), the data file bundled in the graspologic 3.4.4 wheel (read from the wheel, never
  imported): 213 neurons, 5,625 undirected edges after symmetrising the directed synapse counts
  (weight: synapses either way, 1-118). `label`: the cell type, Kenyon cells (K, 100), input
  projection neurons (P, 63), output neurons (O, 29) and modulatory input neurons (I, 21).

Node order: networkx's for the first two (karate: member 0 is Mr. Hi, 33 the officer), the file's
for the connectome.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dlx.data.builders import _info, _OfflineBuilder
from dlx.errors import DataError

GRAPH_SPLIT = "graph"
GRASPOLOGIC_WHEEL = "graspologic-3.4.4-py3-none-any.whl"
_CONNECTOME_FILES = "graspologic/datasets/drosophila/right_{}.csv"
CONNECTOME_CELL_TYPES = ("K", "P", "O", "I")


@dataclasses.dataclass(frozen=True)
class Graph:
    """An undirected weighted graph: `edges` [E, 2] with i < j, `weights` [E], one label array
    per labelling, each [num_nodes]."""

    num_nodes: int
    edges: np.ndarray
    weights: np.ndarray
    labels: dict[str, np.ndarray]

    def neighbor_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """([N, D] neighbours padded with -1, [N, D] edge weights padded with 0), D the largest
        degree; each list in increasing neighbour order."""
        lists: list[list[tuple[int, float]]] = [[] for _ in range(self.num_nodes)]
        for (i, j), w in zip(self.edges.tolist(), self.weights.tolist()):
            lists[i].append((j, w))
            lists[j].append((i, w))
        degree = max((len(row) for row in lists), default=0)
        neighbors = np.full((self.num_nodes, max(degree, 1)), -1, np.int32)
        weights = np.zeros((self.num_nodes, max(degree, 1)), np.float32)
        for i, row in enumerate(lists):
            row.sort()
            neighbors[i, : len(row)] = [j for j, _ in row]
            weights[i, : len(row)] = [w for _, w in row]
        return neighbors, weights


def from_networkx(graph, labels: dict[str, np.ndarray], weight: str = "weight") -> Graph:
    edges = np.array(sorted((min(i, j), max(i, j)) for i, j in graph.edges()), np.int64)
    weights = np.array([graph.edges[i, j].get(weight, 1.0) for i, j in edges], np.float32)
    return Graph(graph.number_of_nodes(), edges.reshape(-1, 2), weights, labels)


def _community_labels(graph, communities) -> np.ndarray:
    """Communities (sets of nodes) as labels 0..k-1, numbered in order of their smallest node."""
    label = np.zeros(graph.number_of_nodes(), np.int64)
    index = {node: i for i, node in enumerate(graph.nodes())}
    for number, community in enumerate(sorted(communities, key=lambda c: min(index[n] for n in c))):
        label[[index[n] for n in community]] = number
    return label


def karate_club() -> Graph:
    import networkx as nx

    graph = nx.karate_club_graph()
    clubs = [graph.nodes[i]["club"] for i in graph.nodes()]
    community = nx.community.louvain_communities(graph, weight=None, seed=0)
    return from_networkx(
        graph,
        {
            "label": np.array([c != "Mr. Hi" for c in clubs], np.int64),
            "community": _community_labels(graph, community),
        },
    )


def les_miserables() -> Graph:
    import networkx as nx

    graph = nx.convert_node_labels_to_integers(nx.les_miserables_graph(), ordering="default")
    community = nx.community.louvain_communities(graph, weight="weight", seed=0)
    return from_networkx(graph, {"label": _community_labels(graph, community)})


def graspologic_wheel(data_dir: str | os.PathLike | None) -> Path | None:
    """$DLX_GRASPOLOGIC_WHEEL, else `<data_dir>/downloads/graspologic-3.4.4-py3-none-any.whl`
    (where `make data` puts it with pip download); None when neither is known."""
    if os.environ.get("DLX_GRASPOLOGIC_WHEEL"):
        return Path(os.environ["DLX_GRASPOLOGIC_WHEEL"])
    return None if data_dir is None else Path(data_dir) / "downloads" / GRASPOLOGIC_WHEEL


def drosophila_connectome(wheel: Path) -> Graph:
    try:
        with zipfile.ZipFile(wheel) as archive:
            adjacency = np.loadtxt(
                io.BytesIO(archive.read(_CONNECTOME_FILES.format("adjacency"))), delimiter=" "
            )
            cell_types = archive.read(_CONNECTOME_FILES.format("cell_labels")).decode().split()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{wheel} is not a readable graspologic 3.4.4 wheel ({error}); delete it and run "
            '"make data"'
        ) from error
    if adjacency.shape != (len(cell_types), len(cell_types)) or set(cell_types) - set(
        CONNECTOME_CELL_TYPES
    ):
        raise DataError(f"{wheel}: the connectome files are not those of graspologic 3.4.4")
    synapses = adjacency + adjacency.T
    i, j = np.nonzero(np.triu(synapses, k=1))
    return Graph(
        len(cell_types),
        np.stack([i, j], 1),
        synapses[i, j].astype(np.float32),
        {"label": np.array([CONNECTOME_CELL_TYPES.index(t) for t in cell_types], np.int64)},
    )


class _GraphBuilder(_OfflineBuilder, skip_registration=True):
    """One example per node of `graph()`, in the split "graph"."""

    description: str
    homepage: str
    class_names: tuple[str, ...]
    extra_labels: tuple[str, ...] = ()  # label columns besides "label"
    max_degree: int  # fixed here, so that reading a prepared graph needs none of its sources

    def graph(self) -> Graph:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        degree = self.max_degree
        features = {
            "node": tfds.features.Tensor(shape=(), dtype=np.int32),
            "neighbors": tfds.features.Tensor(shape=(degree,), dtype=np.int32),
            "edge_weights": tfds.features.Tensor(shape=(degree,), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=self.class_names),
        }
        for name in self.extra_labels:
            features[name] = tfds.features.Tensor(shape=(), dtype=np.int64)
        return _info(self, self.description, features, None, self.homepage)

    def _split_generators(self, dl_manager):
        return {GRAPH_SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        graph = self.graph()
        neighbors, weights = graph.neighbor_lists()
        if neighbors.shape[1] != self.max_degree or set(graph.labels) != {
            "label",
            *self.extra_labels,
        }:
            raise DataError(f"{self.name}: the source files hold another graph than expected")
        for node in range(graph.num_nodes):
            example = {"node": np.int32(node), "neighbors": neighbors[node]}
            example["edge_weights"] = weights[node]
            yield node, {**example, **{k: int(v[node]) for k, v in graph.labels.items()}}


class KarateClub(_GraphBuilder, skip_registration=True):
    description = (
        "Zachary's karate club: 34 members, 78 weighted friendships; label = the club joined "
        "after the split, community = 4 Louvain communities."
    )
    homepage = "https://networkx.org/documentation/stable/reference/generated/networkx.generators.social.karate_club_graph.html"
    class_names = ("Mr. Hi", "Officer")
    extra_labels = ("community",)
    max_degree = 17

    def graph(self) -> Graph:
        return karate_club()


class LesMiserables(_GraphBuilder, skip_registration=True):
    description = (
        "Les Miserables co-appearances: 77 characters, 254 edges weighted by shared chapters; "
        "label = 6 Louvain communities."
    )
    homepage = "https://networkx.org/documentation/stable/reference/generated/networkx.generators.social.les_miserables_graph.html"
    class_names = tuple(f"community {i}" for i in range(6))
    max_degree = 36

    def graph(self) -> Graph:
        return les_miserables()


class DrosophilaConnectome(_GraphBuilder, skip_registration=True):
    description = (
        "Right mushroom body of the Drosophila larva connectome (Eichler et al. 2017, via "
        "graspologic 3.4.4): 213 neurons, symmetrised synapse counts; label = cell type."
    )
    homepage = "https://pypi.org/project/graspologic/3.4.4/"
    class_names = (
        "Kenyon cell",
        "input projection neuron",
        "output neuron",
        "modulatory input neuron",
    )
    max_degree = 120

    def graph(self) -> Graph:
        wheel = graspologic_wheel(self.data_dir_root)
        if wheel is None or not wheel.is_file():
            raise DataError(missing_graspologic_hint(self.data_dir_root))
        return drosophila_connectome(wheel)


def missing_graspologic_hint(data_dir: str | os.PathLike | None) -> str:
    where = graspologic_wheel(data_dir) or f"<data_dir>/downloads/{GRASPOLOGIC_WHEEL}"
    return (
        f'drosophila_connectome needs the wheel {where}, not found: run "make data" (pip '
        "download --no-deps graspologic==3.4.4 -d <data_dir>/downloads) or set "
        "DLX_GRASPOLOGIC_WHEEL"
    )


GRAPH_BUILDERS: dict[str, type[_GraphBuilder]] = {
    "karate_club": KarateClub,
    "les_miserables": LesMiserables,
    "drosophila_connectome": DrosophilaConnectome,
}
