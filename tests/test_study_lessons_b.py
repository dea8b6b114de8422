"""The regularisation and batch-size studies, each in its --quick form (digits, a few steps, one
seed, a two-rate grid), run in this process as `python experiments/<study>.py --quick` does:
their reports name every arm and batch size, their figures are drawn, and what they claim holds
in their runs."""

from __future__ import annotations

import contextlib
import json

import jax
import numpy as np
import pytest

from experiments import batch_size, regularisation
from helpers import REPO


@pytest.fixture(scope="module", autouse=True)
def cache_every_compile():
    """A study's runs repeat programs that compile in under a second (each run's eval step),
    which JAX's persistent cache skips by default; here they are kept (a fifth of the time)."""
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)


def table_rows(report: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def figures_drawn(directory, names) -> None:
    for name in names:
        assert (directory / name).stat().st_size > 10_000, name


def test_regularisation_quick_study(tmp_path):
    out = tmp_path / "regularisation"
    with contextlib.chdir(REPO):
        regularisation.main(["--quick", "--out", str(out)])
    report = (out / "report.md").read_text()

    rows = {row[0]: row for row in table_rows(report, "| arm | setting |")}
    assert list(rows) == ["none", "L1 1e-04", "early stopping"]
    assert "python experiments/regularisation.py --quick" in report
    figures_drawn(out, ["curves.png", "test_loss.png", "gap.png", "first_layer_weights.png"])

    setup = regularisation.QUICK
    seeds = {f"seed_{seed}" for seed in setup.seeds}
    # Only `none` sweeps the grid in --quick; L1 trains at the rate `none` chose.
    assert {p.name for p in (out / "none").iterdir()} == {
        *(f"lr_{rate:g}" for rate in setup.learning_rates),
        *seeds,
    }
    assert {p.name for p in (out / "l1_1e-04").iterdir()} == seeds
    rates = {arm: float(row[2]) for arm, row in rows.items()}
    assert rates["L1 1e-04"] == rates["none"] in setup.learning_rates
    # Train accuracy is the final checkpoint scored on the training images, kept with the run.
    none_seed = out / "none" / "seed_0"
    records = [
        json.loads(line) for line in (none_seed / "eval_results.jsonl").read_text().splitlines()
    ]
    scored = [r for r in records if r["split"] == setup.train_split]
    test = json.loads((none_seed / "summary.json").read_text())["final_eval"]["accuracy"]
    assert scored and scored[-1]["accuracy"] > test  # 200 images are memorised
    # L1 drives first-layer weights to zero: the weight table's near-zero fractions (mean ± sd).
    weights = {row[0]: row for row in table_rows(report, "| arm | fraction")}
    near_zero = {arm: float(row[1].split(" ± ")[0]) for arm, row in weights.items()}
    assert near_zero["L1 1e-04"] > 5 * near_zero["none"] + 1.0


def test_batch_size_quick_study(tmp_path):
    out = tmp_path / "batch_size"
    with contextlib.chdir(REPO):
        batch_size.main(["--quick", "--out", str(out)])
    report = (out / "report.md").read_text()
    setup = batch_size.QUICK

    best = table_rows(report, "| batch size | steps |")
    assert [int(row[0]) for row in best] == list(setup.batch_sizes)
    grid = table_rows(report, "| batch size | lr ")
    assert [len(row) for row in grid] == [1 + len(setup.learning_rates)] * len(setup.batch_sizes)
    assert "python experiments/batch_size.py --quick" in report
    figures_drawn(out, ["heatmap.png", "best_lr.png", "accuracy_curves.png"])

    for row in best:
        size, steps, rate = int(row[0]), int(row[1]), float(row[2].split()[0])
        # The chosen rate is the grid's best on validation, and every seed trained with it for
        # the same epoch budget: fewer steps for the larger batch.
        sweep = {
            lr: json.loads((out / f"batch_{size}" / f"lr_{lr:g}" / "summary.json").read_text())
            for lr in setup.learning_rates
        }
        scores = {lr: s["final_eval"]["accuracy"] for lr, s in sweep.items()}
        assert rate == max(scores, key=scores.get)
        for seed in setup.seeds:
            run = out / f"batch_{size}" / f"seed_{seed}"
            config = json.loads((run / "config.json").read_text())
            assert config["data"]["batch_size"] == size
            assert config["optimizer"]["learning_rate"] == rate
            assert json.loads((run / "summary.json").read_text())["steps"] == steps
    assert int(best[0][1]) > int(best[-1][1])
    # The linear rule's column is the reference batch's best rate scaled by batch size.
    reference = float(best[0][2].split()[0])
    for row in best:
        assert np.isclose(float(row[3]), reference * int(row[0]) / setup.batch_sizes[0])
