"""The optimizer study trains its runs (ordinary launch.py runs) and turns them into a report; run
here in this process, as `python experiments/optimizers.py` does. (The Shakespeare study:
test_sequence_tasks.py, whose tests read its runs.)"""

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
