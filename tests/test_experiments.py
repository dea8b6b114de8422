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


def test_shakespeare_study_reports_each_model_with_curves_and_samples(tmp_path):
    out = tmp_path / "lm"
    result = subprocess.run(
        [sys.executable, "experiments/shakespeare_lm.py", "--variant", "test", "--out", str(out)],
        cwd=REPO, env=launch_env(2), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report.md").read_text()
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| ") and " M |" in line]
    assert [row[1].strip() for row in rows] == ["gpt", "lstm", "gru"]
    assert all(int(row[3]) == 6 and 0 < float(row[4]) < 5 for row in rows)  # steps, val loss
    assert report.count("Last sample of") == 3 and "python experiments/shakespeare_lm.py" in report
    assert (out / "validation_loss.png").stat().st_size > 10_000
