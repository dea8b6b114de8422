"""LoRA (dlx/optim/lora.py) against Hugging Face peft 0.21.2 on the same base weights and the
same adapter weights; merging equals the unmerged forward; dropout, targets and bad configs."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from dlx.errors import ConfigError  # noqa: E402
from dlx.hub import llama  # noqa: E402
from dlx.optim.lora import LoRA  # noqa: E402

LAYERS, RANK, ALPHA = 2, 4, 8.0
# peft module names -> dlx layer paths (query and output projections and the whole MLP: dlx
# fuses k and v into one "kv" layer, so v_proj alone has no dlx layer of its own)
TARGETS = {"q_proj": "attn/query", "o_proj": "attn/proj", "gate_proj": "mlp/gate",
           "up_proj": "mlp/up", "down_proj": "mlp/down"}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random tiny Llama saved by transformers and loaded into dlx through the hub."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(config).eval()
    directory = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(directory, safe_serialization=True)
    model, params = llama.load_llama(directory)
    return hf, model, params


def _peft_model(hf, dropout=0.0):
    config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=list(TARGETS)
    )
    model = peft.get_peft_model(hf, config)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B, so the adapters change the output
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    return model.eval()


def _adapters_from_peft(peft_model) -> dict:
    """peft's lora_A [r, in] and lora_B [out, r] as dlx's a [in, r] and b [r, out]."""
    adapters = {}
    for name, parameter in peft_model.named_parameters():
        if "lora_" not in name:
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])
        module = next(m for m in TARGETS if f".{m}." in name)
        path = f"h_{layer}/{TARGETS[module]}"
        value = parameter.detach().numpy().T
        adapters.setdefault(path, {})["a" if "lora_A" in name else "b"] = jnp.asarray(value)
    return adapters


def test_adapted_logits_equal_peft_and_merging_changes_nothing(base):
    hf, model, params = base
    peft_model = _peft_model(hf)
    tokens = np.random.default_rng(0).integers(0, 64, (2, 12))
    with torch.no_grad():
        expected = peft_model(torch.tensor(tokens)).logits.numpy()
        with peft_model.disable_adapter():
            base_logits = peft_model(torch.tensor(tokens)).logits.numpy()
    lora = LoRA(RANK, ALPHA, 0.0, r"h_\d+/(attn/(query|proj)|mlp/(gate|up|down))")
    shapes = lora.shapes(model, {"params": params}, tokens)
    assert sorted(shapes) == sorted(f"h_{i}/{p}" for i in range(LAYERS) for p in TARGETS.values())
    assert shapes["h_0/attn/proj"] == (32, (32,)) and shapes["h_0/attn/query"] == (32, (4, 8))
    adapters = _adapters_from_peft(peft_model)
    assert jax.tree.map(jnp.shape, adapters) == jax.tree.map(
        jnp.shape, lora.init(shapes, jax.random.key(0))
    )
    with lora.applied(adapters):
        ours = np.asarray(model.apply({"params": params}, tokens))
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    assert np.abs(expected - base_logits).max() > 0.1  # the adapters matter

    assert lora.trainable_parameters(adapters) == sum(
        p.numel() for n, p in peft_model.named_parameters() if "lora_" in n
    )
    merged = lora.merge(params, adapters)
    np.testing.assert_allclose(model.apply({"params": merged}, tokens), ours, atol=1e-5, rtol=0)
    with torch.no_grad():
        peft_merged = peft_model.merge_and_unload()(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(peft_merged, ours, atol=1e-5, rtol=0)


def test_fresh_adapters_start_at_the_base_model_and_train_alone(base):
    _, model, params = base
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 8)))
    lora = LoRA(rank=2, alpha=4.0, dropout=0.0, targets=r"h_\d+/attn/query")
    adapters = lora.init(lora.shapes(model, {"params": params}, tokens), jax.random.key(0))
    with lora.applied(adapters):
        start = model.apply({"params": params}, tokens)
    np.testing.assert_array_equal(start, model.apply({"params": params}, tokens))

    def loss(adapters):
        with lora.applied(adapters):
            logits = model.apply({"params": params}, tokens[:, :-1])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()

    grads = jax.jit(jax.grad(loss))(adapters)
    assert all(float(jnp.abs(g["b"]).max()) > 0 for g in grads.values())  # B learns first
    assert all(float(jnp.abs(g["a"]).max()) == 0 for g in grads.values())  # B is still zero
    updated = jax.tree.map(lambda a, g: a - 0.5 * g, adapters, grads)
    assert jax.jit(loss)(updated) < jax.jit(loss)(adapters)


def test_dropout_acts_on_the_adapter_input_in_training_only(base):
    _, model, params = base
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 8)))
    lora = LoRA(rank=2, alpha=4.0, dropout=0.5, targets=r"h_0/mlp/down")
    adapters = lora.init(lora.shapes(model, {"params": params}, tokens), jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.5, adapters)
    apply = lambda **kw: _apply_with(lora, adapters, model, params, tokens, **kw)  # noqa: E731
    np.testing.assert_array_equal(apply(train=False), apply(train=False))
    one, two = apply(train=True, rng=jax.random.key(1)), apply(train=True, rng=jax.random.key(2))
    assert not np.allclose(one, two)
    np.testing.assert_array_equal(one, apply(train=True, rng=jax.random.key(1)))
    with pytest.raises(ValueError, match="needs an rng"):
        apply(train=True)


def _apply_with(lora, adapters, model, params, tokens, **kwargs):
    with lora.applied(adapters, **kwargs):
        return np.asarray(model.apply({"params": params}, tokens))


def test_lora_on_flax_dense_layers_and_bad_configs():
    class TwoLayers(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="out")(nn.relu(nn.Dense(5, name="hidden")(x)))

    model, x = TwoLayers(), jnp.ones((2, 4))
    variables = model.init(jax.random.key(0), x)
    lora = LoRA(rank=2, alpha=2.0, targets="hidden")
    shapes = lora.shapes(model, variables, x)
    assert shapes == {"hidden": (4, (5,))}
    adapters = jax.tree.map(lambda a: a + 1.0, lora.init(shapes, jax.random.key(0)))
    with lora.applied(adapters):
        adapted = model.apply(variables, x)
    merged = lora.merge(variables["params"], adapters)
    np.testing.assert_allclose(model.apply({"params": merged}, x), adapted, rtol=1e-6)
    with pytest.raises(ConfigError, match="matches none of the model's dense layers"):
        LoRA(targets="attention").shapes(model, variables, x)
    for bad in (dict(rank=0), dict(dropout=1.0), dict(targets="(")):
        with pytest.raises(ConfigError):
            LoRA(**bad)
