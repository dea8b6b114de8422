"""launch.py end to end: the workdir it writes, reproduction from config.json, eval mode,
clear errors for bad input that leave an existing workdir untouched."""
from __future__ import annotations

import json

import pytest

from helpers import eval_records, launch, train_losses, tree_snapshot

CNN_TEST = ["--config", "configs/fashion_cnn.py:test"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "cnn"
    result = launch(*CNN_TEST, "--workdir", str(workdir), "--config.log_every_steps=1",
                    "--config.eval_every_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_end_to_end_writes_every_workdir_file(cnn_run):
    workdir, result = cnn_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "model_summary.txt",
                 "plots/loss.png", "plots/accuracy.png", "plots/confusion_matrix.png",
                 "plots/per_class_accuracy.json"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "checkpoints" / "20").is_dir()
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["device_count"] == 8
    assert {"jax", "flax", "optax"} <= set(summary["versions"])
    assert 0.0 <= summary["final_eval"]["accuracy"] <= 1.0
    assert [r["step"] for r in eval_records(workdir)] == [10, 20]
    assert sorted(train_losses(workdir)) == list(range(1, 21))
    assert "Results in" in result.stdout


def test_loss_goes_down_on_real_data(cnn_run):
    losses = train_losses(cnn_run[0])
    assert sum(losses[s] for s in range(16, 21)) < sum(losses[s] for s in range(1, 6))


def test_reproduce_from_saved_config(cnn_run, tmp_path):
    workdir, _ = cnn_run
    copy = tmp_path / "copy"
    result = launch("--config", str(workdir / "config.json"), "--workdir", str(copy))
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_losses(copy) == train_losses(workdir)
    assert eval_records(copy) == eval_records(workdir)


def test_eval_mode_scores_latest_checkpoint(cnn_run):
    workdir, _ = cnn_run
    result = launch("eval", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    assert metrics["step"] == 20
    assert metrics["accuracy"] == pytest.approx(eval_records(workdir)[-1]["accuracy"], abs=1e-6)


def test_rerunning_a_finished_run_trains_nothing_and_keeps_its_summary(cnn_run):
    workdir, _ = cnn_run
    summary_before = (workdir / "summary.json").read_text()
    metrics_before = (workdir / "metrics.jsonl").read_text()
    result = launch(*CNN_TEST, "--workdir", str(workdir), "--config.log_every_steps=1",
                    "--config.eval_every_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "summary.json").read_text() == summary_before  # wall time, speed kept
    assert (workdir / "metrics.jsonl").read_text() == metrics_before
    assert "after 20 steps" in result.stdout


@pytest.mark.parametrize("override, expected", [
    ("--config.optimizer.learnig_rate=0.1", "learning_rate"),
    ("--config.optimizer.learning_rate=fast", "learning_rate"),
    ("--config.data.batch_size=36", "divisible"),
    ("--config.optimizer.name=adamm", "adam"),
    ("--config.model.name=cnnn", "cnn"),
    ("--config.model.dens=(64,)", "did you mean 'dense'"),
])
def test_bad_config_is_one_clear_error_and_touches_nothing(cnn_run, override, expected):
    workdir, _ = cnn_run
    before = tree_snapshot(workdir)
    result = launch(*CNN_TEST, "--workdir", str(workdir), override)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert message and expected in message[0], result.stderr[-2000:]
    assert tree_snapshot(workdir) == before


def test_changed_config_on_existing_workdir_is_refused(cnn_run):
    workdir, _ = cnn_run
    before = tree_snapshot(workdir)
    result = launch(*CNN_TEST, "--workdir", str(workdir), "--config.model.dense=(64,)")
    assert result.returncode == 2
    assert "model.dense" in result.stderr
    assert tree_snapshot(workdir) == before


def test_missing_config_file(tmp_path):
    result = launch("--config", "configs/nope.py", "--workdir", str(tmp_path / "x"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "x").exists()
