"""The Transformer model: parameter counts and names, parity with Hugging Face GPT-2 and Llama,
causal and padding masks, sharded execution, and the FLOPs formula against XLA."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlx.errors import ConfigError
from dlx.models import get_model
from dlx.models.transformer import Model, forward_flops_per_token, train_flops_per_token
from dlx.train.sharding import logical_shardings

V, L, D, N, T = 64, 2, 32, 4, 16  # vocab, layers, width, heads, max_len
HD = D // N
LLAMA = dict(
    norm="rms",
    mlp="swiglu",
    position="rope",
    num_kv_heads=2,
    bias=False,
    tie_embeddings=False,
    mlp_dim=48,
)


def _ln(bias=True):
    return 2 * D if bias else D


def _gpt2_block(m=4 * D):
    return _ln() + (D * 3 * D + 3 * D) + (D * D + D) + _ln() + (D * m + m) + (m * D + D)


def _cross(kv_heads=N):
    return _ln() + (D * D + D) + (D * 2 * kv_heads * HD + 2 * kv_heads * HD) + (D * D + D)


# (fields, expected parameter count worked out by hand)
CASES = {
    "gpt2": (dict(), V * D + T * D + L * _gpt2_block() + _ln()),
    "llama": (LLAMA, V * D + L * (D + D * D + D * 2 * 2 * HD + D * D + D + 3 * D * 48) + D + D * V),
    "gqa_layer_norm_bias": (
        dict(num_kv_heads=2),
        V * D
        + T * D
        + _ln()
        + L
        * (
            _ln()
            + (D * D + D)
            + (D * 2 * 2 * HD + 2 * 2 * HD)
            + (D * D + D)
            + _ln()
            + (D * 4 * D + 4 * D)
            + (4 * D * D + D)
        ),
    ),
    "sinusoidal_untied": (
        dict(position="sinusoidal", tie_embeddings=False),
        V * D + L * _gpt2_block() + _ln() + D * V,
    ),
    "encoder_tokens": (dict(kind="encoder"), V * D + T * D + L * _gpt2_block() + _ln()),
    "encoder_classifier": (
        dict(kind="encoder", num_outputs=3),
        V * D + T * D + L * _gpt2_block() + _ln() + D * 3 + 3,
    ),
    "encoder_decoder": (
        dict(kind="encoder_decoder", target_vocab_size=40, num_decoder_layers=3),
        V * D + 40 * D + T * D + L * _gpt2_block() + _ln() + 3 * (_gpt2_block() + _cross()) + _ln(),
    ),
}


def _model(**fields):
    return Model(
        **{**dict(vocab_size=V, num_layers=L, embed_dim=D, num_heads=N, max_len=T), **fields}
    )


def _variables(model, *args, seed=0, std=0.2):
    """Random parameters of the model's shapes without compiling its initializer (which costs
    seconds on a busy 2-core machine); N(0, std) everywhere, norm scales included."""
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, std, s.shape).astype(np.float32), abstract)


def _args(model, batch=2, length=8, seed=0):
    tokens = jax.random.randint(jax.random.key(seed), (batch, length), 1, V)
    return (tokens, tokens[:, ::-1] % 40) if model.kind == "encoder_decoder" else (tokens,)


@pytest.mark.parametrize("case", CASES)
def test_parameter_counts_shapes_and_logical_names(case):
    fields, expected_count = CASES[case]
    model = _model(**fields)
    args = _args(model)
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
    shapes = nn.meta.unbox(abstract["params"])
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected_count
    specs = jax.tree.leaves(
        nn.get_partition_spec(abstract["params"]), is_leaf=lambda s: isinstance(s, P)
    )
    leaves = jax.tree.leaves(shapes)
    assert len(specs) == len(leaves)
    for spec, leaf in zip(specs, leaves):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (spec, leaf)
    out = jax.eval_shape(model.apply, nn.meta.unbox(abstract), *args)
    batch, length = args[-1].shape
    width = {"encoder_classifier": None, "encoder_decoder": 40}.get(case, V)
    assert out.shape == ((batch, 3) if width is None else (batch, length, width))
    assert out.dtype == jnp.float32


def test_logical_names_of_the_gpt2_layout():
    abstract = jax.eval_shape(_model().init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    specs = nn.get_partition_spec(abstract["params"])
    block = specs["h_0"]
    assert specs["wte"]["embedding"] == P("vocab", "embed")
    assert block["attn"]["qkv"]["kernel"] == P("embed", "qkv", "heads", "head_dim")
    assert block["attn"]["proj"]["kernel"] == P("heads", "head_dim", "embed")
    assert block["mlp"]["fc"]["kernel"] == P("embed", "mlp")
    assert block["mlp"]["proj"]["kernel"] == P("mlp", "embed")
    assert set(specs) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    assert set(block) == {"ln_1", "attn", "ln_2", "mlp"}


def test_model_is_found_by_name_and_bad_fields_fail_clearly():
    assert isinstance(get_model("transformer", kind="encoder"), Model)
    with pytest.raises(ConfigError, match="norm"):
        _model(norm="batch")
    with pytest.raises(ConfigError, match="num_kv_heads"):
        _model(num_kv_heads=3)
    with pytest.raises(ConfigError, match="dtype='float16'.*bfloat16"):
        _model(dtype="float16")
    with pytest.raises(ConfigError, match="float64.*JAX_ENABLE_X64"):
        _model(dtype="float64")  # would silently compute in float32
    with pytest.raises(ValueError, match="max_len"):
        _model().init(jax.random.key(0), jnp.ones((1, T + 1), jnp.int32))


# ---- parity with Hugging Face (random-init models built from configs, offline) ----


def _hf():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    torch.manual_seed(0)
    return torch, transformers


def _randomize(torch, module):
    with torch.no_grad():  # non-trivial biases and norm scales, so their mapping is checked too
        for p in module.parameters():
            p.normal_(0.0, 0.2)


def test_gpt2_decoder_matches_hugging_face_gpt2():
    torch, transformers = _hf()
    config = transformers.GPT2Config(
        vocab_size=V,
        n_positions=T,
        n_embd=D,
        n_layer=L,
        n_head=N,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    _randomize(torch, hf)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = {
        "wte": {"embedding": sd["transformer.wte.weight"]},
        "wpe": {"embedding": sd["transformer.wpe.weight"]},
        "ln_f": {"scale": sd["transformer.ln_f.weight"], "bias": sd["transformer.ln_f.bias"]},
    }
    for i in range(L):
        w = lambda name: sd[f"transformer.h.{i}.{name}"]  # noqa: B023, E731
        params[f"h_{i}"] = {
            "ln_1": {"scale": w("ln_1.weight"), "bias": w("ln_1.bias")},
            "attn": {
                "qkv": {
                    "kernel": w("attn.c_attn.weight").reshape(D, 3, N, HD),
                    "bias": w("attn.c_attn.bias").reshape(3, N, HD),
                },
                "proj": {
                    "kernel": w("attn.c_proj.weight").reshape(N, HD, D),
                    "bias": w("attn.c_proj.bias"),
                },
            },
            "ln_2": {"scale": w("ln_2.weight"), "bias": w("ln_2.bias")},
            "mlp": {
                "fc": {"kernel": w("mlp.c_fc.weight"), "bias": w("mlp.c_fc.bias")},
                "proj": {"kernel": w("mlp.c_proj.weight"), "bias": w("mlp.c_proj.bias")},
            },
        }
    tokens = np.random.default_rng(0).integers(0, V, (2, T))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens)).logits.numpy()
    model = _model()
    expected_tree = jax.tree.structure(
        nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens)["params"])
    )
    assert jax.tree.structure(params) == expected_tree
    ours = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_llama_style_decoder_matches_hugging_face_llama():
    torch, transformers = _hf()
    config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=48,
        num_hidden_layers=L,
        num_attention_heads=N,
        num_key_value_heads=2,
        max_position_embeddings=T,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    _randomize(torch, hf)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = {
        "wte": {"embedding": sd["model.embed_tokens.weight"]},
        "ln_f": {"scale": sd["model.norm.weight"]},
        "lm_head": {"kernel": sd["lm_head.weight"].T},
    }
    for i in range(L):
        w = lambda name: sd[f"model.layers.{i}.{name}"]  # noqa: B023, E731
        kv = np.stack(
            [
                w("self_attn.k_proj.weight").T.reshape(D, 2, HD),
                w("self_attn.v_proj.weight").T.reshape(D, 2, HD),
            ],
            axis=1,
        )
        params[f"h_{i}"] = {
            "ln_1": {"scale": w("input_layernorm.weight")},
            "attn": {
                "query": {"kernel": w("self_attn.q_proj.weight").T.reshape(D, N, HD)},
                "kv": {"kernel": kv},
                "proj": {"kernel": w("self_attn.o_proj.weight").T.reshape(N, HD, D)},
            },
            "ln_2": {"scale": w("post_attention_layernorm.weight")},
            "mlp": {
                "gate": {"kernel": w("mlp.gate_proj.weight").T},
                "up": {"kernel": w("mlp.up_proj.weight").T},
                "down": {"kernel": w("mlp.down_proj.weight").T},
            },
        }
    tokens = np.random.default_rng(0).integers(0, V, (2, T))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens)).logits.numpy()
    ours = _model(**LLAMA).apply({"params": params}, tokens)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


# ---- masks ----


@pytest.mark.parametrize(
    "fields",
    [dict(), LLAMA, dict(kind="encoder_decoder")],
    ids=["gpt2", "llama", "encoder_decoder"],
)
def test_a_later_token_does_not_change_earlier_logits(fields):
    model = _model(**fields)
    args = _args(model, length=10)
    variables = _variables(model, *args)
    apply = jax.jit(model.apply)
    logits = apply(variables, *args)
    changed = args[-1].at[:, 6].set((args[-1][:, 6] + 7) % 30 + 1)
    logits_changed = apply(variables, *args[:-1], changed)
    np.testing.assert_allclose(logits_changed[:, :6], logits[:, :6], atol=1e-6)
    assert not np.allclose(logits_changed[:, 6:], logits[:, 6:], atol=1e-4)
    if model.kind == "encoder_decoder":  # every target position reads the whole input
        other_input = args[0].at[:, -1].set((args[0][:, -1] + 7) % 30 + 1)
        logits_other = apply(variables, other_input, args[1])
        assert not np.allclose(logits_other[:, 0], logits[:, 0], atol=1e-4)


@pytest.mark.parametrize("num_outputs", [0, 3])
def test_encoder_outputs_at_real_tokens_ignore_padding(num_outputs):
    model = _model(kind="encoder", num_outputs=num_outputs)
    tokens = jnp.array([[5, 9, 3, 7, 0, 0], [4, 4, 8, 0, 0, 0]], jnp.int32)
    longer = jnp.pad(tokens, ((0, 0), (0, 5)))
    variables = _variables(model, tokens)
    apply = jax.jit(model.apply)
    short_out, long_out = apply(variables, tokens), apply(variables, longer)
    if num_outputs:
        np.testing.assert_allclose(long_out, short_out, atol=1e-5)
    else:
        real = np.asarray(tokens != 0)
        np.testing.assert_allclose(
            np.asarray(long_out)[:, :6][real], np.asarray(short_out)[real], atol=1e-5
        )
        # and the encoder is bidirectional: a later token changes position 0
        changed = apply(variables, tokens.at[:, 2].set(11))
        assert not np.allclose(changed[:, 0], short_out[:, 0], atol=1e-4)


def test_dropout_only_in_training():
    model = _model(dropout=0.3, num_layers=1)
    tokens = _args(model)[0]
    variables = _variables(model, tokens)
    apply = jax.jit(model.apply, static_argnames="train")
    evaluated = apply(variables, tokens)
    without_dropout = jax.jit(_model(num_layers=1).apply)(variables, tokens)
    np.testing.assert_array_equal(evaluated, without_dropout)
    a = apply(variables, tokens, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, tokens, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, evaluated) and not np.allclose(a, b)


@pytest.mark.parametrize(
    "fields",
    [dict(), LLAMA, dict(kind="encoder_decoder")],
    ids=["gpt2", "llama", "encoder_decoder"],
)
def test_bfloat16_compute_keeps_float32_params_logits_and_gradients(fields):
    f32, bf16 = _model(**fields), _model(**fields, dtype="bfloat16")
    args = _args(f32)
    variables = _variables(f32, *args, std=0.05)
    assert nn.meta.unbox(jax.eval_shape(bf16.init, jax.random.key(0), *args)) == jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), variables
    )  # params stay f32
    logits, logits_bf16 = (
        jax.jit(f32.apply)(variables, *args),
        jax.jit(bf16.apply)(variables, *args),
    )
    assert logits_bf16.dtype == jnp.float32
    scale = float(jnp.abs(logits).max())
    assert float(jnp.abs(logits_bf16 - logits).max()) < 0.03 * scale  # bf16 has 8 bits
    assert float(jnp.abs(logits_bf16 - logits).max()) > 0  # and it did compute in bf16

    def loss(model, params):
        return jax.nn.logsumexp(model.apply({"params": params}, *args), -1).mean()

    grads = jax.jit(jax.grad(lambda p: loss(bf16, p)))(variables["params"])
    reference = jax.jit(jax.grad(lambda p: loss(f32, p)))(variables["params"])
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        assert g.dtype == jnp.float32
        assert float(jnp.abs(g - r).max()) <= 0.05 * float(jnp.abs(r).max()) + 1e-6


@pytest.mark.parametrize(
    "fields", [LLAMA, dict(kind="encoder", num_outputs=3)], ids=["llama", "bert"]
)
def test_float64_compute_is_float64_throughout(fields):
    """A numerical reference: in float64 every sum, norm, softmax and logit stays float64 (none is
    cut back to float32), so it agrees with float32 to float32's rounding and not bit for bit."""
    f32 = _model(**fields)
    args = _args(f32)
    variables = _variables(f32, *args, std=0.05)
    logits = jax.jit(f32.apply)(variables, *args)
    with jax.enable_x64(True):
        f64 = _model(**fields, dtype="float64")
        logits64 = jax.jit(f64.apply)(
            jax.tree.map(lambda x: x.astype(jnp.float64), variables), *args
        )
        assert logits64.dtype == jnp.float64
        diff = float(jnp.abs(logits64 - logits).max())
    assert 0 < diff < 1e-4 * max(1.0, float(jnp.abs(logits).max()))


