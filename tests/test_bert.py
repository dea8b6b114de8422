"""BERT import/export (dlx/hub/bert.py) on the real all-MiniLM-L6-v2 weights: hidden states equal
transformers' BertModel, sentence embeddings equal sentence-transformers', the tokenizer equals
Hugging Face's Python BertTokenizer on mixed scripts, export loads back into transformers, and
bad checkpoints are one clear error."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dlx.errors import ConfigError, DataError  # noqa: E402
from dlx.hub import bert  # noqa: E402
from dlx.models.transformer import Model  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Transfer learning starts from pretrained weights!",
    "naïve café résumé — déjà vu",
    "东京是日本的首都。",
    "Привет, мир! 123 + 456 = 579",
    "emoji 🙂 and tabs\tand  double  spaces",
    "",
]


@pytest.fixture(scope="module")
def minilm():
    return bert.load_bert("minilm")


@pytest.fixture(scope="module")
def hf_minilm(minilm):
    return transformers.BertModel.from_pretrained(minilm.directory, add_pooling_layer=False).eval()


def _hf_hidden(hf, ids, types):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            token_type_ids=torch.tensor(types, dtype=torch.long),
            attention_mask=torch.tensor(ids != 0, dtype=torch.long),
        )
    return out.last_hidden_state.numpy()


def test_minilm_is_the_published_six_layer_384_wide_encoder(minilm):
    model = minilm.model
    assert (model.num_layers, model.embed_dim, model.num_heads, model.hidden_dim) == (
        6,
        384,
        12,
        1536,
    )
    assert (model.vocab_size, model.max_len, model.type_vocab_size) == (30522, 512, 2)
    count = sum(x.size for x in jax.tree.leaves(minilm.params))
    assert count == 22_565_376  # the published 22,713,216 less the pooler's 147,840
    assert minilm.tokenizer.max_length == 256  # sentence-transformers' max_seq_length


def test_hidden_states_equal_transformers_bert_on_the_same_weights(minilm, hf_minilm):
    ids, types = minilm.tokenize(SENTENCES)
    assert ids.shape[0] == len(SENTENCES) and (ids == 0).any()  # a padded batch
    ours = np.asarray(minilm.hidden(ids, types))
    theirs = _hf_hidden(hf_minilm, ids, types)
    real = ids != 0
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-5, rtol=0)
    # sentence pairs: segment B takes token type 1
    pair_ids, pair_types, _ = minilm.tokenizer.encode(SENTENCES[:3], SENTENCES[3:6])
    assert pair_types.max() == 1
    ours = np.asarray(minilm.hidden(pair_ids, pair_types))
    theirs = _hf_hidden(hf_minilm, pair_ids, pair_types)
    np.testing.assert_allclose(ours[pair_ids != 0], theirs[pair_ids != 0], atol=1e-5, rtol=0)


def test_sentence_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm.directory), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    ours = minilm.sentence_embeddings(SENTENCES, batch_size=3)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    guitar, music, stocks = minilm.sentence_embeddings(
        ["A man is playing a guitar.", "Someone plays an instrument.", "Share prices fell today."]
    )
    assert guitar @ music > 0.4 > guitar @ stocks  # a paraphrase is near, another topic is not


def test_tokenizer_equals_hugging_faces_python_wordpiece_on_mixed_scripts(minilm):
    slow = transformers.BertTokenizer(str(minilm.directory / "vocab.txt"), do_lower_case=True)
    long_text = "word " * 400
    for text in [*SENTENCES, long_text, "Ünïcödé   ACCENTS und ß", "a\u00adb\u200bc\x00d"]:
        ids, types, truncated = minilm.tokenizer.encode([text])
        expected = slow(text, truncation=True, max_length=256)["input_ids"]
        assert ids[0].tolist() == expected, text
        assert truncated[0] == (text is long_text)
        assert types.sum() == 0
    assert minilm.tokenizer.decode(minilm.tokenize(["Hello, world!"])[0][0]) == "hello, world!"


def test_export_loads_back_into_transformers_and_dlx(minilm, hf_minilm, tmp_path):
    out = bert.export_bert(
        minilm.model, minilm.params, tmp_path / "out", tokenizer=minilm.tokenizer
    )
    reloaded = transformers.BertModel.from_pretrained(out, add_pooling_layer=False).eval()
    for (name, a), (_, b) in zip(
        sorted(reloaded.state_dict().items()), sorted(hf_minilm.state_dict().items()), strict=True
    ):
        assert torch.equal(a, b), name
    again = bert.load_bert(out)
    jax.tree.map(np.testing.assert_array_equal, again.params, minilm.params)
    assert again.tokenize(SENTENCES)[0].tolist() == minilm.tokenize(SENTENCES)[0].tolist()


def _copy(minilm, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(minilm.directory, target)
    return target


@pytest.mark.parametrize(
    "damage, error, expected",
    [
        ("truncate", DataError, "cannot read"),
        ("layers", DataError, "claims num_hidden_layers=7"),
        ("width", DataError, "claims hidden_size=768"),
        ("activation", ConfigError, "hidden_act='relu' is not supported"),
        ("not_json", DataError, "as JSON"),
        ("tokenizer", DataError, "no tokenizer.json"),
    ],
)
def test_damaged_checkpoints_are_one_clear_error(minilm, tmp_path, damage, error, expected):
    target = _copy(minilm, tmp_path)
    config = json.loads((target / "config.json").read_text())
    if damage == "truncate":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "layers":
        config["num_hidden_layers"] = 7
    elif damage == "width":
        config["hidden_size"] = 768
    elif damage == "activation":
        config["hidden_act"] = "relu"
    elif damage == "tokenizer":
        (target / "tokenizer.json").unlink()
    if damage == "not_json":
        (target / "config.json").write_text("{not json")
    else:
        (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=expected) as raised:
        bert.load_bert(target)
    assert "\n" not in str(raised.value)


def test_missing_wheel_names_the_make_target(tmp_path, monkeypatch):
    monkeypatch.delenv("DLX_MINILM_WHEEL", raising=False)
    with pytest.raises(DataError, match="make data"):
        bert.load_bert("minilm", data_dir=tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        bert.load_bert(tmp_path / "nowhere")


def test_post_norm_block_order_and_token_types_in_the_transformer():
    """The BERT options on a tiny random encoder: post-norm has no final norm and normalises the
    embeddings; token types change the output; a decoder can be post-norm too."""
    tokens = np.array([[5, 6, 7, 0]])
    model = Model(kind="encoder", vocab_size=10, num_layers=1, embed_dim=8, num_heads=2,
                  max_len=8, norm_position="post", type_vocab_size=2, mlp="gelu_exact")  # fmt: skip
    variables = model.init(jax.random.key(0), tokens)
    names = set(variables["params"])
    assert {"ln_embed", "wtt"} <= names and "ln_f" not in names
    a = model.apply(variables, tokens, token_types=np.zeros_like(tokens), method=Model.hidden)
    b = model.apply(variables, tokens, token_types=np.array([[0, 1, 1, 0]]), method=Model.hidden)
    assert not np.allclose(a[0, 1], b[0, 1]) and np.allclose(a[0, 0], b[0, 0], atol=0.5)
    np.testing.assert_allclose(np.asarray(a).mean(-1), 0.0, atol=1e-5)  # ends in a LayerNorm
    with pytest.raises(ConfigError, match="encoder_decoder kind is pre-norm"):
        Model(kind="encoder_decoder", norm_position="post")
    decoder = Model(kind="decoder", vocab_size=10, num_layers=1, embed_dim=8, num_heads=2,
                    max_len=8, norm_position="post")  # fmt: skip
    logits = decoder.apply(decoder.init(jax.random.key(0), tokens), tokens)
    assert logits.shape == (1, 4, 10)
