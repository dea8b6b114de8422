"""Recurrent layers and models: parity with torch.nn.RNN/LSTM/GRU (values and gradients, full
and packed variable-length batches), padding masks, parameter counts and logical axis names,
cached decoding against the full forward pass, and a tiny LSTM language model that learns."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from jax.sharding import PartitionSpec as P

from dlx.errors import ConfigError
from dlx.layers import recurrent as rnn
from dlx.models import get_model
from dlx.models.seq2seq import Model as Seq2Seq

TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
B, T, D, H = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 3])


def _torch_finals(cell, state, num_layers):
    """torch's h_n (and c_n) [layers * 2, B, H] -> our finals: per layer (forward, backward)."""

    def carry(index):
        if cell == "lstm":
            return (state[0][index].detach().numpy(), state[1][index].detach().numpy())
        return state[index].detach().numpy()

    return [(carry(2 * i), carry(2 * i + 1)) for i in range(num_layers)]


def _torch_run(reference, x, target, lengths=None):
    """torch outputs, final state and parameter gradients, packed when `lengths` are given."""
    reference.zero_grad()
    xt = torch.from_numpy(x)
    if lengths is None:
        out, state = reference(xt)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        out, state = reference(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    (out * torch.from_numpy(target)).sum().backward()
    grads = {k: p.grad.numpy().copy() for k, p in reference.named_parameters()}
    return out.detach().numpy(), state, grads


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_stack_matches_torch_values_and_gradients(cell):
    torch.manual_seed(0)
    reference = TORCH_CELLS[cell](D, H, num_layers=2, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    mask = np.arange(T)[None] < LENGTHS[:, None]
    # loud garbage in the padding: torch's packed run never sees it, so ours must not either
    x_padded = np.where(mask[..., None], x, 100.0).astype(np.float32)
    target = rng.standard_normal((B, T, 2 * H)).astype(np.float32)

    stack = rnn.RecurrentStack(cell, H, num_layers=2, bidirectional=True, unroll=2)
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = rnn.params_from_torch(state_dict, cell, num_layers=2, bidirectional=True)
    created = jax.eval_shape(stack.init, jax.random.key(0), jnp.asarray(x))["params"]
    assert jax.tree.map(jnp.shape, nn.meta.unbox(created)) == jax.tree.map(jnp.shape, params)

    @jax.jit
    def run(params):
        def loss(params, x, mask):
            out, finals = stack.apply({"params": params}, x, mask)
            return (out * target).sum(), (out, finals)

        full = jax.grad(loss, has_aux=True)(params, x, None)  # the unmasked scan
        packed = jax.grad(loss, has_aux=True)(params, x_padded, mask)
        return full, packed

    for (grads, (out, finals)), lengths in zip(run(params), [None, LENGTHS]):
        out_t, state_t, grads_t = _torch_run(reference, x, target, lengths)
        np.testing.assert_allclose(out, out_t, atol=1e-5)
        for ours, theirs in zip(
            jax.tree.leaves(finals), jax.tree.leaves(_torch_finals(cell, state_t, 2))
        ):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
        for ours, theirs in zip(
            jax.tree.leaves(grads), jax.tree.leaves(rnn.params_from_torch(grads_t, cell, 2, True))
        ):
            np.testing.assert_allclose(ours, theirs, atol=2e-5)
        if lengths is not None:
            assert np.all(np.asarray(out)[~mask] == 0)


V, E = 11, 4


def _gates(g, inputs):
    """Parameters of one direction of one layer with g gates: two kernels and torch's two
    biases."""
    return g * H * (inputs + H + 2)


def _assert_named(abstract_params):
    specs = nn.get_partition_spec(abstract_params)
    leaves = jax.tree.leaves(nn.meta.unbox(abstract_params))
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))
    assert len(spec_leaves) == len(leaves)
    for spec, leaf in zip(spec_leaves, leaves):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), spec
        assert len(set(spec)) == len(spec), spec  # a name twice would map one mesh axis twice


def _init(model, key, *inputs):
    """The model's variables, without compiling its forward pass (only the initializers run)."""
    return model.lazy_init(key, *(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs))


def _count(variables):
    return sum(p.size for p in jax.tree.leaves(nn.meta.unbox(variables["params"])))


def _tileable(tree, batch=2):
    """The contract: batch on axis 0 of every leaf but scalars (beam search tiles them)."""
    for leaf in jax.tree.leaves(tree):
        assert leaf.ndim == 0 or leaf.shape[0] == batch, leaf.shape


