"""Pipelines (dlx/pipelines.py, `launch.py pipeline`): feature extraction with the real MiniLM,
text generation from a GGUF file and a Llama folder, and bad input as one error line."""

import json
import os

import numpy as np
import pytest

import dlx
from dlx.errors import ConfigError, DataError
from dlx.hub import llama
from helpers import cli, refused

os.environ["HF_HUB_OFFLINE"] = "1"
gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def extract():
    return dlx.pipeline("feature-extraction", model="minilm")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from test_llama_import import _tiny_gguf

    return _tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_feature_extraction_gives_unit_sentence_embeddings_in_a_batch(extract):
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "Share prices fell."]
    vectors = extract(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, extract.encoder.sentence_embeddings(texts), atol=1e-6)
    np.testing.assert_allclose(extract(texts[0]), vectors[:1], atol=1e-6)  # a string is one text
    with pytest.warns(UserWarning, match=r"text\(s\) \[1\] longer than 256 tokens were cut"):
        extract(["short", "word " * 300])
    with pytest.raises(ConfigError, match="text 1 is empty"):
        extract(["fine", "  "])


def test_text_generation_from_a_gguf_file_and_its_llama_export(tiny_gguf, tmp_path):
    generate = dlx.pipeline("text-generation", model=str(tiny_gguf))
    out = generate(["abc", "ab"], max_new_tokens=5)
    assert [list(o) for o in out] == [["generated_text"]] * 2
    lm = generate.lm
    expected = lm.tokenizer.decode(
        [int(t) for t in lm.generate(lm.encode("abc"), 5)], skip_special_tokens=True
    )
    assert out[0]["generated_text"] == expected  # greedy: the model's own continuation
    exported = llama.export_llama(lm.model, lm.params, tmp_path / "hf", tokenizer=lm.tokenizer)
    again = dlx.pipeline("text-generation", model=str(exported))
    assert again(["abc", "ab"], max_new_tokens=5) == out
    sampled = generate("abc", max_new_tokens=5, temperature=1.0, seed=3)
    assert sampled == generate("abc", max_new_tokens=5, temperature=1.0, seed=3)
    with pytest.raises(ConfigError, match="has no chat template"):
        generate("abc", chat=True)
    with pytest.raises(ConfigError, match="exceed the model's context"):
        generate("abc", max_new_tokens=40)


def test_cli_prints_one_json_line_per_text(extract):
    result = cli("pipeline", "feature-extraction", "--model", "minilm", "A dog.", "A cat.")
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["A dog.", "A cat."]
    np.testing.assert_allclose(
        [line["embedding"] for line in lines], extract(["A dog.", "A cat."]), atol=1e-6
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (("feature-extraction", "--model", "minilm", ""), "text 0 is empty"),
        (("feature-extraction", "--model", "minilm"), "got no texts"),
        (("text-generation", "--model", "minilm", "hi"), "needs a decoder"),
        (("feature-extraction", "--model", "runs/nowhere", "hi"), "is not 'minilm'"),
        (("sentiment-analysis", "--model", "minilm", "hi"), "fine-tune it first"),
        (("translation", "--model", "minilm", "hi"), "invalid choice"),
        (("feature-extraction", "hi"), "--model"),
    ],
)
def test_bad_pipeline_input_is_one_error_line(args, expected):
    assert refused(cli("pipeline", *args), expected).startswith("error: ")


def test_a_folder_that_is_no_model_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="is not 'minilm'"):
        dlx.pipeline("feature-extraction", model=str(tmp_path))