# ---- sharding ----


def test_decoder_runs_sharded_on_data_fsdp_model_mesh_and_matches_one_device():
    mesh = Mesh(
        np.array(jax.devices()[:8]).reshape(2, 2, 2),
        ("data", "fsdp", "model"),
        axis_types=(AxisType.Auto,) * 3,
    )
    rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv_heads", "model"),
        ("vocab", "model"),
    )
    for fields in (dict(), LLAMA):
        model = _model(**fields)
        tokens = _args(model, batch=8, length=T)[0]
        variables = _variables(model, tokens)
        expected = jax.jit(model.apply)(variables, tokens)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)
        placed = jax.device_put(variables, logical_shardings(abstract, mesh, rules))
        assert placed["params"]["wte"]["embedding"].sharding.spec == P("model", "fsdp")
        mlp_in = placed["params"]["h_0"]["mlp"]["gate" if fields else "fc"]["kernel"]
        assert mlp_in.sharding.spec == P("fsdp", "model")
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            got = jax.jit(model.apply)(
                placed, jax.device_put(tokens, NamedSharding(mesh, P(("data", "fsdp"))))
            )
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


# ---- FLOPs ----


@pytest.mark.parametrize(
    "fields",
    [
        dict(),
        LLAMA,
        dict(kind="encoder", num_outputs=3),
        dict(kind="encoder_decoder", target_vocab_size=40),
    ],
    ids=["gpt2", "llama", "encoder", "encoder_decoder"],
)
def test_flops_formula_matches_xla_cost_analysis(fields):
    """XLA counts the matmuls the formula counts plus elementwise work (softmax, norms, GELU):
    at these sizes that adds 1-5%; XLA's backward of the untied case came out 0.3% under 3x.
    So XLA / formula must lie within [0.97, 1.08]."""
    model = _model(**fields, embed_dim=64, vocab_size=128, max_len=32)
    inputs = jnp.ones((2, 24 if model.kind == "encoder_decoder" else 32), jnp.int32)
    targets = jnp.ones((2, 32), jnp.int32)
    args = (inputs, targets) if model.kind == "encoder_decoder" else (inputs,)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))["params"]
    tokens = targets.size
    source_len = inputs.shape[1] if model.kind == "encoder_decoder" else None

    forward = jax.jit(lambda p: model.apply({"params": p}, *args)).lower(params).compile()
    predicted = forward_flops_per_token(model, 32, source_len) * tokens
    assert 0.97 <= forward.cost_analysis()["flops"] / predicted <= 1.08
    if model.kind != "decoder":
        return  # the backward's 2x holds for any kind; the decoders check it (compiles are slow)
    grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, *args).mean()))
    xla_train = grad.lower(params).compile().cost_analysis()["flops"]
    assert 0.97 <= xla_train / (train_flops_per_token(model, 32, source_len) * tokens) <= 1.08


def test_flops_formula_is_nanogpts_for_a_gpt():
    model = Model(vocab_size=65, num_layers=6, embed_dim=384, num_heads=6, max_len=256)
    non_embedding = 6 * 12 * 384**2 + 65 * 384  # matmul weights, tied wte as the lm head
    assert train_flops_per_token(model, 256) == 6 * non_embedding + 12 * 6 * 6 * 64 * 256
