"""Attention, positional encodings and norms: parity with PyTorch, masks, GQA, the KV cache."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlx.layers import linear, mlp, norms, positional
from dlx.layers.attention import (
    MultiHeadAttention,
    causal_mask,
    dot_product_attention,
    padding_mask,
)

IMPLEMENTATIONS = ["einsum", "jax"]


def _params(layer, *args, seed=0, std=0.2):
    """Random parameters of the layer's shapes without compiling its initializer."""
    abstract = nn.meta.unbox(jax.eval_shape(layer.init, jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, std, s.shape).astype(np.float32), abstract)


def _qkv(batch=2, q_len=5, kv_len=5, heads=4, kv_heads=4, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_len, heads, head_dim), np.float32)
    k = rng.standard_normal((batch, kv_len, kv_heads, head_dim), np.float32)
    v = rng.standard_normal((batch, kv_len, kv_heads, head_dim), np.float32)
    return q, k, v


def _torch_sdpa(q, k, v, **kwargs):
    to_bnth = lambda x: torch.from_numpy(x).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(to_bnth(q), to_bnth(k), to_bnth(v), **kwargs)
    return out.transpose(1, 2).numpy()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_causal_attention_matches_torch(implementation):
    q, k, v = _qkv()
    ours = dot_product_attention(q, k, v, causal_mask(5), implementation=implementation)
    np.testing.assert_allclose(ours, _torch_sdpa(q, k, v, is_causal=True), atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_padding_mask_attention_matches_torch(implementation):
    q, k, v = _qkv(q_len=3, kv_len=6)
    tokens = np.array([[5, 2, 7, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    mask = padding_mask(jnp.asarray(tokens))
    ours = dot_product_attention(q, k, v, mask, implementation=implementation)
    theirs = _torch_sdpa(q, k, v, attn_mask=torch.from_numpy(np.array(mask)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_grouped_query_attention_matches_torch(implementation):
    q, k, v = _qkv(heads=6, kv_heads=2)
    ours = dot_product_attention(q, k, v, causal_mask(5), implementation=implementation)
    np.testing.assert_allclose(
        ours, _torch_sdpa(q, k, v, is_causal=True, enable_gqa=True), atol=1e-5
    )


@pytest.mark.parametrize("length,kv_heads", [(64, 4), (128, 2)])
def test_causal_query_blocks_equal_the_full_causal_mask(length, kv_heads):
    q, k, v = _qkv(q_len=length, kv_len=length, kv_heads=kv_heads)
    g = np.random.default_rng(1).standard_normal(q.shape, np.float32)

    def loss(q, k, v, blocked):
        out = (
            dot_product_attention(q, k, v, causal=True, implementation="einsum")
            if blocked
            else dot_product_attention(q, k, v, causal_mask(length), implementation="einsum")
        )
        return jnp.vdot(out, g)

    for argnums in ((), (0, 1, 2)):  # outputs, then gradients
        f = loss if not argnums else jax.grad(loss, argnums=argnums)
        f = jax.jit(f, static_argnums=3)  # eagerly, the per-block ops dispatch one by one
        blocked, full = f(q, k, v, True), f(q, k, v, False)
        for b, r in zip(jax.tree.leaves(blocked), jax.tree.leaves(full)):
            np.testing.assert_allclose(b, r, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, causal=True, implementation="jax"),
        _torch_sdpa(
            q, np.repeat(k, 4 // kv_heads, 2), np.repeat(v, 4 // kv_heads, 2), is_causal=True
        ),
        atol=1e-5,
    )


def test_causal_query_blocks_with_dropout_never_see_the_future():
    q, k, v = _qkv(q_len=64, kv_len=64)
    rng = jax.random.key(3)
    attend = functools.partial(
        dot_product_attention, causal=True, dropout_rate=0.3, implementation="einsum"
    )
    out = attend(q, k, v, dropout_rng=rng)
    k2, v2 = k.copy(), v.copy()
    k2[:, 40:], v2[:, 40:] = 5.0, -5.0  # change every key and value from position 40 on
    changed = attend(q, k2, v2, dropout_rng=rng)
    np.testing.assert_allclose(changed[:, :40], out[:, :40], atol=1e-6)
    assert not np.allclose(changed[:, 40:], out[:, 40:], atol=1e-3)
    assert not np.allclose(attend(q, k, v, dropout_rng=jax.random.key(4)), out, atol=1e-3)


def test_per_head_masks_with_grouped_heads_agree_across_implementations():
    q, k, v = _qkv(heads=6, kv_heads=2, q_len=4, kv_len=7)
    mask = jax.random.bernoulli(jax.random.key(0), 0.6, (2, 6, 4, 7)).at[..., 0].set(True)
    einsum = dot_product_attention(q, k, v, mask, implementation="einsum")
    np.testing.assert_allclose(
        einsum, dot_product_attention(q, k, v, mask, implementation="jax"), atol=1e-5
    )
    repeated = [np.repeat(x, 3, axis=2) for x in (k, v)]  # heads n reads kv head n // 3
    theirs = _torch_sdpa(q, *repeated, attn_mask=torch.from_numpy(np.array(mask)))
    np.testing.assert_allclose(einsum, theirs, atol=1e-5)


def test_a_query_with_every_key_masked_stays_finite():
    q, k, v = _qkv()
    mask = jnp.zeros((2, 1, 5, 5), bool).at[0].set(True)
    out = dot_product_attention(q, k, v, mask, implementation="einsum")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[1], np.broadcast_to(v[1].mean(0), (5, 4, 8)), atol=1e-6)


def _copy_torch_mha(torch_mha: torch.nn.MultiheadAttention, heads: int, cross: bool) -> dict:
    embed = torch_mha.embed_dim
    head_dim = embed // heads
    w = torch_mha.in_proj_weight.detach().numpy()  # [3E, E]: rows q, k, v; out = x @ w.T
    b = torch_mha.in_proj_bias.detach().numpy()
    proj = {
        "kernel": torch_mha.out_proj.weight.detach().numpy().T.reshape(heads, head_dim, embed),
        "bias": torch_mha.out_proj.bias.detach().numpy(),
    }
    if not cross:
        return {
            "qkv": {
                "kernel": w.T.reshape(embed, 3, heads, head_dim),
                "bias": b.reshape(3, heads, head_dim),
            },
            "proj": proj,
        }
    return {
        "query": {
            "kernel": w[:embed].T.reshape(embed, heads, head_dim),
            "bias": b[:embed].reshape(heads, head_dim),
        },
        "kv": {
            "kernel": w[embed:].T.reshape(embed, 2, heads, head_dim),
            "bias": b[embed:].reshape(2, heads, head_dim),
        },
        "proj": proj,
    }


@pytest.mark.parametrize("cross", [False, True], ids=["self_causal", "cross_padded"])
def test_multi_head_attention_with_copied_weights_matches_torch(cross):
    torch.manual_seed(0)
    embed, heads = 16, 4
    torch_mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True)
    torch.nn.init.normal_(torch_mha.in_proj_bias)
    torch.nn.init.normal_(torch_mha.out_proj.bias)
    x = torch.randn(2, 5, embed)
    memory = torch.randn(2, 7, embed) if cross else x
    layer = MultiHeadAttention(heads, embed // heads)
    params = _copy_torch_mha(torch_mha, heads, cross)
    with torch.no_grad():
        if cross:
            pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])  # torch: True = ignore
            theirs, _ = torch_mha(x, memory, memory, key_padding_mask=pad, need_weights=False)
            ours = layer.apply(
                {"params": params}, x.numpy(), memory.numpy(), mask=~pad.numpy()[:, None, None, :]
            )
        else:
            future = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # torch: True = ignore
            theirs, _ = torch_mha(x, x, x, attn_mask=future, need_weights=False)
            ours = layer.apply({"params": params}, x.numpy(), causal=True)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def test_changing_padded_keys_does_not_change_the_outputs():
    layer = MultiHeadAttention(num_heads=2, head_dim=4)
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    tokens = jnp.array([[3, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    variables = {"params": _params(layer, x)}
    out = layer.apply(variables, x, mask=padding_mask(tokens))
    changed = x.at[0, 3:].set(100.0)
    out_changed = layer.apply(variables, changed, mask=padding_mask(tokens))
    np.testing.assert_allclose(out_changed[0, :3], out[0, :3], atol=1e-6)
    np.testing.assert_array_equal(out_changed[1], out[1])
    assert not np.allclose(out_changed[0, 3:], out[0, 3:])


@pytest.mark.parametrize("kv_heads, rope", [(0, None), (2, 10000.0)], ids=["mha", "gqa_rope"])
def test_kv_cache_prefill_then_single_tokens_matches_a_full_causal_pass(kv_heads, rope):
    layer = MultiHeadAttention(num_heads=4, head_dim=4, num_kv_heads=kv_heads, rope_base=rope)
    x = jax.random.normal(jax.random.key(0), (2, 7, 16))
    params = _params(layer, x)
    full = layer.apply({"params": params}, x, causal=True)
    step = jax.jit(functools.partial(layer.apply, causal=True, decode=True, mutable=["cache"]))
    _, state = step({"params": params}, jnp.zeros((2, 10, 16)))
    assert state["cache"]["cached_key"].shape == (2, 10, kv_heads or 4, 4)
    assert int(state["cache"]["cache_index"]) == 0
    outputs, cache, start = [], state["cache"], 0
    for size in (3, 1, 1, 1, 1):  # a prefill, then single tokens
        positions = (start + jnp.arange(size))[None]
        out, state = step(
            {"params": params, "cache": cache}, x[:, start : start + size], positions=positions
        )
        outputs.append(out)
        cache, start = state["cache"], start + size
    assert int(cache["cache_index"]) == 7
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_every_attention_parameter_has_logical_names():
    for layer, args in [
        (MultiHeadAttention(4, 8), ()),
        (MultiHeadAttention(4, 8, num_kv_heads=2, use_bias=False), ()),
        (MultiHeadAttention(4, 8), (jnp.zeros((1, 3, 32)),)),
    ]:
        abstract = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 5, 32)), *args)
        names = nn.get_partition_spec(abstract["params"])
        shapes = nn.meta.unbox(abstract["params"])
        for spec, leaf in zip(
            jax.tree.leaves(names, is_leaf=lambda s: isinstance(s, tuple)), jax.tree.leaves(shapes)
        ):
            assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec)
    grouped = jax.eval_shape(
        MultiHeadAttention(4, 8, num_kv_heads=2).init, jax.random.key(0), jnp.zeros((1, 5, 32))
    )
    specs = nn.get_partition_spec(grouped["params"])
    assert tuple(specs["query"]["kernel"]) == ("embed", "heads", "head_dim")
    assert tuple(specs["kv"]["kernel"]) == ("embed", "qkv", "kv_heads", "head_dim")
    assert tuple(specs["proj"]["kernel"]) == ("heads", "head_dim", "embed")


# ---- positional encodings ----


def test_sinusoidal_encoding_values():
    table = positional.sinusoidal(jnp.arange(6)[None], 8)[0]
    p = np.arange(6)[:, None]
    for i in range(4):
        angle = p[:, 0] / 10000 ** (2 * i / 8)
        np.testing.assert_allclose(table[:, 2 * i], np.sin(angle), atol=1e-6)
        np.testing.assert_allclose(table[:, 2 * i + 1], np.cos(angle), atol=1e-6)


def test_rotary_scores_depend_only_on_the_distance():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 8)), jnp.float32)

    def score(q_pos, k_pos):
        rq = positional.rotary(q, jnp.array([[q_pos]]))
        rk = positional.rotary(k, jnp.array([[k_pos]]))
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    # position 0 is the identity; rotations keep the norm
    np.testing.assert_allclose(positional.rotary(q, jnp.array([[0]])), q)
    assert float(jnp.linalg.norm(positional.rotary(q, jnp.array([[7]])))) == pytest.approx(
        float(jnp.linalg.norm(q)), rel=1e-6
    )


