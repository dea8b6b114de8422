"""The optimizer study trains its runs (ordinary launch.py runs) and turns them into a report; run
here in this process, as `python experiments/optimizers.py` does. (The Shakespeare study:
test_sequence_tasks.py, whose tests read its runs.)"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from experiments import optimizers
from helpers import REPO


def test_optimizer_study_tunes_each_rate_repeats_seeds_and_reports(tmp_path):
    out, report_dir = tmp_path / "runs", tmp_path / "report"
    with contextlib.chdir(REPO):
        optimizers.main(
            ["--quick", "--only", "sgd", "adam", "--out", str(out), "--report_dir", str(report_dir)]
        )
    report = (report_dir / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "±" in line]
    assert [row.split("|")[1].strip() for row in rows] in (["sgd", "adam"], ["adam", "sgd"])
    for name in ("sgd", "adam"):
        grid = optimizers.learning_rates(name, quick=True)
        assert len(grid) == 2
        validation_scores = []
        for rate in grid:  # the sweep scores the held-out validation split, seed 0
            config = json.loads((out / name / f"lr_{rate:g}" / "config.json").read_text())
            assert config["data"]["eval_split"] == "train[90%:]" and config["seed"] == 0
            assert config["optimizer"]["learning_rate"] == rate
            summary = json.loads((out / name / f"lr_{rate:g}" / "summary.json").read_text())
            validation_scores.append(summary["final_eval"]["accuracy"])
        chosen = grid[int(np.argmax(validation_scores))]
        for seed in (0, 1):  # then every seed at the chosen rate, on the test split
            config = json.loads((out / name / f"seed_{seed}" / "config.json").read_text())
            assert config["seed"] == seed and config["data"]["eval_split"] == "test"
            assert config["optimizer"]["learning_rate"] == chosen
        row = next(r for r in rows if r.split("|")[1].strip() == name)
        assert f"| {chosen:g} |" in row
    assert "## What we expected / what we measured" in report
    assert "python experiments/optimizers.py --quick" in report
    assert (report_dir / "loss_curves.png").stat().st_size > 10_000


def test_a_seed_run_trained_at_a_rate_the_sweep_no_longer_chooses_is_set_aside(tmp_path):
    from experiments import common

    def seed_run(name: str, rate: float):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps({"optimizer": {"learning_rate": rate}}))
        return workdir

    kept = seed_run("seed_1", 0.01)
    common.set_aside_if_trained_at_another_rate(kept, 0.01)
    assert kept.is_dir()
    stale = seed_run("seed_0", 0.01)
    common.set_aside_if_trained_at_another_rate(stale, 0.003)
    assert not stale.exists()
    assert json.loads((tmp_path / "superseded" / "seed_0_lr_0.01" / "config.json").read_text())
    common.set_aside_if_trained_at_another_rate(tmp_path / "seed_2", 0.003)  # not trained yet
