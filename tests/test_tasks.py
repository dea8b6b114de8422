"""Tasks on real data through launch.py: regression learns the diabetes data."""
from __future__ import annotations

import json

from helpers import launch


def test_regression_on_diabetes_beats_the_mean_predictor(tmp_path):
    workdir = tmp_path / "diabetes"
    result = launch("--config", "configs/diabetes_mlp.py", "--workdir", str(workdir),
                    "--config.num_epochs=50", "--config.eval_every_epochs=25",
                    "--config.checkpoint_every_epochs=50", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((workdir / "summary.json").read_text())["final_eval"]
    assert set(final) == {"loss", "rmse", "r2"}
    assert final["r2"] > 0.2  # least squares reaches 0.33 on this 89-patient test split
    assert (workdir / "plots" / "rmse.png").is_file()
