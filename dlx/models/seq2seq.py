"""GRU encoder-decoder with attention (token ids, padding id 0).

Encoder: embedding -> GRU stack (optionally bidirectional) over the source with its padding
masked; each layer's final state passes through a tanh bridge to start the matching decoder layer.
Decoder: GRU stack over the embedded target prefix, attention over the encoder states (source
padding masked out), attentional vector a_t = tanh(W_c [context_t; h_t] + b_c), logits = W a_t.
  attention="bahdanau": additive, score v^T tanh(W_q s_{t-1} + W_k m_s); the query is the previous
    decoder state and the context joins the first layer's input (Bahdanau et al. 2015).
  attention="luong": the query is the current top state h_t (Luong et al. 2015); score "general"
    h_t^T W_k m_s or "dot" h_t^T m_s (needs the encoder width == hidden_dim, so not
    bidirectional). Without input feeding the decoder GRUs run as plain scans and attention for
    all steps is one batched matmul; `input_feeding` feeds a_{t-1} into the first layer.

The decoding contract (see dlx/tasks/decoding.py): `encode(inputs) -> memory` (a dict whose
leaves all have the batch on axis 0), `decode(memory, targets_in, decode=...)`, and with
decode=True a `cache` collection: "index" (a scalar: how many target positions it holds),
"carry_<l>" [B, H] per decoder layer and, with input feeding, "feed" [B, H]. Until the first
consumed chunk the carries come from the memory's bridged encoder states.

Attention maps: with the "intermediates" collection mutable (`apply(..., mutable=
["intermediates"])`), the decoder sows its attention probabilities as
intermediates/decoder/attention_weights [B, T, S] (target step t over source position s); they
are the weights the contexts were made of, so the numbers and parameters do not change.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import recurrent as rnn
from dlx.layers.linear import dense
from dlx.models.recurrent import PADDING_ID, embedding
from dlx.schema import Float, Int, OneOf

Memory = dict[str, jax.Array]  # values [B,S,He], keys [B,S,K], mask [B,S], initial [B,L,H]


def _param(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    init=nn.initializers.lecun_normal(),  # noqa: B008
) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape)


def _attention_weights(scores: jax.Array, memory: Memory) -> jax.Array:
    """Softmax over the source positions (padding excluded) of scores [B, ..., S]."""
    mask = memory["mask"].reshape(
        memory["mask"].shape[:1] + (1,) * (scores.ndim - 2) + memory["mask"].shape[1:]
    )
    return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min), axis=-1)


def _context(weights: jax.Array, memory: Memory) -> jax.Array:
    """The weighted sum of the encoder states: weights [B, ..., S] -> context [B, ..., He]."""
    return jnp.einsum("b...s,bsd->b...d", weights, memory["values"])


def _key_projection(features: int, output_axis: str) -> nn.Dense:
    """Encoder states -> attention keys, computed once per source in `encode`."""
    return nn.Dense(
        features,
        use_bias=False,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", output_axis)
        ),
    )


class Decoder(nn.Module):
    """Embedded target prefix [B, T, E] and memory -> attentional vectors [B, T, H]."""

    hidden_dim: int
    num_layers: int
    attention: str
    input_feeding: bool
    attention_dim: int
    dropout: float
    unroll: int

    @nn.compact
    def __call__(
        self, memory: Memory, y: jax.Array, *, train: bool = False, decode: bool = False
    ) -> jax.Array:
        batch, _, embed_dim = y.shape
        hidden, memory_dim = self.hidden_dim, memory["values"].shape[-1]
        bahdanau = self.attention == "bahdanau"
        fed_dim = memory_dim if bahdanau else (hidden if self.input_feeding else 0)
        layers = [
            rnn.Recurrent("gru", hidden, unroll=self.unroll, name=f"layer_{i}")
            for i in range(self.num_layers)
        ]
        weights = [
            layer.weights(embed_dim + fed_dim if i == 0 else hidden)
            for i, layer in enumerate(layers)
        ]
        combine = (
            _param(self, "combine_kernel", (memory_dim + hidden, hidden), ("embed", "rnn_hidden")),
            _param(self, "combine_bias", (hidden,), ("rnn_hidden",), nn.initializers.zeros),
        )
        query = None
        if bahdanau:
            query = (
                _param(
                    self, "query_kernel", (hidden, self.attention_dim), ("rnn_hidden", "attention")
                ),
                _param(
                    self, "query_bias", (self.attention_dim,), ("attention",), nn.initializers.zeros
                ),
                _param(
                    self,
                    "score",
                    (self.attention_dim,),
                    ("attention",),
                    nn.initializers.normal(self.attention_dim**-0.5),
                ),
            )

        carries = [memory["initial"][:, i] for i in range(self.num_layers)]
        feed = jnp.zeros((batch, hidden), y.dtype)
        cache = None
        if decode:
            ready = self.has_variable("cache", "index")
            index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
            cache = [
                self.variable("cache", f"carry_{i}", jnp.zeros, (batch, hidden), y.dtype)
                for i in range(self.num_layers)
            ]
            if self.input_feeding:
                cache.append(self.variable("cache", "feed", jnp.zeros, (batch, hidden), y.dtype))
            if ready:
                started = index.value > 0
                carries = [jnp.where(started, c.value, init) for c, init in zip(cache, carries)]
                feed = cache[-1].value if self.input_feeding else feed
            elif self.is_initializing():
                cache = None  # `init` with decode=True: run the forward pass to create params
            else:  # creating the cache is all this call does
                return jnp.zeros(y.shape[:2] + (hidden,), y.dtype)

        if bahdanau or self.input_feeding:
            out, carries, feed = self._stepwise(
                memory, y, weights, combine, query, carries, feed, train
            )
        else:
            out, carries = self._parallel(memory, y, layers, combine, carries, train)
        if cache is not None:
            for variable, value in zip(cache, carries + ([feed] if self.input_feeding else [])):
                variable.value = value
            index.value = index.value + y.shape[1]
        return nn.with_logical_constraint(out, ("batch", "length", "rnn_hidden"))

    def _parallel(self, memory, y, layers, combine, carries, train):
        """Luong without input feeding: plain GRU scans, then attention for all steps at once."""
        x, finals = y, []
        for i, layer in enumerate(layers):
            if i and self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x, final = layer(x, None, carries[i])
            finals.append(final)
        weights = _attention_weights(jnp.einsum("bth,bsh->bts", x, memory["keys"]), memory)
        self._sow_weights(weights)
        context = _context(weights, memory)
        return jnp.tanh(jnp.concatenate([context, x], -1) @ combine[0] + combine[1]), finals

    def _stepwise(self, memory, y, weights, combine, query, carries, feed, train):
        """Attention inside the recurrence (Bahdanau, or Luong with input feeding). The first
        layer's projection of the embedded targets is still one matmul before the scan."""
        embed_dim = y.shape[-1]
        first = weights[0]
        projected = rnn.project_inputs(
            "gru",
            first._replace(input_kernel=first.input_kernel[:embed_dim]),
            jnp.swapaxes(y, 0, 1),
        )
        fed_kernel = first.input_kernel[embed_dim:]
        keep = None
        if train and self.dropout and self.num_layers > 1:
            shape = (y.shape[1], self.num_layers - 1) + feed.shape
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.dropout, shape)
            keep = keep.astype(y.dtype) / (1 - self.dropout)

        record = self.is_mutable_collection("intermediates")

        def bahdanau_weights(state):
            kernel, bias, score = query
            energy = jnp.tanh(memory["keys"] + (state @ kernel + bias)[:, None, :])
            return _attention_weights(energy @ score, memory)

        def step(state, inputs):
            carries, feed = state
            projected_t, keep_t = inputs
            if query is not None:
                probs = bahdanau_weights(carries[-1])
                context = _context(probs, memory)
            fed = context if query is not None else feed
            h, _ = rnn.cell_step("gru", first, carries[0], projected_t + fed @ fed_kernel)
            new = [h]
            for i, w in enumerate(weights[1:]):
                x = h if keep_t is None else h * keep_t[i]
                h, _ = rnn.cell_step(
                    "gru", w, carries[i + 1], x @ w.input_kernel + rnn.hoisted_bias("gru", w)
                )
                new.append(h)
            if query is not None:
                return (new, feed), ((h, context), probs if record else None)
            probs = _attention_weights(jnp.einsum("bh,bsh->bs", h, memory["keys"]), memory)
            context = _context(probs, memory)
            attentional = jnp.tanh(jnp.concatenate([context, h], -1) @ combine[0] + combine[1])
            return (new, attentional), (attentional, probs if record else None)

        (carries, feed), (out, probs) = lax.scan(
            step, (carries, feed), (projected, keep), unroll=self.unroll
        )
        if record:
            self._sow_weights(jnp.swapaxes(probs, 0, 1))
        if query is not None:  # Bahdanau: a_t needs no feedback, so it is formed for all steps
            h, context = out
            out = jnp.tanh(jnp.concatenate([context, h], -1) @ combine[0] + combine[1])
        return jnp.swapaxes(out, 0, 1), carries, feed

    def _sow_weights(self, weights: jax.Array) -> None:
        """[B, T, S] attention probabilities, kept only when "intermediates" is mutable."""
        if self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "attention_weights", weights)


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    vocab_size=Int(low=0),
    target_vocab_size=Int(low=0),
    embed_dim=Int(low=1),
    hidden_dim=Int(low=1),
    num_layers=Int(low=1),
    attention=OneOf("bahdanau", "luong"),
    luong_score=OneOf("general", "dot"),
    attention_dim=Int(low=0),
    dropout=Float(0, 1, high_open=True),
    unroll=Int(low=1),
)


