"""Llama from GGUF (dlx/hub/llama.py) on the real SmolLM2-135M-Instruct Q4_1 file, against
transformers' own GGUF loader (its dequantisation and un-permutation are independent of dlx's):
logits, greedy generation, tokenizer, chat template; and bad files as one error line."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load a GGUF
gguf = pytest.importorskip("gguf")

from dlx.errors import ConfigError, DataError  # noqa: E402
from dlx.hub import llama  # noqa: E402
from dlx.tasks import decoding  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return"]
MIXED = "Hello world 12345 ünïcödé 东京 🙂 Привет\n\n  tabs\tand <|im_start|>user\nhi<|im_end|>"


@pytest.fixture(scope="module")
def smollm():
    return llama.load_gguf("smollm2")


@pytest.fixture(scope="module")
def hf(smollm):
    folder, name = str(smollm.path.parent), smollm.path.name
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def test_smollm2_is_the_published_135m_llama(smollm):
    m = smollm.model
    assert (m.num_layers, m.embed_dim, m.num_heads, m.kv_heads, m.hidden_dim) == (
        30,
        576,
        9,
        3,
        1536,
    )
    assert (m.vocab_size, m.norm, m.mlp, m.position, m.tie_embeddings) == (
        49152,
        "rms",
        "swiglu",
        "rope",
        True,
    )
    assert m.rope_base == 100000.0
    assert sum(x.size for x in jax.tree.leaves(smollm.params)) == 134_515_008


def test_logits_equal_transformers_loading_the_same_file(smollm, hf):
    """In float64 on both sides the logits agree to 9e-6 (the rest: transformers builds its RoPE
    tables in float32 whatever the model's dtype). In float32 each side is within rounding of that
    answer, dlx 1.6e-4 and torch 4e-5 here: layer 11's MLP writes a 22,500-sized activation
    (1 float32 ulp = 0.002), and XLA:CPU's dot accumulates its 1,536 terms with 0.01 more error
    than torch's sgemm. 3e-4 of logits up to ~35 is 1e-5 relative."""
    ids = smollm.encode(PROMPTS[0])[None]
    with torch.no_grad():
        theirs = hf[0](torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(
        jax.jit(lambda p, x: smollm.model.apply({"params": p}, x))(smollm.params, ids)
    )
    np.testing.assert_allclose(ours, theirs, atol=3e-4, rtol=0)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()

    # The GGUF loader's own dequantised tensors in a float64 LlamaForCausalLM (its GGUF model
    # computes in float32 whatever dtype it is given).
    reference = transformers.LlamaForCausalLM(hf[0].config).to(torch.float64).eval()
    reference.load_state_dict({k: v.double() for k, v in hf[0].state_dict().items()})
    with torch.no_grad():
        theirs64 = reference(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    with jax.enable_x64(True):
        model = smollm.model.clone(dtype="float64")
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), smollm.params)
        ours64 = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids)
        assert ours64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(ours64), theirs64, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, theirs64, atol=3e-4, rtol=0)


def test_greedy_generation_is_token_for_token_that_of_transformers(smollm, hf):
    ids = smollm.encode(PROMPTS[0])
    ours = decoding.generate(
        smollm.model, {"params": smollm.params}, jnp.asarray(ids)[None], jax.random.key(0), 32,
        temperature=0.0,
    )  # fmt: skip
    with torch.no_grad():
        theirs = (
            hf[0]
            .generate(
                torch.tensor(ids[None], dtype=torch.long),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                do_sample=False,
                max_new_tokens=32,
                min_new_tokens=32,
                eos_token_id=None,
                pad_token_id=0,
            )
            .numpy()
        )
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    assert len(set(theirs[0, len(ids) :])) > 5


