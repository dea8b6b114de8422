"""Checkpoints that survive damage and concurrency: damaged steps are named and skipped, a full
disk stops the run with one line and keeps the previous checkpoint, one run per workdir, one
metrics row per step and split. (Resuming after kill -9 or SIGTERM: test_runner.py; kill -9 at
20 random points: tests/kill_anywhere.py, run by hand.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dlx.errors import UserError
from dlx.train import checkpoint, loop
from dlx.train import workdir as workdir_lib
from dlx.train.metrics import MetricWriter, read_metrics
from helpers import REPO


def _config(steps: int):
    from configs.digits_mlp import get_config

    config = get_config()
    config.update(
        num_epochs=0.0,
        train_steps=steps,
        checkpoint_every_steps=2,
        keep_checkpoints=3,
        eval_every_steps=100,
        log_every_steps=1,
        progress_bar=False,
    )
    return config


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """Six digits steps with checkpoints at 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("saved") / "run"
    loop.train_and_evaluate(_config(6), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    return workdir


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _largest_array_file(step_dir: Path) -> Path:
    return max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )


def _garble(path: Path) -> None:
    """Flips bytes in the middle; the size stays the same."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _warnings(captured: str) -> list[str]:
    return [line for line in captured.splitlines() if line.startswith("warning:")]


def _train_rows(workdir: Path) -> dict[int, dict]:
    return {
        r["step"]: r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "train"
    }


def test_garbled_latest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(
    saved_run, tmp_path, capsys
):
    """Same-size damage used to resume silently; now the step is named, moved aside, and the
    run retrains from step 4 to exactly the losses it had."""
    workdir = _copy(saved_run, tmp_path)
    _garble(_largest_array_file(workdir / "checkpoints" / "6"))
    summary = loop.train_and_evaluate(_config(8), str(workdir))

    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "step 6" in warnings[0], warnings
    assert "does not match its checksum" in warnings[0]
    assert summary["resumed_from_step"] == 4
    assert (workdir / "damaged_checkpoints" / "6").is_dir()
    assert checkpoint.check_step(str(workdir / "checkpoints" / "6")).status == "intact"
    before, after = _train_rows(saved_run), _train_rows(workdir)
    assert sorted(after) == list(range(1, 9))
    assert [after[s]["loss"] for s in (5, 6)] == [before[s]["loss"] for s in (5, 6)]
    rows = read_metrics(str(workdir / "metrics.jsonl"))
    assert max(Counter((r["step"], r["split"]) for r in rows).values()) == 1


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda step: _truncate(_largest_array_file(step)), "bytes, "),
        (lambda step: (step / "state" / "_METADATA").write_text("garbage"), "state/_METADATA"),
        (lambda step: (step / "data" / "metadata").write_text("{not json"), "data/metadata"),
        (lambda step: (step / "state" / "_sharding").unlink(), "state/_sharding is missing"),
        (lambda step: (step / checkpoint.MANIFEST).write_text("{"), "is unreadable"),
    ],
    ids=[
        "array-truncated",
        "metadata-garbage",
        "iterator-state-garbage",
        "file-missing",
        "manifest-garbage",
    ],
)
def test_each_kind_of_damage_is_named_and_the_previous_step_used(
    saved_run, tmp_path, capsys, damage, named
):
    workdir = _copy(saved_run, tmp_path)
    damage(workdir / "checkpoints" / "6")
    assert checkpoint.usable_step(str(workdir / "checkpoints")) == 4
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "step 6" in warnings[0] and named in warnings[0], warnings
    assert (workdir / "checkpoints" / "6").is_dir()  # reading (eval, init_from) moves nothing


def test_eval_scores_the_newest_intact_checkpoint(saved_run, tmp_path, capsys):
    workdir = _copy(saved_run, tmp_path)
    _garble(_largest_array_file(workdir / "checkpoints" / "6"))
    assert loop.evaluate(_config(6), str(workdir))["step"] == 4
    assert "step 6" in _warnings(capsys.readouterr().err)[0]


def test_with_no_intact_checkpoint_training_stops_with_one_line_and_moves_nothing(
    saved_run, tmp_path
):
    workdir = _copy(saved_run, tmp_path)
    for step in ("2", "4", "6"):
        _garble(_largest_array_file(workdir / "checkpoints" / step))
    with pytest.raises(UserError) as error:
        loop.train_and_evaluate(_config(8), str(workdir))
    message = str(error.value)
    assert "\n" not in message and "no checkpoint" in message and "step 2:" in message, message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
    assert not (workdir / "damaged_checkpoints").exists()


def test_unfinished_step_is_deleted_and_old_steps_without_manifests_restore_unverified(
    saved_run, tmp_path, capsys
):
    workdir = _copy(saved_run, tmp_path)
    checkpoints = workdir / "checkpoints"
    # Killed after Orbax finished step 6 but before its manifest was written.
    (checkpoints / "6" / checkpoint.MANIFEST).unlink()
    assert checkpoint.usable_step(str(checkpoints), resuming_workdir=str(workdir)) == 4
    assert "was not finished" in _warnings(capsys.readouterr().err)[0]
    assert sorted(os.listdir(checkpoints)) == ["2", "4"]

    # Saved by a dlx that wrote no manifests (and no mark in Orbax's step metadata).
    for step in ("2", "4"):
        (checkpoints / step / checkpoint.MANIFEST).unlink()
        metadata = checkpoints / step / "_CHECKPOINT_METADATA"
        metadata.write_text(json.dumps({**json.loads(metadata.read_text()), "custom_metadata": {}}))
    assert checkpoint.usable_step(str(checkpoints), resuming_workdir=str(workdir)) == 4
    assert "restoring it unverified" in _warnings(capsys.readouterr().err)[0]


def _fail_when(monkeypatch, module, name: str, failing: str):
    """`module.name` raises ENOSPC for paths containing `failing`, as on a full disk."""
    original = getattr(module, name)

    def patched(path, *args, **kwargs):
        if failing in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(module, name, patched)


@pytest.mark.parametrize("where", ["orbax-background-save", "manifest"])
def test_full_disk_during_a_save_stops_with_one_line_and_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, where
):
    if where == "manifest":
        _fail_when(monkeypatch, checkpoint, "replace_file", f"{os.sep}4{os.sep}")
    else:  # in Orbax's background thread, as its last write before the step is renamed final
        from orbax.checkpoint._src.path import async_path

        _fail_when(monkeypatch, async_path, "write_text", "4.orbax-checkpoint-tmp")
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        loop.train_and_evaluate(_config(8), str(workdir))
    message = str(error.value)
    assert "\n" not in message, message
    assert "step 4" in message and "No space left on device" in message, message
    assert "step 2 is the latest intact checkpoint" in message, message
    checkpoints = str(workdir / "checkpoints")
    assert checkpoint.check_step(os.path.join(checkpoints, "2")).status == "intact"
    assert checkpoint.usable_step(checkpoints) == 2
    assert not (workdir / workdir_lib.LOCK_NAME).exists()  # a failed run releases the workdir


_HOLD_LOCK = (
    "import sys, time; from dlx.train.workdir import WorkdirLock; "
    "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"
)


def test_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_stale(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(workdir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as error:
            loop.train_and_evaluate(_config(2), str(workdir))
        assert f"pid {holder.pid}" in str(error.value) and "\n" not in str(error.value)
        assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_NAME]  # nothing else written
    finally:
        holder.kill()
        holder.wait()
    assert (workdir / workdir_lib.LOCK_NAME).exists()  # left behind by kill -9 ...
    lock = workdir_lib.WorkdirLock(str(workdir))
    lock.acquire()  # ... and stale: no human needed
    lock.release()
    assert not (workdir / workdir_lib.LOCK_NAME).exists()


def test_without_flock_a_lock_record_is_stale_only_when_its_process_is_gone(tmp_path, monkeypatch):
    """Filesystems without locks: the record decides (pid and its start time, on this host)."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_locks)
    path = tmp_path / workdir_lib.LOCK_NAME
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for holder, refused in [
            ({"pid": int(finished), "host": os.uname().nodename}, False),
            ({"pid": live.pid, "host": os.uname().nodename}, True),
            (
                {"pid": live.pid, "host": os.uname().nodename, "pid_started": "0"},
                False,
            ),  # the pid was reused
            ({"pid": 1, "host": "another-host"}, True),
        ]:
            path.write_text(json.dumps(holder))
            lock = workdir_lib.WorkdirLock(str(tmp_path))
            if refused:
                with pytest.raises(UserError, match=f"delete {path}"):
                    lock.acquire()
            else:
                lock.acquire()
                assert json.loads(path.read_text())["pid"] == os.getpid()
                lock.release()
    finally:
        live.kill()
        live.wait()


def test_metrics_file_has_one_row_per_step_and_split_after_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "split": "train", "loss": 3.0},
        {"step": 2, "split": "train", "loss": 2.0},
        {"step": 2, "split": "eval", "loss": 2.5},
        {"step": 2, "split": "train", "loss": 2.0},
        {"step": 3, "split": "train", "loss": 1.0},
    ]
    # Two runs on the workdir (before the lock) doubled step 2; a kill cut the last line short.
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "spl')
    writer = MetricWriter(str(tmp_path), enabled=True, resume_step=2)
    writer.write(3, "train", {"loss": 1.5})
    writer.close()
    assert [(r["step"], r["split"]) for r in read_metrics(str(path))] == [
        (1, "train"),
        (2, "train"),
        (2, "eval"),
        (3, "train"),
    ]
    assert read_metrics(str(path))[-1]["loss"] == 1.5
