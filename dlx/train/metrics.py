"""Metric writers (metrics.jsonl + TensorBoard, no TensorFlow) and learning-curve plots.

Only process 0 writes; other processes get a writer that drops everything.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict

import numpy as np

from dlx.errors import UserError
from dlx.train.workdir import write_atomically


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().split("\n")
    # Every record ends with a newline: a last line without one was cut short by a kill.
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch when it is installed (only to accept torch tensors, which dlx
    never passes): 1.2-2.3 s at the start of every run on a machine that has torch.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
        try:
            from tensorboardX import SummaryWriter
        finally:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        # Steps after the restored checkpoint will be trained again: drop their old lines so the
        # file reads like one uninterrupted run, with one line per step and split (the last).
        latest = {
            (r["step"], r["split"]): r for r in read_metrics(self.path) if r["step"] <= resume_step
        }
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in latest.values()))
        self._tb = _summary_writer_class()(
            os.path.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: the checkpoints saved so far are intact
            raise UserError(
                f"writing {self.path} failed ({e.strerror or e}); free space (or fix "
                f"the folder) and run the same command to resume"
            ) from None
        for name, value in values.items():
            if math.isfinite(value):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))

    def write_histograms(self, step: int, split: str, samples: dict) -> None:
        """TensorBoard histograms of value samples (numpy arrays), one per name."""
        if not self.enabled:
            return
        for name, values in samples.items():
            values = values[np.isfinite(values)]
            if values.size:
                self._tb.add_histogram(f"{split}/{name}", values, int(step))

    def close(self) -> None:
        if self._tb is None:
            return
        try:
            self._tb.close()
        except OSError as e:  # never masks the error that stopped the run (often the same disk)
            print(
                f"warning: TensorBoard events of {os.path.dirname(self.path)} are incomplete "
                f"({e.strerror or e})",
                file=sys.stderr,
                flush=True,
            )


def plot_curves(metrics_path: str, plots_dir: str) -> list[str]:
    """One PNG per metric that has an eval value (loss.png, accuracy.png, ...), train vs eval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(
        lambda: defaultdict(lambda: ([], []))
    )
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
            ax.plot(
                steps, values, marker="o" if split == "eval" else None, markersize=3, label=split
            )
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
