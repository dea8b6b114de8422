"""Semi-supervised node classification with a graph convolutional network (task
`node_classification`, model `gcn`), full batch: the whole graph is every step's batch.

Default: Zachary's karate club, one labelled member per club (the instructor, node 0, and the
administrator, node 33), which club each other member joined; identity node features, a GCN of
two hidden layers 4 and 2 wide (tanh), so that the embedding figure shows the network's own 2-D
node embedding as it trains.

Variants:
- `:community`: the karate club's 4 Louvain communities, one labelled node per community drawn
  with `graph.split_seed` (Kipf & Welling's demonstration), the same 4-4-2 GCN.
- `:connectome`: the Drosophila larva mushroom body, 213 neurons; 10 labelled neurons per cell
  type (40), drawn with `graph.split_seed`; each neuron's features are its adjacency row (the
  inputs of the logistic-regression baseline, so the two differ only by the graph layers); GCN
  16 wide, dropout 0.5, L2 5e-4, Adam 0.01, 200 steps (Kipf & Welling's settings, not tuned).
- `:connectome_gat`: graph attention (4 heads of 8) in place of the graph convolution.
- `:les_miserables`: the novel's 77 characters, their 6 Louvain communities, 1 labelled per
  community.
- `:test`: tiny and short, for the test suite.

The logistic-regression baseline of any variant (each node classified from its adjacency row
alone, no graph layer): `--config.graph.features=adjacency --config.model.conv=none
--config.model.hidden=() --config.model.dropout=0.0` (`experiments/graphs.py` runs both).

    python launch.py --config configs/graph_gcn.py --workdir runs/karate_gcn
    python launch.py --config configs/graph_gcn.py:connectome --workdir runs/connectome_gcn \\
        --config.graph.split_seed=3 --config.seed=3
"""

from dlx.train.config import base_config

VARIANTS = ("community", "connectome", "connectome_gat", "les_miserables", "test")


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"graph_gcn has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("node_classification")
    config.data.name = "karate_club"
    config.data.train_split = config.data.eval_split = "graph"
    # The batch is the whole graph: its 34 nodes padded with isolated ones to 64 rows, so the
    # same config runs on 1, 2, 4, ... 64 data-parallel devices.
    config.data.batch_size = 64
    config.graph.labelled_nodes = (0, 33)
    config.model = dict(name="gcn", num_outputs=2, hidden=(4, 2), activation="tanh", dropout=0.0)
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 0.01
    config.train_steps = 300
    config.eval_every_steps = 10  # an embedding snapshot per eval (plots/embedding.png)
    config.checkpoint_every_steps = 300
    config.log_every_steps = 50
    if arg == "community":
        config.graph.label = "community"
        config.graph.labelled_nodes = ()
        config.graph.labelled_per_class = 1
        config.model.num_outputs = 4
    if arg in ("connectome", "connectome_gat"):
        config.data.name = "drosophila_connectome"
        config.data.batch_size = 256
        config.graph.labelled_nodes = ()
        config.graph.labelled_per_class = 10
        config.graph.features = "adjacency"
        config.model = dict(name="gcn", num_outputs=4, hidden=(16,), dropout=0.5)
        config.loss.l2 = 5e-4
        config.train_steps = 200
        config.eval_every_steps = 20
    if arg == "connectome_gat":
        config.model.update(conv="gat", hidden=(8,), heads=4)
    if arg == "les_miserables":
        config.data.name = "les_miserables"
        config.data.batch_size = 128
        config.graph.labelled_nodes = ()
        config.model.update(num_outputs=6, hidden=(16,), activation="relu", dropout=0.5)
        config.loss.l2 = 5e-4
    if arg == "test":
        config.train_steps = 20
        config.eval_every_steps = 10
        config.checkpoint_every_steps = 10
        config.log_every_steps = 5
    return config
