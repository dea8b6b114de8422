"""The runner's promises: interrupted runs resume exactly, checkpoints move between device
counts, NaNs never reach a checkpoint. (Sharding does not change the numbers: test_mesh.py;
several processes train one run: test_launch.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.train import loop
from helpers import REPO, launch_command, launch_env, train, train_losses

DIGITS = "configs/digits_mlp.py"
DIGITS_ARGS = ["--config", DIGITS, "--config.log_every_steps=1"]
# 400 steps, a checkpoint every 50: the run the kill and preemption tests interrupt.
LONG_RUN = {
    "log_every_steps": 1,
    "num_epochs": 0.0,
    "train_steps": 400,
    "checkpoint_every_steps": 50,
    "eval_every_steps": 200,
}


def _steps(train_steps: int, **more) -> dict:
    """Overrides for a digits run of `train_steps` steps, a train log line each step."""
    return {"log_every_steps": 1, "num_epochs": 0.0, "train_steps": train_steps, **more}


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
    """The reference: 400 digits steps, checkpoint every 50, on 8 devices, never interrupted."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    train(DIGITS, workdir, LONG_RUN)
    return workdir


def _interrupted_run(workdir, sig: int, at_step: int) -> subprocess.Popen:
    args = [
        "--config",
        DIGITS,
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in LONG_RUN.items()),
    ]
    process = subprocess.Popen(
        launch_command(*args),
        cwd=REPO,
        env=launch_env(8),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    summary = train(DIGITS, workdir, LONG_RUN)  # the same run again resumes it
    assert 50 <= summary["resumed_from_step"] <= steps_before
    resumed, reference = train_losses(workdir), train_losses(uninterrupted)
    assert sorted(resumed) == sorted(reference) == list(range(1, 401))
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 401)], [reference[s] for s in range(1, 401)], rtol=1e-6
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_preemption_saves_and_the_same_command_resumes(uninterrupted, tmp_path, sig):
    workdir = tmp_path / "preempted"
    process = _interrupted_run(workdir, sig, at_step=60)
    assert process.returncode == 0
    stopped = max(train_losses(workdir))
    assert stopped < 400
    assert (workdir / "checkpoints" / str(stopped)).is_dir()
    assert train(DIGITS, workdir, LONG_RUN)["resumed_from_step"] == stopped
    resumed, reference = train_losses(workdir), train_losses(uninterrupted)
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 401)], [reference[s] for s in range(1, 401)], rtol=1e-6
    )


def test_checkpoint_moves_between_device_counts(tmp_path):
    workdir = tmp_path / "moving"
    train(DIGITS, workdir, _steps(10, **{"mesh.fsdp": 2}), devices=8)
    summary = train(DIGITS, workdir, _steps(20, **{"mesh.fsdp": 2}), devices=2)
    assert summary["resumed_from_step"] == 10 and summary["device_count"] == 2
    # A mesh that fits the new machine is a layout change, not a new run.
    assert train(DIGITS, workdir, _steps(30), devices=1)["device_count"] == 1
    summary = train(DIGITS, workdir, _steps(40, **{"mesh.fsdp": 4, "mesh.model": 2}), devices=8)
    assert summary["resumed_from_step"] == 30 and summary["device_count"] == 8
    assert sorted(train_losses(workdir)) == list(range(1, 41))


def test_nan_stops_with_the_last_good_checkpoint_and_never_saves_it(tmp_path):
    workdir = tmp_path / "nan"
    with pytest.raises(loop.NonFiniteError) as stopped:
        train(
            DIGITS,
            workdir,
            _steps(
                60,
                checkpoint_every_steps=2,
                **{"optimizer.name": "sgd", "optimizer.learning_rate": 300.0},
            ),
        )
    message = str(stopped.value)
    assert "NaN/Inf at step" in message and "last good checkpoint is step" in message, message
    bad_step = int(message.split("at step ")[1].split(";")[0])
    good_step = int(message.split("checkpoint is step ")[1].split(" ")[0])
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == good_step < bad_step < 60


