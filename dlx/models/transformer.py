"""Transformers: GPT-style decoder, BERT-style encoder, and the encoder-decoder of Vaswani et al.

One `Model` (config name "transformer"), chosen by `kind`:
- "decoder": causal LM, `__call__(tokens[B,T], *, train, decode) -> logits[B,T,vocab]`. The
  defaults are GPT-2's: pre-LN blocks, LayerNorm eps 1e-5, tanh GELU ("gelu_new"), learned
  positions, biases, output tied to the token embedding. Llama-style by config: norm="rms",
  mlp="swiglu", position="rope", num_kv_heads < num_heads (GQA), bias=False,
  tie_embeddings=False.
- "encoder": bidirectional with a padding mask (token id 0 is padding). `num_outputs > 0` gives
  a classifier head: by `pooling`, one row per sequence from the mean over real tokens ("mean")
  or the first token's state ("cls", BERT's [CLS]), or one row per token ("none": token
  classification, [B, T, num_outputs]); otherwise per-token vocab logits. BERT-style by config: norm_position="post" (post-LN blocks,
  a LayerNorm on the embeddings, no final norm), type_vocab_size=2 (segment embeddings, the
  `token_types` argument), mlp="gelu_exact" (erf GELU), norm_eps=1e-12; `hidden(tokens)` gives
  the last hidden states (dlx/hub/bert.py imports BERT checkpoints onto this).
- "encoder_decoder": encoder + decoder with causal self-attention and cross-attention; pre-LN
  (more stable than the paper's post-LN). `__call__(inputs, targets_in)`, `encode(inputs)`,
  `decode(memory, targets_in, decode=...)`; target embedding shared with the source one unless
  `target_vocab_size > 0`.
Decoding with a KV cache follows the contract in dlx/tasks/decoding.py.

Parameter names (stable; hub importers map onto them). Decoder and encoder kinds:
  wte/embedding                    [vocab, embed]            token embedding
  wpe/embedding                    [max_len, embed]          position="learned" only
  wtt/embedding                    [type_vocab, embed]       type_vocab_size > 0 only
  ln_embed/{scale,bias}            [embed]                   norm_position="post" only
  h_{i}/ln_1/{scale,bias}          [embed]                   (bias only with norm="layer", bias)
  h_{i}/attn/qkv/{kernel,bias}     [embed, 3, heads, head_dim], [3, heads, head_dim]
      or, with num_kv_heads < num_heads:
  h_{i}/attn/query/{kernel,bias}   [embed, heads, head_dim]
  h_{i}/attn/kv/{kernel,bias}      [embed, 2, kv_heads, head_dim]
  h_{i}/attn/proj/{kernel,bias}    [heads, head_dim, embed], [embed]
  h_{i}/ln_2/{scale,bias}
  h_{i}/mlp/fc, h_{i}/mlp/proj     [embed, mlp], [mlp, embed] (mlp="gelu")
  h_{i}/mlp/gate, up, down         [embed, mlp] x2, [mlp, embed] (mlp="swiglu")
  ln_f/{scale,bias}                                          norm_position="pre" only
  lm_head/kernel                   [embed, vocab]            tie_embeddings=False only
  classifier/{kernel,bias}         [embed, num_outputs]      encoder with num_outputs > 0
GPT-2 maps 1:1: c_attn weight [E, 3E] -> qkv/kernel reshaped [E, 3, H, E/H] (Conv1D weights
are already [in, out]), c_proj [E, E] -> proj/kernel [H, E/H, E], mlp.c_fc/c_proj -> mlp/fc,
mlp/proj. Encoder-decoder: encoder/h_{i}, encoder/ln_f, decoder/h_{i} (adding
ln_cross + cross_attn/{query,kv,proj}), decoder/ln_f, wte, target_wte (target_vocab_size > 0),
wpe (shared by both sides), lm_head (untied).

Initialisation: GPT-2's N(0, 0.02) for embeddings and kernels, N(0, 0.02 / sqrt(2 * layers))
for the projections that write into the residual stream, zero biases, unit norm scales.
Dropout ("dropout" rng) on embeddings, attention probabilities and both residual branches.

FLOPs per token: `train_flops_per_token`; speed against PyTorch: BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers.activations import Dropout
from dlx.layers.attention import IMPLEMENTATIONS, PAD_ID, MultiHeadAttention, padding_mask
from dlx.layers.linear import INIT_STDDEV, Projection, accumulation_dtype
from dlx.layers.mlp import MLPS, make_mlp
from dlx.layers.norms import NORMS, make_norm
from dlx.layers.positional import LearnedPositions, sinusoidal
from dlx.schema import Float, Int, OneOf

KINDS = ("decoder", "encoder", "encoder_decoder")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
DTYPES = ("float32", "bfloat16", "float64")
POOLINGS = ("mean", "cls", "none")
# What config.model may set on top of a pretrained checkpoint's architecture (dlx.hub): the
# weights do not fix these.
PRETRAINED_OVERRIDES = ("dropout", "num_outputs", "pooling", "attention", "dtype")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What one Transformer block needs to know (derived from the Model's fields)."""

    num_heads: int
    head_dim: int
    num_kv_heads: int
    mlp_dim: int
    norm: str
    norm_eps: float
    mlp: str
    bias: bool
    dropout: float
    rope_base: float | None
    out_stddev: float
    implementation: str
    post_norm: bool = False


