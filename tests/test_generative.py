"""The generative family, each a task plug-in run end to end in-process on Fashion-MNIST with
tiny models: autoencoders (plain, denoising, anomaly detection), the VAE and the DCGAN."""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest

from dlx import inference
from dlx.train import config as config_lib
from dlx.train import loop
from helpers import eval_records, train, train_losses


def _run(spec: str, workdir, **changes) -> dict:
    """A run in this process; `a__b=v` sets config.a.b."""
    return train(spec, workdir, {k.replace("__", "."): v for k, v in changes.items()})


def test_autoencoder_reconstructs_and_writes_its_figure(tmp_path):
    summary = _run(
        "configs/fashion_autoencoder.py:test", tmp_path / "ae", train_steps=20, eval_every_steps=10
    )
    evals = eval_records(tmp_path / "ae")
    assert [r["step"] for r in evals] == [10, 20]
    assert evals[1]["loss"] < evals[0]["loss"]  # per image, summed over 784 pixels
    assert 0 < summary["final_eval"]["mse"] < 0.2
    assert (tmp_path / "ae" / "plots" / "reconstructions.png").is_file()


def test_anomaly_detection_trains_without_the_held_out_class_and_scores_its_auroc(tmp_path):
    config = config_lib.load("configs/fashion_autoencoder.py:test")
    config.autoencoder.holdout_class = 0
    run = loop.prepare_run(config)
    train = run.task.source("train", train=True)
    assert len(train) == 54_000 and 0 not in set(train.columns["label"][:5000])
    assert run.task.examples_per_epoch() == 54_000
    summary = _run(
        "configs/fashion_autoencoder.py:test", tmp_path / "anomaly", autoencoder__holdout_class=0
    )
    assert 0.0 <= summary["final_eval"]["auroc"] <= 1.0


def test_denoising_autoencoder_draws_its_noise_from_the_step_key(tmp_path):
    a = _run("configs/fashion_autoencoder.py:test", tmp_path / "a", autoencoder__noise_std=0.3)
    b = _run("configs/fashion_autoencoder.py:test", tmp_path / "b", autoencoder__noise_std=0.3)
    c = _run("configs/fashion_autoencoder.py:test", tmp_path / "c")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    assert train_losses(tmp_path / "a") != train_losses(tmp_path / "c")
    assert a["final_eval"] == b["final_eval"] != c["final_eval"]


def test_vae_reports_elbo_and_a_tighter_importance_sampled_nll(tmp_path):
    summary = _run(
        "configs/fashion_vae.py:test",
        tmp_path / "vae",
        train_steps=30,
        eval_every_steps=30,
        vae__importance_samples=20,
    )
    final = summary["final_eval"]
    # the IWAE bound: -log p(x) <= E[-log w_1..k averaged] <= -ELBO (per image, in nats)
    assert 0 < final["nll"] < final["negative_elbo"] < 784 * np.log(2)
    records = [
        json.loads(line) for line in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()
    ]
    weights = [r["kl_weight"] for r in records if r["split"] == "train"]
    assert weights[0] < weights[-1] == 1.0  # KL warm-up over the first 4 steps
    for figure in ("samples", "reconstructions", "interpolation"):
        assert (tmp_path / "vae" / "plots" / f"{figure}.png").is_file()
    out = io.StringIO()
    path = inference.load(str(tmp_path / "vae")).sample({"num_samples": 9, "seed": 3}, out)
    assert path.endswith("samples/prior_seed3.png") and "9 samples" in out.getvalue()


def test_dcgan_checkpoints_both_players_and_resumes_exactly(tmp_path):
    whole = _run("configs/fashion_dcgan.py:test", tmp_path / "whole", eval_every_steps=6)
    assert set(whole["final_eval"]) == {"d_accuracy", "d_real", "d_fake"}
    assert (tmp_path / "whole" / "plots" / "samples.png").is_file()
    _run("configs/fashion_dcgan.py:test", tmp_path / "resumed", train_steps=3, eval_every_steps=6)
    resumed = _run("configs/fashion_dcgan.py:test", tmp_path / "resumed", eval_every_steps=6)
    assert resumed["resumed_from_step"] == 3
    records = {
        name: [
            json.loads(line)
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        for name in ("whole", "resumed")
    }
    pick = lambda rs: [
        (r["step"], r["d_loss"], r["g_loss"])
        for r in rs  # noqa: E731
        if r["split"] == "train"
    ]
    assert pick(records["resumed"]) == pick(records["whole"])
    assert resumed["final_eval"] == whole["final_eval"]
    bundle = inference.load(str(tmp_path / "resumed"))
    leaves = jax.tree.leaves(bundle.state)
    assert bundle.step == 6 and all(np.all(np.isfinite(leaf)) for leaf in leaves)


@pytest.mark.parametrize(
    "spec, error",
    [
        ("configs/fashion_vae.py:test", "variational=True"),
        ("configs/fashion_autoencoder.py:test", "holdout_class=12"),
    ],
)
def test_bad_generative_configs_are_one_clear_error(tmp_path, spec, error):
    changes = {"model__variational": False} if "vae" in spec else {"autoencoder__holdout_class": 12}
    with pytest.raises(config_lib.ConfigError, match=error):
        _run(spec, tmp_path / "bad", **changes)
    assert not (tmp_path / "bad").exists()


def test_a_per_example_evaluator_gives_the_same_result_over_two_processes(tmp_path):
    """Two processes (2 CPU devices each) each hold half of every eval batch; the per-example
    values come back whole on both, so the AUROC, a statistic of the whole split, equals the
    one-process result on as many devices (in this process)."""
    import subprocess

    from helpers import REPO, free_port, launch_command, launch_env

    args = [
        "--config",
        "configs/fashion_autoencoder.py:test",
        "--config.eval_every_steps=6",
        "--config.autoencoder.holdout_class=0",
    ]
    port = free_port()
    two = [
        *args,
        "--workdir",
        str(tmp_path / "two"),
        "--coordinator_address",
        f"127.0.0.1:{port}",
        "--num_processes",
        "2",
    ]
    processes = [
        subprocess.Popen(
            launch_command(*two, "--process_id", str(i)),
            cwd=REPO,
            env=launch_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    one = train(
        "configs/fashion_autoencoder.py:test",
        tmp_path / "one",
        {"eval_every_steps": 6, "autoencoder.holdout_class": 0},
        devices=4,
    )
    a = json.loads((tmp_path / "two" / "summary.json").read_text())["final_eval"]
    b = one["final_eval"]
    assert set(a) == {"loss", "mse", "auroc"}
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
