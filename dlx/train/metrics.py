"""Metric writers (metrics.jsonl + TensorBoard, no TensorFlow) and learning-curve plots.

Only process 0 writes; other processes get a writer that drops everything.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        # Steps after the restored checkpoint will be trained again: drop their old lines so the
        # file reads like one uninterrupted run.
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_curves(metrics_path: str, plots_dir: str) -> list[str]:
    """One PNG per metric that has an eval value (loss.png, accuracy.png, ...), train vs eval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for record in read_metrics(metrics_path):
        for name, value in record.items():
            if name not in ("step", "split"):
                steps, values = series[name][record["split"]]
                steps.append(record["step"])
                values.append(value)
    written = []
    for name, by_split in series.items():
        if "eval" not in by_split:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, (steps, values) in sorted(by_split.items(), reverse=True):
            ax.plot(steps, values, marker="o" if split == "eval" else None, markersize=3, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if name == "loss" and all(v > 0 for _, vs in by_split.values() for v in vs):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(plots_dir, f"{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
