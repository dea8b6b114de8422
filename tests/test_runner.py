"""The runner's promises: sharding does not change the numbers, interrupted runs resume exactly,
checkpoints move between device counts, NaNs never reach a checkpoint, many processes train."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from helpers import REPO, launch, launch_command, launch_env, train_losses

DIGITS = ["--config", "configs/digits_mlp.py", "--config.log_every_steps=1"]


def _wait_for_step(workdir, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and max(train_losses(workdir), default=0) >= step:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    raise AssertionError(f"run never reached step {step}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 400 digits steps, checkpoint every 50, on 8 devices."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=400", "--config.checkpoint_every_steps=50",
                    "--config.eval_every_steps=200")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _interrupted_run(workdir, sig: int, at_step: int) -> subprocess.Popen:
    args = [*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0", "--config.train_steps=400",
            "--config.checkpoint_every_steps=50", "--config.eval_every_steps=200"]
    process = subprocess.Popen(launch_command(*args), cwd=REPO, env=launch_env(8),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(workdir, at_step, process)
    process.send_signal(sig)
    process.communicate(timeout=120)
    return process


def test_resume_after_sigkill_matches_uninterrupted_run(uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    process = _interrupted_run(workdir, signal.SIGKILL, at_step=120)
    assert process.returncode == -signal.SIGKILL
    steps_before = max(train_losses(workdir))
    assert steps_before < 400, "the run finished before it could be killed"
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=400", "--config.checkpoint_every_steps=50",
                    "--config.eval_every_steps=200")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert 50 <= summary["resumed_from_step"] <= steps_before
    resumed, reference = train_losses(workdir), train_losses(uninterrupted)
    assert sorted(resumed) == sorted(reference) == list(range(1, 401))
    np.testing.assert_allclose([resumed[s] for s in range(1, 401)],
                               [reference[s] for s in range(1, 401)], rtol=1e-6)


def test_sigterm_saves_and_the_same_command_resumes(uninterrupted, tmp_path):
    workdir = tmp_path / "preempted"
    process = _interrupted_run(workdir, signal.SIGTERM, at_step=60)
    assert process.returncode == 0
    stopped = max(train_losses(workdir))
    assert stopped < 400
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=400", "--config.checkpoint_every_steps=50",
                    "--config.eval_every_steps=200")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == stopped
    resumed, reference = train_losses(workdir), train_losses(uninterrupted)
    np.testing.assert_allclose([resumed[s] for s in range(1, 401)],
                               [reference[s] for s in range(1, 401)], rtol=1e-6)


def test_sharded_run_equals_single_device_run(tmp_path):
    common = ["--config", "configs/fashion_cnn.py:test", "--config.log_every_steps=1",
              "--config.model.dropout=0.0"]
    sharded = launch(*common, "--workdir", str(tmp_path / "sharded"), "--config.mesh.data=2",
                     "--config.mesh.fsdp=2", "--config.mesh.model=2", devices=8)
    single = launch(*common, "--workdir", str(tmp_path / "single"), devices=1)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = train_losses(tmp_path / "sharded"), train_losses(tmp_path / "single")
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=2e-4)


def test_checkpoint_moves_between_device_counts(tmp_path):
    workdir = tmp_path / "moving"
    args = [*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0"]
    first = launch(*args, "--config.train_steps=10", "--config.mesh.fsdp=2", devices=8)
    assert first.returncode == 0, first.stderr[-3000:]
    second = launch(*args, "--config.train_steps=20", "--config.mesh.fsdp=2", devices=2)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 10 and summary["device_count"] == 2
    third = launch(*args, "--config.train_steps=30", "--config.mesh.fsdp=2", devices=8)
    assert third.returncode == 0, third.stderr[-3000:]
    assert sorted(train_losses(workdir)) == list(range(1, 31))


def test_nan_stops_with_the_last_good_checkpoint_and_never_saves_it(tmp_path):
    workdir = tmp_path / "nan"
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=60", "--config.checkpoint_every_steps=2",
                    "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=300")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "NaN/Inf at step" in message and "last good checkpoint is step" in message, message
    bad_step = int(message.split("at step ")[1].split(";")[0])
    good_step = int(message.split("checkpoint is step ")[1].split(" ")[0])
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == good_step < bad_step < 60


def test_nan_skip_policy_drops_bad_updates(tmp_path):
    workdir = tmp_path / "skip"
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=20", "--config.optimizer.learning_rate=1e30",
                    "--config.nan_policy=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped_updates", 0) for r in records) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_trains_and_checkpoints(tmp_path):
    workdir = tmp_path / "two"
    port = _free_port()
    args = [*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0", "--config.train_steps=20",
            "--config.checkpoint_every_steps=10", "--coordinator_address", f"127.0.0.1:{port}",
            "--num_processes", "2"]
    processes = [subprocess.Popen(launch_command(*args, "--process_id", str(i)), cwd=REPO,
                                  env=launch_env(2), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["device_count"] == 4
    assert (workdir / "checkpoints" / "20").is_dir()
    # The same global batches on one process with 4 devices give the same losses.
    single = launch(*DIGITS, "--workdir", str(tmp_path / "one"), "--config.num_epochs=0",
                    "--config.train_steps=20", devices=4)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = train_losses(workdir), train_losses(tmp_path / "one")
    np.testing.assert_allclose([a[s] for s in range(1, 21)], [b[s] for s in range(1, 21)], rtol=1e-5)


def test_keeps_the_latest_and_the_best_checkpoint(tmp_path):
    workdir = tmp_path / "best"
    result = launch(*DIGITS, "--workdir", str(workdir), "--config.num_epochs=0",
                    "--config.train_steps=60", "--config.eval_every_steps=5",
                    "--config.checkpoint_every_steps=5", "--config.keep_checkpoints=1",
                    "--config.optimizer.learning_rate=0.03", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "eval"]
    best = max(evals, key=lambda r: (r["accuracy"], -r["step"]))["step"]
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == sorted({best, 60})
