"""What every study shares: its runs are ordinary `launch.py` runs (resumable, reproducible from
their workdir like any other), trained one after another in the study's own process (one start-up
and one compilation cache for them all), and it reads them back from their metrics.jsonl."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def launch_run(config: str, workdir: Path, overrides: dict, label: str) -> Path:
    """Runs (or resumes, or finds finished) `launch.py --config config --workdir workdir` with
    `--config.key=value` for each override, in this process; exits as launch.py does if the run
    fails (code 2 for bad input, 1 for a loss that became NaN)."""
    import launch

    argv = [
        "launch.py",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    print(f"[{label}] python {shlex.join(argv)}", flush=True)
    launch.main(argv)
    return workdir


def training_seconds(records: list[dict]) -> dict[int, float]:
    """Seconds of training (evals excluded, compilation included) up to each logged train step,
    from the steps/s of each logging window in a run's metrics.jsonl."""
    seconds, elapsed, previous_step = {}, 0.0, 0
    for record in records:
        if record["split"] != "train":
            continue
        elapsed += (record["step"] - previous_step) / record["steps_per_sec"]
        previous_step = seconds_step = record["step"]
        seconds[seconds_step] = elapsed
    return seconds


def write_report(out: Path, lines: list[str], workdir_pattern: str, command: str) -> Path:
    """Writes `lines` as out/report.md, ending with where the runs are and the command that
    regenerates the report."""
    lines = lines + [
        f"Each run's workdir is `{workdir_pattern}`. Regenerate with:",
        "",
        f"    {command}",
        "",
    ]
    report = Path(out) / "report.md"
    report.write_text("\n".join(lines))
    return report
