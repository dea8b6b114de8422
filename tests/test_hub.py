"""GPT-2 import/export (dlx/hub/gpt2.py) against Hugging Face transformers: a random-init
GPT2LMHeadModel saved with save_pretrained loads into dlx with the same logits and the same
greedy generations; dlx's export loads back into transformers; bad checkpoints fail clearly."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from dlx.errors import ConfigError, DataError  # noqa: E402
from dlx.hub import gpt2, safetensors  # noqa: E402
from dlx.models.transformer import Model  # noqa: E402
from dlx.tasks import decoding  # noqa: E402

VOCAB, POSITIONS = 100, 32
# initializer_range 0.2 (GPT-2 uses 0.02): peaked logits, so greedy continuations vary instead
# of repeating one token, which makes token-for-token agreement a real check.
SMALL = dict(
    n_layer=2,
    n_embd=64,
    n_head=4,
    vocab_size=VOCAB,
    n_positions=POSITIONS,
    initializer_range=0.2,
    bos_token_id=None,
    eos_token_id=None,
)


def _hf_model(**overrides):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**{**SMALL, **overrides})
    return transformers.GPT2LMHeadModel(config).eval()


def _hf_logits(hf, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _random_params(model, seed):
    """Random parameters of the model's own tree, without compiling its initializer."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32),
        nn.meta.unbox(abstract)["params"],
    )


def _dlx_logits(model, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = _hf_model()
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory, safe_serialization=True)
    return hf, directory


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return gpt2.load_gpt2(checkpoint[1])


TOKENS = np.random.default_rng(0).integers(0, VOCAB, (3, 24)).astype(np.int32)


def test_model_config_maps_gpt2_settings(checkpoint):
    hf, directory = checkpoint
    fields = gpt2.model_config(gpt2.read_config(directory))
    assert fields == dict(
        kind="decoder",
        vocab_size=VOCAB,
        num_layers=2,
        embed_dim=64,
        num_heads=4,
        mlp_dim=256,
        max_len=POSITIONS,
        dropout=0.1,
        norm="layer",
        norm_eps=1e-5,
        mlp="gelu",
        position="learned",
        tie_embeddings=True,
        bias=True,
    )


