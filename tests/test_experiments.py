"""The optimizer study runs through launch.py and turns its runs into a report."""
from __future__ import annotations

import subprocess
import sys

from helpers import REPO, launch_env


def test_optimizer_study_writes_report(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run(
        [sys.executable, "experiments/optimizers.py", "--config", "configs/digits_mlp.py",
         "--train_steps", "30", "--warmup_steps", "5", "--only", "sgd", "adadelta", "adam",
         "--out", str(out)],
        cwd=REPO, env=launch_env(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split("|")[1].strip() for row in rows] and len(rows) == 3
    assert {row.split("|")[1].strip() for row in rows} == {"sgd", "adadelta", "adam"}
    assert "python experiments/optimizers.py" in report
    assert (out / "loss_curves.png").stat().st_size > 10_000
    for name in ("sgd", "adadelta", "adam"):
        assert (out / name / "summary.json").is_file()