def test_classifier_counts_names_and_pools_the_last_real_state():
    model = get_model(
        "recurrent",
        cell="lstm",
        vocab_size=V,
        embed_dim=E,
        hidden_dim=H,
        num_layers=2,
        bidirectional=True,
        num_outputs=3,
    )
    tokens = jnp.array([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]], jnp.int32)
    variables = _init(model, jax.random.key(0), tokens)
    assert _count(variables) == (V * E + 2 * _gates(4, E) + 2 * _gates(4, 2 * H) + (2 * H * 3 + 3))
    _assert_named(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])
    apply = jax.jit(model.apply)
    logits = apply(variables, tokens)
    assert logits.shape == (3, 3) and logits.dtype == jnp.float32
    longer = jnp.pad(tokens, ((0, 0), (0, 4)))  # more padding: the same pooled states
    np.testing.assert_allclose(apply(variables, longer), logits, atol=1e-6)
    changed = tokens.at[0, 1].set(9)  # a real token does matter
    assert not np.allclose(apply(variables, changed)[0], logits[0])


def test_gate_axes_are_named_for_the_sharding_rules():
    model = get_model("recurrent", cell="gru", vocab_size=V, embed_dim=E, hidden_dim=H)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    specs = nn.get_partition_spec(abstract["params"])
    assert specs["rnn"]["layer_0"] == {
        "input_kernel": P("embed", "rnn_gates"),
        "recurrent_kernel": P("rnn_hidden", "rnn_gates"),
        "input_bias": P("rnn_gates"),
        "recurrent_bias": P("rnn_gates"),
    }
    assert specs["embed"]["embedding"] == P("vocab", "embed")
    assert specs["head"] == {"kernel": P("embed", "vocab"), "bias": P("vocab")}


# language models: kwargs, parameters by hand
LM_CASES = [
    (
        dict(cell="lstm", num_layers=2, dropout=0.5),
        V * E + _gates(4, E) + _gates(4, H) + (H * V + V),
    ),
    (dict(cell="gru", num_layers=1), V * E + _gates(3, E) + (H * V + V)),
    (dict(cell="rnn", num_layers=2), V * E + _gates(1, E) + _gates(1, H) + (H * V + V)),
]


