"""Language models end to end on Shakespeare: the Shakespeare study's runs (GPT, LSTM, GRU) and
report, the workdir files, and sampling from a checkpoint. (Seq2seq on CMUdict: test_g2p.py.)"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from dlx.data.tokenizers import load_tokenizer
from experiments import shakespeare_lm
from helpers import REPO, cli, eval_records, refused


@pytest.fixture(scope="module")
def shakespeare_study(tmp_path_factory):
    """The Shakespeare study at its `test` variant (GPT, LSTM and GRU runs, 6 steps each) and its
    report, made once: one test reads the report, the others the runs."""
    out = tmp_path_factory.mktemp("study") / "lm"
    with contextlib.chdir(REPO):
        shakespeare_lm.main(["--variant", "test", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def gpt_run(shakespeare_study):
    """configs/shakespeare_gpt.py:test, trained by the Shakespeare study (on a data, fsdp, model
    mesh the same run gives the same numbers: test_mesh.py)."""
    return shakespeare_study / "gpt"


def test_language_model_run_writes_tokenizer_samples_and_text_metrics(gpt_run):
    assert (gpt_run / "tokenizer.json").is_file()
    records = eval_records(gpt_run)
    assert [r["step"] for r in records] == [3, 6]
    final = records[-1]
    assert final["perplexity"] == pytest.approx(np.exp(final["loss"]), rel=1e-5)
    # char level: bits per char is the loss in bits
    assert final["bits_per_char"] == pytest.approx(final["loss"] / np.log(2), rel=1e-5)
    vocab_size = load_tokenizer(gpt_run / "tokenizer.json").vocab_size
    assert 60 < vocab_size < 120  # the characters of the works
    assert 0 < final["loss"] < np.log(vocab_size) + 0.5  # about uniform after 6 steps, not worse
    sample = (gpt_run / "samples" / "step_0000006.txt").read_text()
    assert sample.count("=== sample") == 2 and len(sample) > 40


def test_sample_mode_streams_text_from_the_checkpoint(gpt_run):
    command = (
        "sample",
        "--workdir",
        str(gpt_run),
        "--prompt",
        "ROMEO:",
        "--max_new_tokens",
        "25",
        "--temperature",
        "0.8",
        "--top_k",
        "5",
    )
    result = cli(*command)
    assert result.code == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.rstrip("\n")) == 6 + 25
    assert cli(*command).stdout == result.stdout  # same seed, same text


def test_text_generation_pipeline_continues_from_a_language_model_workdir(gpt_run):
    import json

    result = cli(
        "pipeline", "text-generation", "--model", str(gpt_run), "ROMEO:", "JULIET:",
        "--max_new_tokens", "12",
    )  # fmt: skip
    assert result.code == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prompt"] for line in lines] == ["ROMEO:", "JULIET:"]
    assert all(len(line["generated_text"]) == 12 for line in lines)  # char level: 12 characters
    again = cli("pipeline", "text-generation", "--model", str(gpt_run), "ROMEO:",
                "--max_new_tokens", "12")  # fmt: skip
    assert json.loads(again.stdout)["generated_text"] == lines[0]["generated_text"]  # greedy
    refused(
        cli("pipeline", "text-generation", "--model", str(gpt_run), "--chat", "hi"),
        "no chat template",
    )


@pytest.mark.parametrize("flag", ["--temperature=-1", "--top_p=0", "--top_k=-3"])
def test_sample_mode_rejects_bad_settings(gpt_run, flag):
    result = cli("sample", "--workdir", str(gpt_run), flag)
    assert result.code == 2
    assert result.stderr.startswith("error: ") and flag.split("=")[0][2:] in result.stderr


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_recurrent_language_models_train(model, shakespeare_study):
    workdir = shakespeare_study / model  # configs/shakespeare_<model>.py:test
    final = eval_records(workdir)[-1]
    vocab_size = load_tokenizer(workdir / "tokenizer.json").vocab_size
    assert 0 < final["loss"] < np.log(vocab_size) + 0.5  # about uniform after 6 steps, not worse
    assert final["perplexity"] == pytest.approx(np.exp(final["loss"]), rel=1e-5)


def test_shakespeare_study_reports_each_model_with_curves_and_samples(shakespeare_study):
    out = shakespeare_study
    report = (out / "report.md").read_text()
    rows = [
        line.split("|") for line in report.splitlines() if line.startswith("| ") and " M |" in line
    ]
    assert [row[1].strip() for row in rows] == ["gpt", "lstm", "gru"]
    assert all(int(row[3]) == 6 and 0 < float(row[4]) < 5 for row in rows)  # steps, val loss
    assert report.count("Last sample of") == 3 and "python experiments/shakespeare_lm.py" in report
    assert (out / "validation_loss.png").stat().st_size > 10_000


def test_predict_on_image_files_is_refused_for_a_language_model(gpt_run, tmp_path):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    line = refused(cli("predict", "--workdir", str(gpt_run), str(image)), "no image prediction")
    assert "'language_model'" in line  # names the run's task
