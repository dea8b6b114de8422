"""A trained run loaded for use (dlx.inference): predictions equal the run's own evaluation,
with no data set opened."""

from __future__ import annotations

import numpy as np
import pytest

from dlx import data as data_lib
from dlx import inference
from dlx.tasks.base import Task
from helpers import train


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "digits"
    summary = train("configs/digits_mlp.py", workdir, {"num_epochs": 0.0, "train_steps": 20})
    return workdir, summary


def test_a_run_loads_and_predicts_without_its_data_set(digits_run, monkeypatch):
    workdir, summary = digits_run
    source = data_lib.source("digits", "test")
    images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    labels = np.array([int(source[i]["label"]) for i in range(len(source))])

    def no_data(*args, **kwargs):
        raise AssertionError("loading a run for inference opened its data set")

    monkeypatch.setattr(data_lib, "prepare", no_data)
    monkeypatch.setattr(data_lib, "info", no_data)
    monkeypatch.setattr(Task, "source", no_data)
    bundle = inference.load(str(workdir))
    assert bundle.step == 20 and bundle.task.data_info.num_classes == 10
    logits = np.asarray(bundle({"image": images, "label": labels}))
    assert logits.shape == (len(labels), 10)
    accuracy = float(np.mean(np.argmax(logits, -1) == labels))
    assert accuracy == pytest.approx(summary["final_eval"]["accuracy"], abs=1e-6)