class Block(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)) [+ cross_attn(ln_cross(x), memory)] + mlp(ln_2(x)).
    Post-norm (BERT, the original Transformer): ln_2(y + mlp(y)) with y = ln_1(x + attn(x))."""

    spec: BlockSpec
    cross: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None,
        causal: bool,
        positions: jax.Array,
        memory: jax.Array | None = None,
        memory_mask: jax.Array | None = None,
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        s = self.spec
        drop = Dropout(s.dropout, deterministic=not train)

        def attention(rope_base, name):
            return MultiHeadAttention(
                s.num_heads,
                s.head_dim,
                s.num_kv_heads,
                s.bias,
                s.dropout,
                rope_base,
                s.out_stddev,
                s.implementation,
                name=name,
            )

        ln_1 = make_norm(s.norm, s.norm_eps, s.bias, name="ln_1")
        ln_2 = make_norm(s.norm, s.norm_eps, s.bias, name="ln_2")
        mlp = make_mlp(s.mlp, s.mlp_dim, s.bias, s.out_stddev, name="mlp")
        self_attention = attention(s.rope_base, "attn")
        if s.post_norm:
            h = self_attention(
                x, mask=mask, causal=causal, positions=positions, train=train, decode=decode
            )
            x = ln_1(x + drop(h))
            x = ln_2(x + drop(mlp(x)))
            return nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h = self_attention(
            ln_1(x), mask=mask, causal=causal, positions=positions, train=train, decode=decode
        )
        x = x + drop(h)
        if self.cross:
            h = make_norm(s.norm, s.norm_eps, s.bias, name="ln_cross")(x)
            h = attention(None, "cross_attn")(h, memory, mask=memory_mask, train=train)
            x = x + drop(h)
        x = x + drop(mlp(ln_2(x)))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Stack(nn.Module):
    """Blocks h_0 .. h_{n-1} and the final norm ln_f (the encoder_decoder kind's two halves)."""

    spec: BlockSpec
    num_layers: int
    cross: bool = False

    def setup(self):
        self.h = [Block(self.spec, self.cross) for _ in range(self.num_layers)]
        self.ln_f = make_norm(self.spec.norm, self.spec.norm_eps, self.spec.bias)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return _run_blocks(self.h, self.ln_f, x, **kwargs)


def _run_blocks(blocks, final_norm, x, **kwargs):
    for block in blocks:
        x = block(x, **kwargs)
    return final_norm(x)


class DecodePosition(nn.Module):
    """Positions of the tokens being consumed: 0..T-1, or, when decoding, offset by how many
    tokens the cache already holds (cache variable "index", a scalar)."""

    @nn.compact
    def __call__(self, length: int, decode: bool) -> jax.Array:
        offsets = jnp.arange(length, dtype=jnp.int32)[None]
        if not decode:
            return offsets
        created = not self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if created:
            return offsets
        start = index.value
        index.value = start + length
        return start + offsets


FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    kind=OneOf(*KINDS),
    vocab_size=Int(low=0),
    num_layers=Int(low=1),
    embed_dim=Int(low=1),
    num_heads=Int(low=1),
    num_kv_heads=Int(low=0),
    mlp_dim=Int(low=0),
    max_len=Int(low=1),
    dropout=Float(0, 1, high_open=True),
    norm=OneOf(*NORMS),
    norm_eps=Float(low=0, low_open=True),
    norm_position=OneOf(*NORM_POSITIONS),
    type_vocab_size=Int(low=0),
    mlp=OneOf(*MLPS),
    position=OneOf(*POSITIONS),
    rope_base=Float(low=0, low_open=True),
    num_outputs=Int(low=0),
    pooling=OneOf(*POOLINGS),
    target_vocab_size=Int(low=0),
    num_decoder_layers=Int(low=0),
    attention=OneOf(*IMPLEMENTATIONS),
    dtype=OneOf(*DTYPES),
)