def test_rotary_matches_the_rotate_half_formula():
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    pos = np.array([[0, 1, 5]])
    inv = 10000.0 ** (-np.arange(2) / 2)
    cos = np.cos(pos[..., None] * inv)[:, :, None, :]
    sin = np.sin(pos[..., None] * inv)[:, :, None, :]
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    x_np = np.asarray(x)
    rotate_half = np.concatenate([-x_np[..., 2:], x_np[..., :2]], -1)
    np.testing.assert_allclose(
        positional.rotary(x, jnp.asarray(pos)), x_np * cos + rotate_half * sin, atol=1e-6
    )


# ---- norms and MLP blocks ----


def test_layer_norm_and_rms_norm_match_torch():
    x = np.random.default_rng(0).standard_normal((3, 4, 10)).astype(np.float32) * 3 + 1
    scale = np.linspace(0.5, 1.5, 10, dtype=np.float32)
    bias = np.linspace(-1, 1, 10, dtype=np.float32)
    ours = norms.LayerNorm(1e-5).apply({"params": {"scale": scale, "bias": bias}}, x)
    theirs = F.layer_norm(
        torch.from_numpy(x), (10,), torch.from_numpy(scale), torch.from_numpy(bias), eps=1e-5
    )
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    ours = norms.RMSNorm(1e-6).apply({"params": {"scale": scale}}, x)
    theirs = F.rms_norm(torch.from_numpy(x), (10,), torch.from_numpy(scale), eps=1e-6)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)


