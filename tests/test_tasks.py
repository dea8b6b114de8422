"""Tasks on real data: regression learns the diabetes data."""

from __future__ import annotations

from helpers import train


def test_regression_on_diabetes_beats_the_mean_predictor(tmp_path):
    workdir = tmp_path / "diabetes"
    summary = train(
        "configs/diabetes_mlp.py",
        workdir,
        {"num_epochs": 50.0, "eval_every_epochs": 25.0, "checkpoint_every_epochs": 50.0},
    )
    final = summary["final_eval"]
    assert set(final) == {"loss", "rmse", "r2"}
    assert final["r2"] > 0.2  # least squares reaches 0.33 on this 89-patient test split
    assert (workdir / "plots" / "rmse.png").is_file()
