"""kill -9 a training run at random points, resume it each time, and check that it ends exactly
as an uninterrupted run does. Run by hand (minutes; pytest does not collect it):

    .venv/bin/python tests/kill_anywhere.py [--kills 20] [--seed 0] [--folder /tmp/kill_anywhere]

The kills take turns aiming at the phases where a run is most fragile: during a train step, an
evaluation, Orbax's asynchronous save (its *.orbax-checkpoint-tmp folder exists), and the moment
after Orbax finished a step and before dlx wrote its checksum manifest; each aims at a random
step. After each kill the workdir is inspected to record what was in flight. At the end: every
train and eval row equals the uninterrupted run's bit for bit, no (step, split) row is doubled,
no temporary folder or lock is left, every kept checkpoint is intact, and no run printed a
traceback. Exit code 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dlx.train import checkpoint
from dlx.train.metrics import read_metrics
from helpers import REPO, launch_command, launch_env

STEPS = 600
ARGS = [
    "--config",
    "configs/digits_mlp.py",
    "--config.num_epochs=0",
    f"--config.train_steps={STEPS}",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=5",
    "--config.eval_every_steps=10",
    "--config.keep_checkpoints=1",
    "--config.data.eval_batch_size=24",
]
PHASES = ("step", "eval", "save", "manifest")


def _start(workdir: Path, log: Path) -> subprocess.Popen:
    env = launch_env(8)
    return subprocess.Popen(
        launch_command(*ARGS, "--workdir", str(workdir)),
        cwd=REPO,
        env=env,
        stdout=open(log.with_suffix(".out"), "w"),
        stderr=open(log.with_suffix(".err"), "w"),
    )


def _rows(workdir: Path) -> list[dict]:
    try:
        return read_metrics(str(workdir / "metrics.jsonl"))
    except (OSError, ValueError):  # being rewritten at the moment
        return []


def _train_step(workdir: Path) -> int:
    return max((r["step"] for r in _rows(workdir) if r["split"] == "train"), default=0)


def _step_dirs(workdir: Path) -> list[Path]:
    folder = workdir / "checkpoints"
    return (
        sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if folder.is_dir()
        else []
    )


def _saving(workdir: Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any("orbax-checkpoint-tmp" in p.name for p in folder.iterdir())


def _unsealed(workdir: Path) -> bool:
    steps = _step_dirs(workdir)
    return bool(steps) and not (steps[-1] / checkpoint.MANIFEST).exists()


def _evaluating(workdir: Path) -> bool:
    rows = _rows(workdir)
    step = max((r["step"] for r in rows if r["split"] == "train"), default=0)
    return (
        step % 10 == 0
        and step > 0
        and not any(r["split"] == "eval" and r["step"] == step for r in rows)
    )


def _in_flight(workdir: Path) -> str:
    """What the killed run left in progress, read from its workdir."""
    seen = []
    if _saving(workdir):
        seen.append("async save (tmp folder)")
    if _unsealed(workdir):
        seen.append(f"step {_step_dirs(workdir)[-1].name} finished by Orbax, no manifest yet")
    if _evaluating(workdir):
        seen.append("evaluation")
    return ", ".join(seen) or "train step"


def _kill_when(
    process: subprocess.Popen,
    workdir: Path,
    phase: str,
    target: int,
    rng: random.Random,
    timeout: float = 300,
) -> bool:
    """Kills the run in `phase` at or after step `target`; False if it finished first."""
    ready = {
        "step": lambda: True,
        "eval": lambda: _evaluating(workdir),
        "save": lambda: _saving(workdir),
        "manifest": lambda: _unsealed(workdir),
    }[phase]
    deadline = time.time() + timeout
    while _train_step(workdir) < target:
        if process.poll() is not None:
            return False
        if time.time() > deadline:
            raise TimeoutError(f"the run never reached step {target}")
        time.sleep(0.005)
    while not ready():  # the phases last milliseconds: poll fast
        if process.poll() is not None:
            return False
        if time.time() > deadline:
            raise TimeoutError(f"the run never reached {phase} after step {target}")
    if phase == "step":
        time.sleep(rng.uniform(0, 0.05))
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _compared(rows: list[dict]) -> dict[tuple[int, str], dict]:
    return {
        (r["step"], r["split"]): {k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "kill_anywhere"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "logs").mkdir(parents=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder / "jax-cache"))
    reference, workdir = folder / "reference", folder / "killed"

    t0 = time.time()
    done = _start(reference, folder / "logs" / "reference")
    assert done.wait() == 0, (folder / "logs" / "reference.err").read_text()[-3000:]
    print(f"reference: {STEPS} uninterrupted steps in {time.time() - t0:.0f} s", flush=True)

    failures, kills = [], 0
    for i in range(args.kills):
        phase = PHASES[i % len(PHASES)]
        log = folder / "logs" / f"run{i:02d}"
        process = _start(workdir, log)
        target = _train_step(workdir) + rng.randint(3, 25)
        if not _kill_when(process, workdir, phase, target, rng):
            print(f"kill {i + 1}: the run finished before step {target}; no more kills")
            break
        kills += 1
        print(
            f"kill {i + 1:2d} aimed at {phase:8s} after step {target:3d}: killed at train step "
            f"{_train_step(workdir):3d}, in flight: {_in_flight(workdir)}",
            flush=True,
        )
    final = _start(workdir, folder / "logs" / "final")
    if final.wait() != 0:
        failures.append(f"the final resume exited {final.returncode}")

    for err in sorted((folder / "logs").glob("*.err")):
        text = err.read_text()
        if "Traceback" in text or "error:" in text:
            failures.append(f"{err.name} printed a traceback or an error")
        for line in text.splitlines():
            if line.startswith("warning:"):
                print(f"  {err.stem}: {line}")
    for out in sorted((folder / "logs").glob("run*.out")) + [folder / "logs" / "final.out"]:
        resumed = [line for line in out.read_text().splitlines() if line.startswith("Resumed")]
        print(f"  {out.stem}: {resumed[0] if resumed else 'started from scratch'}")
    rows, expected = _rows(workdir), _rows(reference)
    doubled = [key for key, n in Counter((r["step"], r["split"]) for r in rows).items() if n > 1]
    if doubled:
        failures.append(f"doubled metrics rows {doubled[:5]}")
    if _compared(rows) != _compared(expected):
        differ = sorted(
            k
            for k in _compared(expected).keys() | _compared(rows).keys()
            if _compared(rows).get(k) != _compared(expected).get(k)
        )
        failures.append(f"{len(differ)} rows differ from the uninterrupted run, first {differ[:5]}")
    summary = json.loads((workdir / "summary.json").read_text())
    reference_eval = json.loads((reference / "summary.json").read_text())["final_eval"]
    if summary["final_eval"] != reference_eval:
        failures.append(f"final eval {summary['final_eval']} != {reference_eval}")
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir() if not p.name.isdigit()] + [
        p.name for p in workdir.glob("run.lock")
    ]
    if leftovers:
        failures.append(f"left behind: {leftovers}")
    for step in _step_dirs(workdir):
        if checkpoint.check_step(str(step)).status != "intact":
            failures.append(f"checkpoint {step.name} is not intact")

    print(
        f"{kills} kills, then a final resume: {len(rows)} metrics rows, "
        f"{len(_step_dirs(workdir))} checkpoints kept, {time.time() - t0:.0f} s in all"
    )
    for failure in failures:
        print(f"FAIL: {failure}")
    print("all resumed runs match the uninterrupted one bit for bit" if not failures else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
