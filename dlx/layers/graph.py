"""Graph layers over an edge list: Kipf & Welling's graph convolution (sparse segment sums, or a
dense normalised adjacency for small graphs) and graph attention (Velickovic et al. 2018).

A graph arrives as one row per node, as dlx's graph data sets store it (`dlx.data.graphs`):
`neighbors` [N, D] (padded with -1) and `edge_weights` [N, D]. `Edges.from_neighbor_lists`
turns that into directed edges sender -> receiver (each undirected edge both ways), padded edges
kept with weight 0 so that every shape is static under jit.

The convolution is H' = Â H W with Â = D̃^-1/2 (A + I) D̃^-1/2, D̃ the weighted degree with the
self loop. An isolated node has only its self loop: its row of Â is 1 at itself, so it keeps
its own transformed features. Without self loops (`self_loops=False`) an isolated node's
degree is 0 and its row of Â is 0 (no 1/0).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers import activations
from dlx.layers.linear import dense


class Edges(NamedTuple):
    """Directed edges: messages go from `senders` to `receivers` with `weights` (0: no edge)."""

    senders: jax.Array  # [E] int32
    receivers: jax.Array  # [E] int32
    weights: jax.Array  # [E] float32
    num_nodes: int

    @classmethod
    def from_neighbor_lists(cls, neighbors: jax.Array, weights: jax.Array | None = None) -> Edges:
        """Node i receives from each of `neighbors[i]` (-1: none) with `weights[i]` (default
        1 per edge)."""
        num_nodes, degree = neighbors.shape
        valid = neighbors >= 0
        weights = jnp.ones(neighbors.shape, jnp.float32) if weights is None else weights
        return cls(
            senders=jnp.where(valid, neighbors, 0).reshape(-1).astype(jnp.int32),
            receivers=jnp.repeat(jnp.arange(num_nodes, dtype=jnp.int32), degree),
            weights=jnp.where(valid, weights.astype(jnp.float32), 0.0).reshape(-1),
            num_nodes=num_nodes,
        )

    def with_self_loops(self, weight: float = 1.0) -> Edges:
        nodes = jnp.arange(self.num_nodes, dtype=jnp.int32)
        return Edges(
            jnp.concatenate([self.senders, nodes]),
            jnp.concatenate([self.receivers, nodes]),
            jnp.concatenate([self.weights, jnp.full((self.num_nodes,), weight, jnp.float32)]),
            self.num_nodes,
        )

    def with_weights(self, weights: jax.Array) -> Edges:
        return self._replace(weights=weights)

    def in_degree(self) -> jax.Array:
        return jax.ops.segment_sum(self.weights, self.receivers, self.num_nodes)

    def normalized(self) -> Edges:
        """Weights w_ij / sqrt(d_i d_j), d the weighted degree (0 where the degree is 0)."""
        degree = self.in_degree()
        inv_sqrt = jnp.where(degree > 0, jax.lax.rsqrt(jnp.maximum(degree, 1e-12)), 0.0)
        return self.with_weights(self.weights * inv_sqrt[self.senders] * inv_sqrt[self.receivers])

    def dense(self) -> jax.Array:
        """The [N, N] matrix with entry (receiver, sender) = weight (repeated edges add up)."""
        matrix = jnp.zeros((self.num_nodes, self.num_nodes), self.weights.dtype)
        return matrix.at[self.receivers, self.senders].add(self.weights)


def gcn_normalized(edges: Edges, self_loops: bool = True) -> Edges:
    """The edges of Â = D̃^-1/2 (A + I) D̃^-1/2 (Kipf & Welling 2017)."""
    return (edges.with_self_loops() if self_loops else edges).normalized()


def propagate(x: jax.Array, edges: Edges) -> jax.Array:
    """out_i = sum over edges j -> i of weight * x_j, as a segment sum over the edge list."""
    messages = x[edges.senders] * edges.weights[:, None].astype(x.dtype)
    return jax.ops.segment_sum(messages, edges.receivers, edges.num_nodes)


def drop_edges(edges: Edges, rate: float, rng: jax.Array) -> Edges:
    """DropEdge (Rong et al. 2020): each directed edge kept with probability 1 - rate; the
    normalisation applied afterwards rescales what is left."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, edges.weights.shape)
    return edges.with_weights(jnp.where(keep, edges.weights, 0.0))