class Model(nn.Module):
    kind: str = "decoder"
    vocab_size: int = 256
    num_layers: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    num_kv_heads: int = 0  # 0: num_heads; fewer: grouped-query attention
    mlp_dim: int = 0  # 0: 4 * embed_dim
    max_len: int = 256  # rows of the learned position table
    dropout: float = 0.0
    norm: str = "layer"  # "layer" | "rms"
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # "pre" (GPT-2, Llama) | "post" (BERT): see Block
    type_vocab_size: int = 0  # >0: token-type (segment) embeddings "wtt", as BERT's
    mlp: str = "gelu"  # "gelu" (tanh approximation) | "gelu_exact" (erf) | "swiglu"
    position: str = "learned"  # "learned" | "sinusoidal" | "rope" | "none"
    rope_base: float = 10000.0
    tie_embeddings: bool = True
    bias: bool = True
    num_outputs: int = 0  # encoder: >0 gives a classification head (see `pooling`)
    pooling: str = "mean"  # encoder head: "mean" | "cls" (per sequence) | "none" (per token)
    target_vocab_size: int = 0  # encoder_decoder: 0 shares the source vocabulary
    num_decoder_layers: int = 0  # encoder_decoder: 0 = num_layers
    attention: str = "auto"  # see dlx/layers/attention.py
    dtype: str = "float32"  # activations and matmuls: "float32" | "bfloat16" (params, norm
    # statistics, softmax and logits stay float32) | "float64" (a numerical reference; needs
    # jax_enable_x64 and float64 params)

    def __post_init__(self):
        schema.check_fields("transformer", self, FIELD_RULES)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"transformer: embed_dim {self.embed_dim} is not a multiple of "
                f"num_heads {self.num_heads}"
            )
        if self.num_heads % (self.num_kv_heads or self.num_heads):
            raise ConfigError(
                f"transformer: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.norm_position == "post" and self.kind == "encoder_decoder":
            raise ConfigError(
                "transformer: norm_position='post' is for the encoder and decoder kinds; the "
                "encoder_decoder kind is pre-norm"
            )
        if self.position == "rope" and (self.embed_dim // self.num_heads) % 2:
            raise ConfigError("transformer: rotary positions need an even head dimension")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError(
                "transformer: dtype 'float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (or run "
                "under `with jax.enable_x64(True):`)"
            )
        super().__post_init__()

    # ---- derived sizes ----
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.embed_dim

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    @property
    def output_vocab(self) -> int:
        return self.target_vocab_size or self.vocab_size

    def setup(self):
        residual_writes = self.num_layers + (
            self.decoder_layers if self.kind == "encoder_decoder" else 0
        )
        spec = BlockSpec(
            self.num_heads,
            self.head_dim,
            self.kv_heads,
            self.hidden_dim,
            self.norm,
            self.norm_eps,
            self.mlp,
            self.bias,
            self.dropout,
            self.rope_base if self.position == "rope" else None,
            INIT_STDDEV / math.sqrt(2 * residual_writes),
            self.attention,
            post_norm=self.norm_position == "post",
        )
        self.wte = _embedding(self.vocab_size, self.embed_dim)
        if self.position == "learned":
            self.wpe = LearnedPositions(self.max_len, self.embed_dim)
        if self.type_vocab_size:
            self.wtt = _embedding(self.type_vocab_size, self.embed_dim)
        if self.norm_position == "post":
            self.ln_embed = make_norm(self.norm, self.norm_eps, self.bias)
        self.drop = Dropout(self.dropout)
        if self.kind == "encoder_decoder":
            self.encoder = Stack(spec, self.num_layers)
            self.decoder = Stack(spec, self.decoder_layers, cross=True)
            if self.target_vocab_size:
                self.target_wte = _embedding(self.target_vocab_size, self.embed_dim)
        else:
            self.h = [Block(spec) for _ in range(self.num_layers)]
            # post-norm blocks end in a norm already
            self.ln_f = (
                make_norm(self.norm, self.norm_eps, self.bias)
                if self.norm_position == "pre"
                else _identity
            )
        if self.kind == "encoder" and self.num_outputs:
            self.classifier = Projection(self.num_outputs, ("embed",), ("classes",))
        elif not self.tie_embeddings:
            self.lm_head = Projection(self.output_vocab, ("embed",), ("vocab",), use_bias=False)
        if self.kind != "encoder":
            self.decode_position = DecodePosition()

    # ---- pieces ----
    def _embed(
        self,
        table: nn.Embed,
        tokens: jax.Array,
        positions: jax.Array,
        train: bool,
        token_types: jax.Array | None = None,
    ) -> jax.Array:
        if self.position == "learned" and tokens.shape[1] > self.max_len:
            raise ValueError(
                f"{tokens.shape[1]} positions but the learned position table has "
                f"max_len={self.max_len} rows"
            )
        x = table(tokens)
        if self.position == "learned":
            x = x + self.wpe(positions)
        elif self.position == "sinusoidal":  # the paper scales embeddings to the PE's size
            x = x * math.sqrt(self.embed_dim) + sinusoidal(positions, self.embed_dim)
        if self.type_vocab_size:  # BERT: segment A (type 0) unless told otherwise
            x = x + self.wtt(jnp.zeros_like(tokens) if token_types is None else token_types)
        elif token_types is not None:
            raise ValueError("token_types given but the model has type_vocab_size=0")
        if self.norm_position == "post":
            x = self.ln_embed(x)
        x = self.drop(x.astype(self.dtype), deterministic=not train)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))

    def _logits(self, x: jax.Array, table: nn.Embed) -> jax.Array:
        if self.tie_embeddings:  # x @ table.T without materialising the transpose
            logits = jax.lax.dot_general(
                x,
                table.embedding.astype(x.dtype),
                (((x.ndim - 1,), (1,)), ((), ())),
                preferred_element_type=accumulation_dtype(x.dtype),
            )
        else:
            logits = self.lm_head(x)
        logits = logits.astype(accumulation_dtype(x.dtype))
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))

    def _target_table(self) -> nn.Embed:
        return self.target_wte if self.target_vocab_size else self.wte

    # ---- entry points ----
    def __call__(
        self,
        tokens: jax.Array,
        targets_in: jax.Array | None = None,
        *,
        token_types: jax.Array | None = None,
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        if self.kind == "encoder_decoder":
            if targets_in is None:
                raise ValueError("an encoder_decoder transformer takes (inputs, targets_in)")
            return self.decode(
                self.encode(tokens, train=train), targets_in, train=train, decode=decode
            )
        if targets_in is not None:
            raise ValueError(f"a {self.kind} transformer takes one token array")
        if self.kind == "encoder":
            return self._encoder_outputs(tokens, train, token_types)
        positions = self.decode_position(tokens.shape[1], decode)
        x = self._embed(self.wte, tokens, positions, train, token_types)
        x = _run_blocks(
            self.h,
            self.ln_f,
            x,
            mask=None,
            causal=True,
            positions=positions,
            train=train,
            decode=decode,
        )
        return self._logits(x, self.wte)

    def hidden(
        self, tokens: jax.Array, *, token_types: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Encoder and decoder kinds: the last hidden states [B, T, embed] (after the final norm
        of pre-norm models), before any output head. The encoder masks padding (id 0)."""
        if self.kind == "encoder_decoder":
            raise ValueError("hidden() is for the encoder and decoder kinds; use encode()")
        positions = jnp.arange(tokens.shape[1])[None]
        x = self._embed(self.wte, tokens, positions, train, token_types)
        encoder = self.kind == "encoder"
        return _run_blocks(
            self.h,
            self.ln_f,
            x,
            mask=padding_mask(tokens, PAD_ID) if encoder else None,
            causal=not encoder,
            positions=positions,
            train=train,
        )

    def _encoder_outputs(
        self, tokens: jax.Array, train: bool, token_types: jax.Array | None
    ) -> jax.Array:
        x = self.hidden(tokens, token_types=token_types, train=train)
        if not self.num_outputs:
            return self._logits(x, self.wte)
        if self.pooling == "none":
            return self.classifier(x).astype(accumulation_dtype(x.dtype))
        if self.pooling == "cls":
            return self.classifier(x[:, 0]).astype(accumulation_dtype(x.dtype))
        real = (tokens != PAD_ID)[..., None].astype(x.dtype)
        pooled = (x * real).sum(1) / jnp.maximum(real.sum(1), 1.0)
        return self.classifier(pooled).astype(accumulation_dtype(x.dtype))

    def encode(self, inputs: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """encoder_decoder: {"encoded": [B, S, embed], "mask": [B, S] (True at real tokens)}."""
        positions = jnp.arange(inputs.shape[1])[None]
        x = self._embed(self.wte, inputs, positions, train)
        x = self.encoder(
            x, mask=padding_mask(inputs, PAD_ID), causal=False, positions=positions, train=train
        )
        return {"encoded": x, "mask": inputs != PAD_ID}

    def decode(
        self,
        memory: dict[str, jax.Array],
        targets_in: jax.Array,
        *,
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        """encoder_decoder: logits [B, T, target vocab] for targets_in given the memory."""
        positions = self.decode_position(targets_in.shape[1], decode)
        table = self._target_table()
        x = self._embed(table, targets_in, positions, train)
        x = self.decoder(
            x,
            mask=None,
            causal=True,
            positions=positions,
            memory=memory["encoded"],
            memory_mask=memory["mask"][:, None, None, :],
            train=train,
            decode=decode,
        )
        return self._logits(x, table)


def _identity(x: jax.Array) -> jax.Array:
    return x


def _embedding(vocab: int, features: int) -> nn.Embed:
    return nn.Embed(
        vocab,
        features,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(INIT_STDDEV), ("vocab", "embed")
        ),
    )


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------


def forward_flops_per_token(model: Model, seq_len: int, source_len: int | None = None) -> float:
    """Matmul FLOPs (2 per multiply-add) of one forward pass, per (target) token.

    Counts every weight matmul (embedding lookups excluded, the tied output projection
    included) plus attention scores q k^T and the weighted sum p v over the full length, the
    usual model-FLOPs convention (nanoGPT, PaLM). dlx's CPU attention skips 6/16 of a long
    causal score matrix (`dlx.layers.attention`), so XLA's count of a GPT step is ~2-4% lower.
    `source_len` (encoder_decoder): the input length per example, default seq_len; encoder work
    is spread over the target tokens.
    """
    d, heads, head_dim = model.embed_dim, model.num_heads, model.head_dim
    q_width, kv_width = heads * head_dim, model.kv_heads * head_dim
    mlp = (3 if model.mlp == "swiglu" else 2) * d * model.hidden_dim
    self_attention = d * (q_width + 2 * kv_width) + q_width * d
    scores = 4 * q_width  # per key: q.k (2 * q_width) and p * v (2 * q_width)

    def layer(length: int) -> float:
        return 2 * (self_attention + mlp) + scores * length

    if model.kind == "decoder":
        return model.num_layers * layer(seq_len) + 2 * d * model.vocab_size
    if model.kind == "encoder":
        per_token_head = model.pooling == "none" or not model.num_outputs
        outputs = model.num_outputs or model.vocab_size
        head = 2 * d * outputs / (1 if per_token_head else seq_len)
        return model.num_layers * layer(seq_len) + head
    source = seq_len if source_len is None else source_len
    cross_per_target = 2 * (d * q_width + q_width * d) + scores * source
    cross_kv_per_source = 2 * d * 2 * kv_width
    encoder_per_source = model.num_layers * layer(source)
    decoder_per_target = (
        model.decoder_layers * (layer(seq_len) + cross_per_target) + 2 * d * model.output_vocab
    )
    per_source = encoder_per_source + model.decoder_layers * cross_kv_per_source
    return decoder_per_target + per_source * source / seq_len


def train_flops_per_token(model: Model, seq_len: int, source_len: int | None = None) -> float:
    """Training FLOPs per token: forward + backward = 3 x forward (the backward pass does two
    matmuls per forward one: gradients w.r.t. activations and w.r.t. weights).

    For a GPT this is nanoGPT's / PaLM's 6 N + 12 L H Q T, with N the matmul weights (tied wte
    counted once, as the output projection; wpe, biases and norms left out), L layers, H heads,
    Q head dim, T context. Model FLOPs utilisation = tokens/s * this / peak FLOP/s.
    """
    return 3.0 * forward_flops_per_token(model, seq_len, source_len)
