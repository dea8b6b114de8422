"""The studies train their runs (ordinary launch.py runs) and turn them into a report; run here
in this process, as `python experiments/<study>.py` does."""

from __future__ import annotations

import contextlib

from experiments import optimizers
from helpers import REPO


def test_optimizer_study_writes_report(tmp_path):
    out = tmp_path / "study"
    with contextlib.chdir(REPO):
        optimizers.main(
            [
                "--config",
                "configs/digits_mlp.py",
                "--train_steps",
                "30",
                "--warmup_steps",
                "5",
                "--only",
                "sgd",
                "adadelta",
                "adam",
                "--out",
                str(out),
            ]
        )
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split("|")[1].strip() for row in rows] and len(rows) == 3
    assert {row.split("|")[1].strip() for row in rows} == {"sgd", "adadelta", "adam"}
    assert "python experiments/optimizers.py" in report
    assert (out / "loss_curves.png").stat().st_size > 10_000
    for name in ("sgd", "adadelta", "adam"):
        assert (out / name / "summary.json").is_file()


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