def test_gelu_mlp_and_swiglu_match_torch():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    t = torch.from_numpy(np.asarray(x))
    gelu = mlp.GeluMLP(hidden=16)
    p = _params(gelu, x)
    w = {k: {n: torch.from_numpy(np.asarray(a)) for n, a in v.items()} for k, v in p.items()}
    hidden = F.gelu(t @ w["fc"]["kernel"] + w["fc"]["bias"], approximate="tanh")
    theirs = hidden @ w["proj"]["kernel"] + w["proj"]["bias"]
    np.testing.assert_allclose(gelu.apply({"params": p}, x), theirs.numpy(), atol=1e-6)

    swiglu = mlp.SwiGLU(hidden=16)
    p = _params(swiglu, x)
    assert set(p) == {"gate", "up", "down"} and all(set(v) == {"kernel"} for v in p.values())
    w = {k: torch.from_numpy(np.asarray(v["kernel"])) for k, v in p.items()}
    theirs = (F.silu(t @ w["gate"]) * (t @ w["up"])) @ w["down"]
    np.testing.assert_allclose(swiglu.apply({"params": p}, x), theirs.numpy(), atol=1e-6)


def test_projection_contracts_several_axes():
    layer = linear.Projection(5, ("heads", "head_dim"), ("embed",))
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 6))
    p = nn.meta.unbox(jax.jit(layer.init)(jax.random.key(1), x))["params"]
    assert p["kernel"].shape == (4, 6, 5)
    expected = x.reshape(2, 3, 24) @ p["kernel"].reshape(24, 5) + p["bias"]
    np.testing.assert_allclose(layer.apply({"params": p}, x), expected, atol=1e-5)
    assert math.isclose(float(p["kernel"].std()), 0.02, rel_tol=0.5)