def test_tokenizer_and_chat_template_equal_hugging_faces(smollm, hf):
    tokenizer = hf[1]
    for text in [MIXED, *PROMPTS, "", " leading space", "x" * 300]:
        assert smollm.encode(text).tolist() == tokenizer(text)["input_ids"], text
    assert smollm.decode(smollm.encode(MIXED)) == MIXED
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert smollm.chat_prompt("What is the capital of France?") == expected


def test_chat_answers_a_simple_instruction(smollm):
    assert "Paris" in smollm.chat("What is the capital of France?", max_new_tokens=16)
    with pytest.raises(ConfigError, match="exceed the model's context"):
        smollm.generate(np.ones(4, np.int32), smollm.model.max_len)


def test_export_to_safetensors_loads_in_transformers_and_back(smollm, hf, tmp_path):
    out = llama.export_llama(
        smollm.model, smollm.params, tmp_path / "hf", tokenizer=smollm.tokenizer,
        chat_template=smollm.chat_template, eos_id=smollm.eos_id,
    )  # fmt: skip
    exported = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    for name, tensor in hf[0].state_dict().items():  # the GGUF loader's tensors, one for one
        assert torch.equal(exported.state_dict()[name], tensor), name
    model, params = llama.load_llama(out)
    assert model == smollm.model
    jax.tree.map(np.testing.assert_array_equal, params, smollm.params)
    reread = transformers.AutoTokenizer.from_pretrained(out)
    assert reread(MIXED)["input_ids"] == smollm.encode(MIXED).tolist()


def _tiny_gguf(path, arch="llama", drop=None, wrong_shape=None):
    """A 1-layer llama GGUF of random float32 tensors (gguf's writer), optionally damaged."""
    e, m, v, heads, kv = 8, 16, 6, 2, 1
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(32)
    writer.add_embedding_length(e)
    writer.add_feed_forward_length(m)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c", "ab", "abc", "<|end|>"])
    writer.add_token_types([1, 1, 1, 1, 1, 3])
    writer.add_token_merges(["a b", "ab c"])
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (v, e), "output_norm.weight": (e,),
        "blk.0.attn_norm.weight": (e,), "blk.0.ffn_norm.weight": (e,),
        "blk.0.attn_q.weight": (e, e), "blk.0.attn_k.weight": (e // heads * kv, e),
        "blk.0.attn_v.weight": (e // heads * kv, e), "blk.0.attn_output.weight": (e, e),
        "blk.0.ffn_gate.weight": (m, e), "blk.0.ffn_up.weight": (m, e),
        "blk.0.ffn_down.weight": (e, m),
    }  # fmt: skip
    for name, shape in shapes.items():
        if name == drop:
            continue
        shape = (shape[0] + 1, *shape[1:]) if name == wrong_shape else shape
        writer.add_tensor(name, rng.normal(size=shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_tiny_written_gguf_loads_and_runs(tmp_path):
    lm = llama.load_gguf(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert lm.encode("abcab").tolist() == [4, 3]
    assert lm.model.apply({"params": lm.params}, jnp.array([[4, 3]])).shape == (1, 2, 6)


@pytest.mark.parametrize(
    "damage, error, expected",
    [
        (dict(arch="gpt2"), ConfigError, "architecture 'gpt2' is not supported"),
        (dict(drop="blk.0.ffn_up.weight"), DataError, "lacks tensor"),
        (dict(wrong_shape="blk.0.attn_k.weight"), DataError, "the metadata implies"),
        ("truncate", DataError, "cannot read"),
        ("garbage", DataError, "cannot read"),
    ],
)
def test_damaged_files_are_one_clear_error(tmp_path, damage, error, expected):
    path = tmp_path / "bad.gguf"
    if isinstance(damage, dict):
        _tiny_gguf(path, **damage)
    else:
        _tiny_gguf(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"GGUF" + bytes(200))
    with pytest.raises(error, match=expected) as raised:
        llama.load_gguf(path)
    assert "\n" not in str(raised.value)
    with pytest.raises(DataError, match="not a file"):
        llama.load_gguf(tmp_path / "missing.gguf")
