"""Recurrent language model and sequence classifier over token ids (RNN, LSTM or GRU).

num_outputs == 0: language model, tokens [B, T] -> next-token logits [B, T, vocab_size]. It keeps
  the decoding contract: with decode=True the per-layer carries live in the `cache` collection
  ("carry_0", "carry_1", ...: h [B, H], or (h, c) for an LSTM); the first apply on variables
  without a cache only creates it (zeros), later applies consume the chunk after what the cache
  holds. A causal model needs no padding mask: padding after a sequence cannot reach it.
num_outputs > 0: classifier, tokens [B, T] with padding id 0 -> logits [B, num_outputs], from the
  last layer's final valid state (forward and backward concatenated when bidirectional).

Parameters: embedding [vocab, embed_dim] ("vocab", "embed"); recurrent layers as in
`dlx.layers.recurrent` ("embed", "rnn_hidden", "rnn_gates"); head kernel ("embed", "vocab") or
("embed", "classes").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import recurrent as rnn
from dlx.layers.linear import dense
from dlx.schema import Float, Int

PADDING_ID = 0


def embedding(vocab_size: int, features: int, name: str | None = None) -> nn.Embed:
    return nn.Embed(
        vocab_size,
        features,
        name=name,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=1.0), ("vocab", "embed")
        ),
    )


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    vocab_size=Int(low=0),
    embed_dim=Int(low=1),
    hidden_dim=Int(low=1),
    num_layers=Int(low=1),
    dropout=Float(0, 1, high_open=True),
    num_outputs=Int(low=0),
    unroll=Int(low=1),
)


class Model(nn.Module):
    cell: str = "lstm"
    vocab_size: int = 256
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    num_outputs: int = 0
    unroll: int = 1

    def __post_init__(self):
        schema.check_fields("recurrent", self, FIELD_RULES)
        rnn.check_cell(self.cell)
        if self.bidirectional and self.num_outputs == 0:
            raise ConfigError(
                "a bidirectional recurrent model can only be a classifier "
                "(num_outputs > 0): a language model must not see the future"
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, tokens: jax.Array, *, train: bool = False, decode: bool = False
    ) -> jax.Array:
        tokens = tokens.astype(jnp.int32)
        x = embedding(self.vocab_size, self.embed_dim, name="embed")(tokens)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        stack = rnn.RecurrentStack(
            self.cell,
            self.hidden_dim,
            self.num_layers,
            self.bidirectional,
            self.dropout,
            self.unroll,
            name="rnn",
        )
        if self.num_outputs:
            _, finals = stack(x, tokens != PADDING_ID, train=train)
            last = finals[-1]
            pooled = (
                jnp.concatenate([rnn.carry_hidden(self.cell, c) for c in last], axis=-1)
                if self.bidirectional
                else rnn.carry_hidden(self.cell, last)
            )
            return dense(self.num_outputs, ("embed", "classes"), name="head")(pooled)

        carries = None
        if decode:
            ready = self.has_variable("cache", "carry_0")
            cache = [
                self.variable(
                    "cache",
                    f"carry_{i}",
                    rnn.zero_carry,
                    self.cell,
                    tokens.shape[0],
                    self.hidden_dim,
                )
                for i in range(self.num_layers)
            ]
            if not ready and not self.is_initializing():
                # creating the cache is all this call does: skip the forward pass
                return jnp.zeros(tokens.shape + (self.vocab_size,), jnp.float32)
            carries = [c.value for c in cache] if ready else None
        outputs, finals = stack(x, carries=carries, train=train)
        if carries is not None:
            for variable, final in zip(cache, finals):
                variable.value = final
        outputs = nn.with_logical_constraint(outputs, ("batch", "length", "rnn_hidden"))
        return dense(self.vocab_size, ("embed", "vocab"), name="head")(outputs)