def test_logits_match_transformers(checkpoint, loaded):
    hf, _ = checkpoint
    model, params = loaded
    ours = _dlx_logits(model, params, TOKENS)
    assert ours.shape == (3, 24, VOCAB) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _hf_logits(hf, TOKENS), atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_token_for_token(checkpoint, loaded):
    hf, _ = checkpoint
    model, params = loaded
    prompt, new = TOKENS[:2, :5], 20
    ours = decoding.generate(
        model, {"params": params}, jnp.asarray(prompt), jax.random.key(0), new, temperature=0.0
    )
    with torch.no_grad():
        theirs = hf.generate(
            torch.tensor(prompt, dtype=torch.long),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
            eos_token_id=None,
            use_cache=True,
        ).numpy()
    assert theirs.shape == (2, 5 + new)
    assert len(set(theirs[:, 5:].ravel())) > 5  # a varied continuation, not one repeated token
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_unprefixed_layout_with_mask_buffers_and_shards_load_the_same(checkpoint, loaded, tmp_path):
    """Old GPT-2 files name tensors without "transformer." and carry attn.bias buffers;
    large ones come in shards with an index."""
    _, directory = checkpoint
    tensors = load_file(directory / gpt2.WEIGHTS_FILE)
    renamed = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    for i in range(2):
        renamed[f"h.{i}.attn.bias"] = np.tril(np.ones((POSITIONS, POSITIONS), np.float32))
        renamed[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    names = sorted(renamed)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, shard_names in halves.items():
        save_file({n: renamed[n] for n in shard_names}, tmp_path / shard)
    index = {"weight_map": {n: shard for shard, ns in halves.items() for n in ns}}
    (tmp_path / safetensors.INDEX_FILE).write_text(json.dumps(index))
    shutil.copy(directory / gpt2.CONFIG_FILE, tmp_path)

    model, params = gpt2.load_gpt2(tmp_path)
    expected_model, expected_params = loaded
    assert model == expected_model
    jax.tree.map(np.testing.assert_array_equal, params, expected_params)


def test_export_reloads_in_transformers_with_the_same_logits(checkpoint, loaded, tmp_path):
    hf, _ = checkpoint
    model, params = loaded
    gpt2.export_gpt2(model, params, tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(
        _hf_logits(reloaded, TOKENS), _hf_logits(hf, TOKENS), atol=1e-5, rtol=0
    )


def test_untied_dlx_model_exports_and_round_trips(tmp_path):
    model = Model(
        vocab_size=VOCAB,
        num_layers=1,
        embed_dim=32,
        num_heads=2,
        mlp_dim=48,
        max_len=16,
        tie_embeddings=False,
        norm_eps=1e-6,
        dropout=0.0,
    )
    params = _random_params(model, seed=1)
    gpt2.export_gpt2(model, {"params": params}, tmp_path)
    tokens = TOKENS[:2, :16]
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert not reloaded.config.tie_word_embeddings
    np.testing.assert_allclose(
        _hf_logits(reloaded, tokens), _dlx_logits(model, params, tokens), atol=1e-4, rtol=0
    )
    model_again, params_again = gpt2.load_gpt2(tmp_path)
    assert model_again == model
    jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_export_refuses_a_model_gpt2_cannot_hold(tmp_path):
    model = Model(vocab_size=VOCAB, num_layers=1, embed_dim=32, num_heads=2, norm="rms", max_len=16)
    params = _random_params(model, seed=0)
    with pytest.raises(ConfigError, match="norm='rms'"):
        gpt2.export_gpt2(model, params, tmp_path)


# ---- tampered checkpoints: one-line errors naming what is wrong ----


def _tamper_tensors(directory, change):
    tensors = load_file(directory / gpt2.WEIGHTS_FILE)
    change(tensors)
    save_file(tensors, directory / gpt2.WEIGHTS_FILE, metadata={"format": "pt"})


def _tamper_config(directory, **changes):
    config = json.loads((directory / gpt2.CONFIG_FILE).read_text())
    config.update(changes)
    (directory / gpt2.CONFIG_FILE).write_text(json.dumps(config))


TAMPERINGS = {
    "missing tensor": (
        lambda d: _tamper_tensors(d, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias")),
        DataError,
        r"lacks tensor\(s\) \['h.1.mlp.c_fc.bias'\]",
    ),
    "wrong shape": (
        lambda d: _tamper_tensors(
            d,
            lambda t: t.update(
                {"transformer.h.0.attn.c_attn.weight": np.zeros((64, 128), np.float32)}
            ),
        ),
        DataError,
        r"transformer.h.0.attn.c_attn.weight has shape \[64, 128\].*\[64, 192\]",
    ),
    "extra layer": (
        lambda d: _tamper_tensors(
            d, lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(64, np.float32)})
        ),
        DataError,
        r"GPT-2 of this config does not: \['h.2.ln_1.weight'\]",
    ),
    "untied head while tied": (
        lambda d: _tamper_tensors(
            d, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1.0})
        ),
        DataError,
        "lm_head.weight that differs from wte.weight",
    ),
    "wrong model_type": (
        lambda d: _tamper_config(d, model_type="llama"),
        ConfigError,
        "model_type is 'llama', expected 'gpt2'",
    ),
    "other activation": (
        lambda d: _tamper_config(d, activation_function="relu"),
        ConfigError,
        "activation_function 'relu' is not supported",
    ),
    "heads do not divide": (
        lambda d: _tamper_config(d, n_head=5),
        ConfigError,
        "n_embd 64 is not divisible by n_head 5",
    ),
    "pickle only": (
        lambda d: (d / gpt2.WEIGHTS_FILE).rename(d / "pytorch_model.bin"),
        DataError,
        "no model.safetensors .* safetensors only",
    ),
}


@pytest.mark.parametrize("name", TAMPERINGS)
def test_tampered_checkpoint_gives_a_clear_error(checkpoint, tmp_path, name):
    tamper, error, message = TAMPERINGS[name]
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoint[1], directory)
    tamper(directory)
    with pytest.raises(error, match=message) as raised:
        gpt2.load_gpt2(directory)
    assert "\n" not in str(raised.value)