class Model(nn.Module):
    vocab_size: int = 256  # source vocabulary
    target_vocab_size: int = 0  # 0: the same as vocab_size
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1  # encoder and decoder alike
    bidirectional: bool = True  # the encoder
    attention: str = "bahdanau"  # or "luong"
    luong_score: str = "general"  # or "dot"
    input_feeding: bool = False  # Luong only: Bahdanau's context always feeds the GRU
    attention_dim: int = 0  # Bahdanau's score width; 0: hidden_dim
    dropout: float = 0.0  # between GRU layers and before the output layer
    unroll: int = 1

    def __post_init__(self):
        schema.check_fields("seq2seq", self, FIELD_RULES)
        if self.attention == "bahdanau" and self.input_feeding:
            raise ConfigError(
                "input_feeding is a Luong option: Bahdanau attention already "
                "feeds its context into the decoder"
            )
        if self.attention == "luong" and self.luong_score == "dot" and self.bidirectional:
            raise ConfigError(
                "luong_score='dot' needs encoder states as wide as the decoder's: "
                "use bidirectional=False or luong_score='general'"
            )
        super().__post_init__()

    def setup(self):
        target_vocab = self.target_vocab_size or self.vocab_size
        self.source_embed = embedding(self.vocab_size, self.embed_dim)
        self.target_embed = embedding(target_vocab, self.embed_dim)
        self.encoder = rnn.RecurrentStack(
            "gru", self.hidden_dim, self.num_layers, self.bidirectional, self.dropout, self.unroll
        )
        self.bridge = dense(self.hidden_dim, ("embed", "rnn_hidden"))
        self.key_projection = None  # Luong "dot" scores the encoder states as they are
        if self.attention == "bahdanau":
            self.key_projection = _key_projection(self.attention_size, "attention")
        elif self.luong_score == "general":
            self.key_projection = _key_projection(self.hidden_dim, "rnn_hidden")
        self.decoder = Decoder(
            self.hidden_dim,
            self.num_layers,
            self.attention,
            self.input_feeding,
            self.attention_size,
            self.dropout,
            self.unroll,
        )
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = dense(target_vocab, ("embed", "vocab"))

    @property
    def attention_size(self) -> int:
        return self.attention_dim or self.hidden_dim

    def __call__(
        self, inputs: jax.Array, targets_in: jax.Array, *, train: bool = False
    ) -> jax.Array:
        return self.decode(self.encode(inputs, train=train), targets_in, train=train)

    def encode(self, inputs: jax.Array, *, train: bool = False) -> Memory:
        inputs = inputs.astype(jnp.int32)
        mask = inputs != PADDING_ID
        x = nn.with_logical_constraint(self.source_embed(inputs), ("batch", "length", "embed"))
        values, finals = self.encoder(x, mask, train=train)
        last_states = [
            jnp.concatenate([f[0], f[1]], -1) if self.bidirectional else f for f in finals
        ]
        initial = jnp.tanh(self.bridge(jnp.stack(last_states, axis=1)))
        keys = values if self.key_projection is None else self.key_projection(values)
        return {"values": values, "keys": keys, "mask": mask, "initial": initial}

    def decode(
        self, memory: Memory, targets_in: jax.Array, *, train: bool = False, decode: bool = False
    ) -> jax.Array:
        y = self.target_embed(targets_in.astype(jnp.int32))
        y = nn.with_logical_constraint(y, ("batch", "length", "embed"))
        attentional = self.decoder(memory, y, train=train, decode=decode)
        attentional = self.head_dropout(attentional, deterministic=not train)
        return self.head(attentional)
