"""A byte-level BPE language model end to end: the tokenizer trained on the
train split is saved in the workdir, reloaded unchanged on resume and by `launch.py sample`, and
bits per character account for the characters each token covers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlx.data.text import read_texts
from dlx.data.tokenizers import BpeTokenizer, load_tokenizer
from dlx.tasks.language_model import DOCUMENT_SEPARATOR
from helpers import cli, eval_records, load_config, train, train_losses

VOCAB_SIZE = 300
GPT_TEST = "configs/shakespeare_gpt.py:test"
BPE = {"data.tokenizer": "bpe", "data.vocab_size": VOCAB_SIZE}


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "bpe"
    train(GPT_TEST, workdir, BPE)
    return workdir


def test_bpe_run_saves_its_tokenizer_and_reports_bits_per_character(bpe_run):
    tokenizer = load_tokenizer(bpe_run / "tokenizer.json")
    assert isinstance(tokenizer, BpeTokenizer) and tokenizer.vocab_size == VOCAB_SIZE
    text = DOCUMENT_SEPARATOR.join(read_texts("shakespeare", load_config(GPT_TEST).data.eval_split))
    chars_per_token = len(text) / len(tokenizer.encode(text))
    assert 1.2 < chars_per_token < 3.0  # merges learned: tokens span several characters
    final = eval_records(bpe_run)[-1]
    assert 0 < final["loss"] < math.log(VOCAB_SIZE) + 0.5
    assert final["bits_per_char"] == pytest.approx(
        final["loss"] / (math.log(2) * chars_per_token), rel=1e-5
    )


def test_bpe_run_resumes_with_the_saved_tokenizer(bpe_run, tmp_path):
    saved = (bpe_run / "tokenizer.json").read_bytes()
    train(GPT_TEST, bpe_run, {**BPE, "train_steps": 8})
    assert (bpe_run / "tokenizer.json").read_bytes() == saved
    losses = train_losses(bpe_run)
    assert max(losses) == 8 and np.isfinite(losses[8])


def test_bpe_sample_decodes_whole_tokens_after_the_prompt(bpe_run):
    result = cli(
        "sample",
        "--workdir",
        str(bpe_run),
        "--prompt",
        "ROMEO:",
        "--max_new_tokens",
        "20",
        "--temperature",
        "0",
    )
    assert result.code == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ROMEO:") and result.stdout.endswith("\n")
    continuation = result.stdout[len("ROMEO:") : -1]  # sample mode ends the text with a newline
    tokenizer = load_tokenizer(bpe_run / "tokenizer.json")
    assert continuation and "\ufffd" not in continuation  # whole tokens, valid UTF-8
    assert len(tokenizer.encode(continuation)) <= 20


def test_init_from_takes_the_source_runs_tokenizer(bpe_run, tmp_path, capsys):
    """Fine-tuning on other text keeps the source's token ids: its tokenizer, not a new one
    trained on the new train split (here the validation works, whose merges differ)."""
    workdir = tmp_path / "finetune"
    train(
        GPT_TEST,
        workdir,
        {**BPE, "init_from": str(bpe_run), "data.train_split": "validation", "train_steps": 3},
    )
    assert (workdir / "tokenizer.json").read_bytes() == (bpe_run / "tokenizer.json").read_bytes()
    assert "Initialised from" in capsys.readouterr().out
