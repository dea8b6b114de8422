"""Graph neural network for node classification: [graph layer -> activation -> dropout] per
hidden width, then a graph layer to the class logits (Kipf & Welling 2017: two layers, 16 wide).

`conv` picks the layer (`dlx.layers.graph`): "gcn" (the symmetric normalised adjacency with
self loops, summed over the edge list), "gcn_dense" (the same through a dense [N, N] matrix),
"gat" (graph attention, `heads` heads concatenated in hidden layers and averaged in the output
layer), or "none": no graph at all, each node classified from its own features (with
`hidden=()`, logistic regression; the baseline that shows what the edges add).

Inputs: `x` the node features [N, F] or node ids [N] (identity features: the first layer's
weights are one row per node), `neighbors` [N, D] (-1 padded) and `edge_weights` [N, D] as the
graph data sets hold them; `weighted=False` treats every edge as weight 1. Dropout (`dropout`)
is applied to each layer's input features, except node ids; `edge_dropout` drops edges in
training (DropEdge). Each hidden layer's output passes through `LayerOutput("hidden_<i>")` (for
per-layer statistics); the last one's is the node embedding, sown as `intermediates/embedding`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.layers import activations
from dlx.layers.graph import Edges, GraphAttention, GraphConv, drop_edges, gcn_normalized
from dlx.layers.linear import dense
from dlx.schema import Float, Int, OneOf, Seq

CONVS = ("gcn", "gcn_dense", "gat", "none")

FIELD_RULES = dict(
    num_outputs=Int(low=1),
    hidden=Seq(Int(low=1)),
    conv=OneOf(*CONVS),
    heads=Int(low=1),
    dropout=Float(0, 1, high_open=True),
    edge_dropout=Float(0, 1, high_open=True),
)


class Model(nn.Module):
    num_outputs: int = 2
    hidden: Sequence[int] = (16,)
    conv: str = "gcn"
    activation: str = "relu"
    heads: int = 4
    dropout: float = 0.5
    edge_dropout: float = 0.0
    weighted: bool = False
    self_loops: bool = True

    def __post_init__(self):
        activations.get(self.activation)
        schema.check_fields("gcn", self, FIELD_RULES)
        super().__post_init__()

    def _layer(self, width: int, output: bool, x, edges: Edges, train: bool) -> jax.Array:
        if self.conv == "gat":
            return GraphAttention(
                width,
                heads=self.heads,
                concat=not output,
                attention_dropout=self.dropout,
            )(x, edges, train=train)
        if self.conv == "none":
            if jnp.issubdtype(x.dtype, jnp.integer):
                x = jax.nn.one_hot(x, edges.num_nodes)
            return dense(width, ("embed", "mlp"), "glorot_uniform")(x)
        return GraphConv(width, dense_adjacency=self.conv == "gcn_dense")(x, edges)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        neighbors: jax.Array,
        edge_weights: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        act = activations.get(self.activation)
        edges = Edges.from_neighbor_lists(neighbors, edge_weights if self.weighted else None)
        if train and self.edge_dropout:
            edges = drop_edges(edges, self.edge_dropout, self.make_rng("dropout"))
        if self.conv in ("gcn", "gcn_dense"):
            edges = gcn_normalized(edges, self.self_loops)
        elif self.conv == "gat" and self.self_loops:
            edges = edges.with_self_loops()
        for i, width in enumerate((*self.hidden, self.num_outputs)):
            output = i == len(self.hidden)
            if self.dropout and not jnp.issubdtype(x.dtype, jnp.integer):
                x = activations.Dropout(self.dropout, deterministic=not train)(x)
            x = self._layer(width, output, x, edges, train)
            if not output:
                x = activations.LayerOutput(name=f"hidden_{i}")(act(x))
                if i == len(self.hidden) - 1:
                    self.sow("intermediates", "embedding", x)
        return x