def test_nan_skip_policy_drops_bad_updates(tmp_path):
    workdir = tmp_path / "skip"
    train(DIGITS, workdir, _steps(20, nan_policy="skip", **{"optimizer.learning_rate": 1e30}))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped_updates", 0) for r in records) > 0


def test_keeps_the_latest_and_the_best_checkpoint(tmp_path):
    workdir = tmp_path / "best"
    train(
        DIGITS,
        workdir,
        _steps(
            60,
            eval_every_steps=5,
            checkpoint_every_steps=5,
            keep_checkpoints=1,
            **{"optimizer.learning_rate": 0.03},
        ),
    )
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "eval"]
    best = max(evals, key=lambda r: (r["accuracy"], -r["step"]))["step"]
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == sorted({best, 60})


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A finished digits run for config.init_from to start from (8 devices)."""
    workdir = tmp_path_factory.mktemp("source") / "run"
    train(DIGITS, workdir, _steps(40, eval_every_steps=40))
    return workdir


def _final_eval(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())["final_eval"]


def test_init_from_starts_from_the_source_weights_then_resumes_its_own(
    source_run, tmp_path, capsys
):
    """Warm start on another mesh (2 devices) with a zero learning rate: one step later the new
    run evaluates exactly as its source. Re-running it resumes its own checkpoint instead."""
    workdir = tmp_path / "finetune"
    tuning = {"init_from": str(source_run), "optimizer.learning_rate": 0.0, "eval_every_steps": 1}
    train(DIGITS, workdir, _steps(1, **tuning), devices=2)
    first = capsys.readouterr().out
    assert "Initialised from" in first and "step 40" in first
    source, tuned = _final_eval(source_run), _final_eval(workdir)
    assert tuned.keys() == source.keys()
    for name in source:
        np.testing.assert_allclose(tuned[name], source[name], rtol=1e-5, err_msg=name)
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 1

    train(DIGITS, workdir, _steps(2, **tuning), devices=2)
    again = capsys.readouterr().out
    assert "Resumed from" in again and "Initialised from" not in again


@pytest.mark.parametrize(
    "init_from, override, expected",
    [
        ("missing", {}, "does not exist"),
        ("unfinished", {}, "holds no finished checkpoint"),
        ("source", {"model.hidden": (32, 64)}, "needs the same model config"),
    ],
)
def test_bad_init_from_is_one_clear_error_and_writes_nothing(
    source_run, tmp_path, init_from, override, expected
):
    path = source_run if init_from == "source" else tmp_path / "nothing_here"
    if init_from == "unfinished":  # a run that never saved a checkpoint
        path.mkdir()
        (path / "config.json").write_text((source_run / "config.json").read_text())
    workdir = tmp_path / "finetune"
    with pytest.raises(ConfigError, match="init_from") as refused:
        train(DIGITS, workdir, {"init_from": str(path), **override})
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert not workdir.exists()


def test_init_from_carries_batch_statistics(tmp_path):
    """Params and model state (batch norm's running statistics) come over exactly; the step and
    optimizer state start afresh."""
    import jax

    from configs.digits_mlp import get_config
    from dlx.train import checkpoint, loop

    config = get_config()
    config.update(num_epochs=0.0, train_steps=3, progress_bar=False, checkpoint_every_steps=3)
    config.model.batch_norm = True
    source = tmp_path / "source"
    loop.train_and_evaluate(config, str(source))

    config.init_from = str(source)
    run = loop.prepare_run(config)
    items = run.task.warm_start_items
    step = checkpoint.warm_start_step(str(source), run.abstract_state, items)
    started = loop.init_state(
        run,
        checkpoint.restore_items(str(source), step, run.abstract_state, run.state_shardings, items),
    )
    saved = checkpoint.Checkpointer(
        str(source / "checkpoints"), keep_latest=1, best_metric="", best_mode="max", read_only=True
    )
    finished, _ = saved.restore(run.abstract_state, run.state_shardings, with_data=False)
    saved.close()
    assert step == 3
    assert jax.tree.leaves(finished.model_state)  # the MLP with batch norm has running stats
    for part in ("params", "model_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(started, part), getattr(finished, part))
    fresh_opt = jax.tree.leaves(loop.init_state(run).opt_state)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(started.opt_state), fresh_opt)
