"""Three lesson studies in their --quick form (activations, initialisation, receptive fields):
each trains its runs in this process, as `python experiments/<name>.py --quick` does, writes its
report, figures and results.json, and measures what its lesson is about."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from experiments import activations, initialisation, receptive_fields
from helpers import REPO


def _run_quick(study, tmp_path: Path) -> tuple[str, dict, Path]:
    """(report.md, results.json, the report folder) of a study's --quick run."""
    report_dir = tmp_path / "report"
    with contextlib.chdir(REPO):
        study.main(["--quick", "--out", str(tmp_path / "runs"), "--report_dir", str(report_dir)])
    results = json.loads((report_dir / "results.json").read_text())
    return (report_dir / "report.md").read_text(), results, report_dir


def _table(report: str, header_start: str) -> list[list[str]]:
    """The cells of each row of the markdown table whose header begins with `header_start`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _has_figures(report_dir: Path, names: list[str]) -> None:
    for name in names:
        assert (report_dir / name).stat().st_size > 10_000, name


def test_activations_study(tmp_path):
    report, results, report_dir = _run_quick(activations, tmp_path)
    functions = _table(report, "| activation | f(0)")
    assert [row[0] for row in functions] == list(activations.ACTIVATIONS)
    trained = _table(report, "| activation | learning-rate grid")
    assert sorted(row[0] for row in trained) == sorted(activations.QUICK_ACTIVATIONS)
    assert all("%" in row[3] for row in trained)  # test accuracy, mean ± spread
    # ReLU's rate is the better of its two on the validation split; the step has one, no sweep
    sweep = results["arms"]["relu"]["sweep"]
    assert len(sweep) == 2 and results["arms"]["step"]["sweep"] == {}
    assert results["arms"]["relu"]["learning_rate"] == float(max(sweep, key=sweep.get))
    _has_figures(report_dir, ["functions.png", "curves.png", "dead_units.png"])
    assert "python experiments/activations.py --quick" in report

    # the step's derivative, as backpropagation sees it, is 0 everywhere; ReLU's at x <= 0
    step = results["functions"]["step"]
    assert step["zero_derivative_share"] == 1.0 and step["max_abs_derivative"] == 0.0
    x = activations.CURVE_X
    assert results["functions"]["relu"]["zero_derivative_share"] == pytest.approx((x <= 0).mean())
    assert results["functions"]["tanh"]["zero_derivative_share"] == 0.0
    # so the step network's hidden layers never get a gradient, the ReLU network's do
    arms = results["arms"]
    assert arms["step"]["hidden_grad_norm_max"] == [0.0]
    assert all(norm > 0 for norm in arms["relu"]["hidden_grad_norm_max"])


def test_initialisation_study(tmp_path):
    report, results, report_dir = _run_quick(initialisation, tmp_path)
    expected = sorted(
        ("relu", initialisation.INITIALISATIONS[name.split("/")[1]])
        for name in initialisation.QUICK_ARMS
    )
    for header in ("| activation | initialisation | std", "| activation | initialisation | learn"):
        assert sorted((row[0], row[1]) for row in _table(report, header)) == expected
    _has_figures(report_dir, ["layer_profiles.png", "curves.png"])

    # zeros: every hidden output is exactly 0, no hidden kernel gets a gradient, chance level
    zeros = results["relu/zeros"]
    for seed in zeros["at_init"]:
        assert set(seed["zero_fraction"]) == {1.0} and set(seed["grad_norm"]) == {0.0}
    assert max(zeros["test_accuracy"]) < 0.2
    # N(0, 0.01^2) shrinks the signal layer after layer; He keeps it
    for seed in results["relu/normal_0.01"]["at_init"]:
        assert seed["activation_std"][-1] < 1e-4 * seed["activation_std"][0]
    for seed in results["relu/he_normal"]["at_init"]:
        assert 0.2 < seed["activation_std"][-1] / seed["activation_std"][0] < 5
        assert all(0 < norm < 1e3 for norm in seed["grad_norm"])


def test_receptive_fields_study(tmp_path):
    report, results, report_dir = _run_quick(receptive_fields, tmp_path)
    rows = _table(report, "| model / layer")
    names = ["cnn/conv_0", "cnn/conv_1"] + [f"resnet/stage{i}_block1" for i in (1, 2, 3)]
    assert [row[0] for row in rows] == names == list(results)
    _has_figures(report_dir, ["effective_fields.png"])
    # 3x3 conv, 2x2 pool, 3x3 conv, 2x2 pool: 10 pixels
    assert results["cnn/conv_1"]["side"] == 10
    for name, row in results.items():
        low, high = row["clipped"]
        for when in ("init", "trained"):
            # no gradient reaches the input outside the theoretical field
            assert row[f"{when}_outside"] == [0.0], name
            assert all(side <= high - low + 1 for side in row[f"{when}_side"]), name
    # a ResNet whose blocks start as their shortcuts sees through its 3x3 stem alone at init
    for name in names[2:]:
        assert all(side <= 3 for side in results[name]["init_side"]), name