class GraphConv(nn.Module):
    """H' = Â (H W) + b over `edges` already normalised (`gcn_normalized`). `x` is [N, F] floats,
    or [N] node ids for identity features (then H W is a row lookup: W is an embedding table of
    one row per node). `dense=True` multiplies by the [N, N] matrix Â instead of summing over
    edges: the same result (a test holds them equal), faster for small dense graphs."""

    features: int
    dense_adjacency: bool = False
    kernel_init: str = "glorot_uniform"

    @nn.compact
    def __call__(self, x: jax.Array, edges: Edges) -> jax.Array:
        if jnp.issubdtype(x.dtype, jnp.integer):
            h = nn.Embed(
                edges.num_nodes,
                self.features,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.glorot_uniform(), ("nodes", "mlp")
                ),
                name="node_embedding",
            )(x)
        else:
            h = dense(self.features, ("embed", "mlp"), self.kernel_init, use_bias=False)(x)
        h = edges.dense() @ h if self.dense_adjacency else propagate(h, edges)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (self.features,)
        )
        return h + bias


class GraphAttention(nn.Module):
    """Multi-head graph attention (GAT): for each head, alpha_ij = softmax over the senders j of
    receiver i (self loop included) of LeakyReLU(a_dst . W h_i + a_src . W h_j), and
    h'_i = sum_j alpha_ij W h_j. Heads are concatenated (`concat=True`, width heads * features)
    or averaged (an output layer). Edges of weight 0 (padding, dropped edges) get no attention;
    other weights are ignored: attention replaces them. `attention_dropout` drops attention
    coefficients in training."""

    features: int
    heads: int = 4
    concat: bool = True
    negative_slope: float = 0.2
    attention_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, edges: Edges, *, train: bool = False) -> jax.Array:
        width = self.heads * self.features
        if jnp.issubdtype(x.dtype, jnp.integer):
            h = nn.Embed(
                edges.num_nodes,
                width,
                embedding_init=nn.with_logical_partitioning(
                    nn.initializers.glorot_uniform(), ("nodes", "mlp")
                ),
                name="node_embedding",
            )(x)
        else:
            h = dense(width, ("embed", "mlp"), "glorot_uniform", use_bias=False)(x)
        h = h.reshape(edges.num_nodes, self.heads, self.features)
        attention = nn.with_logical_partitioning(nn.initializers.glorot_uniform(), ("heads", "kv"))
        a_src = self.param("attention_source", attention, (self.heads, self.features))
        a_dst = self.param("attention_target", attention, (self.heads, self.features))
        scores = (h * a_src).sum(-1)[edges.senders] + (h * a_dst).sum(-1)[edges.receivers]
        scores = nn.leaky_relu(scores, self.negative_slope)  # [E, heads]
        present = (edges.weights != 0)[:, None]
        scores = jnp.where(present, scores, -jnp.inf)
        peak = jax.ops.segment_max(scores, edges.receivers, edges.num_nodes)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        weights = jnp.where(present, jnp.exp(scores - peak[edges.receivers]), 0.0)
        total = jax.ops.segment_sum(weights, edges.receivers, edges.num_nodes)
        alpha = weights / jnp.maximum(total[edges.receivers], 1e-30)
        if self.attention_dropout and train:
            alpha = activations.Dropout(self.attention_dropout, deterministic=False)(alpha)
        out = jax.ops.segment_sum(
            h[edges.senders] * alpha[..., None], edges.receivers, edges.num_nodes
        )
        bias_width = width if self.concat else self.features
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (bias_width,)
        )
        out = out.reshape(edges.num_nodes, width) if self.concat else out.mean(1)
        return out + bias
