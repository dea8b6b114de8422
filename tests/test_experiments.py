"""The optimizer study trains its runs (ordinary launch.py runs) and turns them into a report; run
here in this process, as `python experiments/optimizers.py` does. (The Shakespeare study:
test_sequence_tasks.py, whose tests read its runs.)"""

from __future__ import annotations

import contextlib
import dataclasses
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


def test_a_sweep_whose_best_rate_is_at_the_grids_edge_goes_on_past_it(tmp_path, monkeypatch):
    """Validation accuracy peaks at rate 0.08 (outside the grid 0.01, 0.02): the sweep adds 0.04
    and 0.08 (the grid's ratio, twice), stops there, and the seeds train at 0.08; a peak inside
    the grid adds nothing; a loss (lower is better) falling towards small rates extends down."""
    from experiments import common

    def fake_training(peak: float, higher_is_better: bool):
        def launch_or_diverge(config, workdir, run, label):
            workdir.mkdir(parents=True, exist_ok=True)
            distance = abs(np.log(run["optimizer.learning_rate"] / peak))
            score = 0.9 - 0.1 * distance if higher_is_better else 0.1 + distance
            summary = {"final_eval": {"accuracy" if higher_is_better else "loss": score}}
            (workdir / "summary.json").write_text(json.dumps(summary))
            (workdir / "config.json").write_text(
                json.dumps({"optimizer": {"learning_rate": run["optimizer.learning_rate"]}})
            )
            return True

        monkeypatch.setattr(common, "launch_or_diverge", launch_or_diverge)

    protocol = common.Protocol("unused.py", tmp_path / "up", {}, seeds=(0, 1))
    fake_training(peak=0.08, higher_is_better=True)
    arm = common.tune_and_repeat(protocol, "arm", {}, [0.01, 0.02])
    assert list(arm.sweep) == [0.01, 0.02, 0.04, 0.08] and arm.extended == (0.04, 0.08)
    assert arm.learning_rate == 0.08 and arm.at_grid_edge()  # still rising after 2 more
    for seed in (0, 1):
        config = json.loads((tmp_path / "up" / "arm" / f"seed_{seed}" / "config.json").read_text())
        assert config["optimizer"]["learning_rate"] == 0.08
    note = " ".join(common.grid_edge_note([arm]))
    assert "arm to 0.04, 0.08" in note and "still the smallest or largest" in note

    fake_training(peak=0.015, higher_is_better=True)
    inside = common.tune_and_repeat(
        dataclasses.replace(protocol, out=tmp_path / "in"), "arm", {}, [0.01, 0.015, 0.02]
    )
    assert list(inside.sweep) == [0.01, 0.015, 0.02] and not inside.extended
    assert common.grid_edge_note([inside]) == []

    fake_training(peak=0.001, higher_is_better=False)
    lower = dataclasses.replace(protocol, out=tmp_path / "down", higher_is_better=False)
    down = common.tune_and_repeat(lower, "arm", {}, [0.01, 0.03])
    assert down.extended == (0.00111, 0.00333) and down.learning_rate == 0.00111

    no_extension = dataclasses.replace(protocol, out=tmp_path / "quick", grid_extensions=0)
    fake_training(peak=0.08, higher_is_better=True)
    assert list(common.tune_and_repeat(no_extension, "arm", {}, [0.01, 0.02]).sweep) == [
        0.01,
        0.02,
    ]