@pytest.mark.parametrize("kwargs, expected", LM_CASES, ids=["lstm", "gru", "rnn"])
def test_language_model_counts_causality_and_cached_decoding(kwargs, expected):
    model = get_model("recurrent", vocab_size=V, embed_dim=E, hidden_dim=H, **kwargs)
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 1, V)
    variables = _init(model, jax.random.key(0), tokens)
    assert _count(variables) == expected
    _assert_named(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])
    params = {"params": variables["params"]}
    apply = jax.jit(model.apply, static_argnames="train")
    full = apply(params, tokens)
    assert full.shape == (2, 7, V) and full.dtype == jnp.float32
    later = apply(params, tokens.at[:, 4:].set(1))  # the future does not change the past
    np.testing.assert_array_equal(full[:, :4], later[:, :4])
    assert not np.allclose(full[:, 4], later[:, 4])
    if model.dropout:  # dropout (between layers) only in training
        train = apply(params, tokens, train=True, rngs={"dropout": jax.random.key(2)})
        assert not np.allclose(train, full)

    step = jax.jit(functools.partial(model.apply, decode=True, mutable=["cache"]))
    _, cache = step(params, jnp.zeros((2, 12), jnp.int32))  # only creates the cache
    _tileable(cache)
    assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(cache))
    prefill, cache = step({**params, **cache}, tokens[:, :3])
    steps = [prefill]
    for t in range(3, 7):
        logits, cache = step({**params, **cache}, tokens[:, t : t + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


S2S = dict(vocab_size=V, target_vocab_size=7, embed_dim=E, hidden_dim=H)
_S2S_COMMON = V * E + 7 * E + (H * 7 + 7)  # two embeddings and the output layer
S2S_CASES = [
    # bidirectional encoder (width 2H) and its bridge 2H -> H; attention dim 5: keys 2H x 5,
    # query H x 5 + 5, score 5; decoder GRU input [embedding; context] = E + 2H; combine
    # [context; h] = 3H -> H
    (
        {**S2S, "attention": "bahdanau", "attention_dim": 5},
        _S2S_COMMON
        + 2 * _gates(3, E)
        + (2 * H * H + H)
        + (2 * H * 5)
        + (H * 5 + 5 + 5)
        + _gates(3, E + 2 * H)
        + (3 * H * H + H),
    ),
    # Luong general: keys 2H x H; the decoder's input is the embedding alone
    (
        {**S2S, "attention": "luong"},
        _S2S_COMMON
        + 2 * _gates(3, E)
        + (2 * H * H + H)
        + 2 * H * H
        + _gates(3, E)
        + (3 * H * H + H),
    ),
    # Luong dot, one-way encoder (width H), two layers each, input feeding (decoder input E + H)
    (
        {
            **S2S,
            "attention": "luong",
            "luong_score": "dot",
            "bidirectional": False,
            "num_layers": 2,
            "input_feeding": True,
            "dropout": 0.2,
        },
        _S2S_COMMON
        + _gates(3, E)
        + _gates(3, H)
        + (H * H + H)
        + _gates(3, E + H)
        + _gates(3, H)
        + (2 * H * H + H),
    ),
]


@pytest.mark.parametrize(
    "kwargs, expected", S2S_CASES, ids=["bahdanau", "luong-general", "luong-dot-feeding"]
)
def test_seq2seq_counts_masks_and_cached_decoding(kwargs, expected):
    model = get_model("seq2seq", **kwargs)
    src = jnp.array([[3, 4, 5, 0], [1, 2, 0, 0]], jnp.int32)
    tgt = jnp.array([[1, 2, 3, 4, 5], [4, 5, 6, 0, 0]], jnp.int32)
    variables = _init(model, jax.random.key(0), src, tgt)
    assert _count(variables) == expected
    _assert_named(jax.eval_shape(model.init, jax.random.key(0), src, tgt)["params"])
    params = {"params": variables["params"]}
    encode = jax.jit(functools.partial(model.apply, method=Seq2Seq.encode))
    decode = jax.jit(functools.partial(model.apply, method=Seq2Seq.decode))
    memory = encode(params, src)
    _tileable(memory)
    forced = decode(params, memory, tgt)
    assert forced.shape == (2, 5, 7) and forced.dtype == jnp.float32
    if model.attention == "bahdanau":  # (once: the variants share the encoder) more source
        # padding changes no encoder state
        longer = encode(params, jnp.pad(src, ((0, 0), (0, 3))))
        np.testing.assert_allclose(longer["values"][:, :4], memory["values"], atol=1e-6)
        np.testing.assert_allclose(longer["initial"], memory["initial"], atol=1e-6)
    # the attention never reads what the memory holds at padded source positions
    noisy = {
        **memory,
        **{k: jnp.where(memory["mask"][..., None], memory[k], 1e3) for k in ("values", "keys")},
    }
    np.testing.assert_allclose(decode(params, noisy, tgt), forced, atol=1e-5)

    step = jax.jit(
        functools.partial(model.apply, decode=True, method=Seq2Seq.decode, mutable=["cache"])
    )
    _, cache = step(params, memory, jnp.zeros((2, 9), jnp.int32))  # only creates the cache
    _tileable(cache)
    steps = []
    for t in range(tgt.shape[1]):
        logits, cache = step({**params, **cache}, memory, tgt[:, t : t + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), forced, atol=1e-5)
    if model.input_feeding:  # the most cache leaves: a beam of 3 per example, tiled as
        # decoding.beam_search does, gives each beam its example's logits
        tile = lambda x: jnp.repeat(x, 3, axis=0) if x.ndim else x
        beams, _ = step(
            {**params, **jax.tree.map(tile, cache)},
            jax.tree.map(tile, memory),
            tgt[:, :1].repeat(3, axis=0),
        )
        single, _ = step({**params, **cache}, memory, tgt[:, :1])
        np.testing.assert_allclose(beams[::3], single, atol=1e-6)
    if model.dropout:  # dropout (inside the decoder's scan here) only in training
        rngs = {"dropout": jax.random.key(1)}
        train = jax.jit(functools.partial(model.apply, train=True))(params, src, tgt, rngs=rngs)
        assert not np.allclose(train, forced)


def test_tiny_lstm_language_model_learns_a_repeating_pattern():
    model = get_model("recurrent", cell="lstm", vocab_size=8, embed_dim=8, hidden_dim=16)
    pattern = jnp.array([1, 2, 3, 4, 5, 3, 2, 7] * 3, jnp.int32)
    batch = jnp.stack([jnp.roll(pattern, -k) for k in range(4)])
    inputs, targets = batch[:, :-1], batch[:, 1:]
    params = _init(model, jax.random.key(0), inputs)["params"]
    tx = optax.adam(1e-2)

    def loss_fn(params):
        logits = model.apply({"params": params}, inputs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), length=100)
        return losses, loss_fn(params)

    losses, final = train(params)
    assert float(final) < 0.1 * float(losses[0])


def test_bad_configurations_are_config_errors():
    with pytest.raises(ConfigError, match="cell must be one of"):
        get_model("recurrent", cell="lsmt")
    with pytest.raises(ConfigError, match="only be a classifier"):
        get_model("recurrent", bidirectional=True)
    with pytest.raises(ConfigError, match="Luong option"):
        get_model("seq2seq", attention="bahdanau", input_feeding=True)
    with pytest.raises(ConfigError, match="luong_score='dot'"):
        get_model("seq2seq", attention="luong", luong_score="dot", bidirectional=True)
