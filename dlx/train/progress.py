"""Training progress as a person or a batch job's log wants it.

On a terminal: a tqdm bar (carriage returns) with the watched metrics and the throughput. When
stdout is not a terminal (a SLURM log, a pipe): one plain line every `PLAIN_INTERVAL_S` seconds
at most, plus the first and the last, with the step, the metrics, examples/s (tokens/s for token
sequences), steps/s, model FLOP/s and MFU where the task gives a FLOPs count, and the ETA.

MFU is the model's FLOPs per step (the task's count: forward + backward, matmuls only) times
steps/s, over the peak of the devices as measured here: one square matmul in the model's dtype,
so the number is against what this machine reaches, not a datasheet.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import Any, TextIO

import jax
import jax.numpy as jnp

PLAIN_INTERVAL_S = 30.0


@dataclasses.dataclass(frozen=True)
class Throughput:
    """What one train step processes: `units_per_step` of `unit` ("examples" or "tokens"), and
    the model FLOPs of the step with the peak FLOP/s of the devices running it, when known."""

    unit: str
    units_per_step: float
    flops_per_step: float | None = None
    peak_flops: float | None = None

    def rates(self, steps_per_sec: float) -> dict[str, float]:
        """{"<unit>_per_sec", "model_flops_per_sec", "mfu"} at `steps_per_sec` (the last two
        where the task counts FLOPs; mfu where the peak is known)."""
        rates = {f"{self.unit}_per_sec": self.units_per_step * steps_per_sec}
        if self.flops_per_step:
            rates["model_flops_per_sec"] = self.flops_per_step * steps_per_sec
            if self.peak_flops:
                rates["mfu"] = rates["model_flops_per_sec"] / self.peak_flops
        return rates


def measure_matmul_peak(dtype: str = "float32", device=None) -> float:
    """FLOP/s of one square matmul on `device` (best of 3 after a warm-up): 2048^2 on CPU,
    8192^2 on accelerators (large enough to reach their tensor units' rate). Measured once per
    process, dtype and device: a study's runs in one process share it (~2 s each on 2 cores)."""
    return _matmul_peak(dtype, device or jax.local_devices()[0])


@functools.cache
def _matmul_peak(dtype: str, device) -> float:
    n = 2048 if device.platform == "cpu" else 8192
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def throughput_of(
    task, batch_size: int, model_dtype: str = "float32", measure_peak: bool = True
) -> Throughput:
    """The task's throughput unit and FLOPs count per global step; the peak of all devices of
    the run (on CPU, every device of a process shares the host's cores: the peak counts once
    per process)."""
    tokens = task.tokens_per_example()
    flops_per_example = task.train_flops_per_example()
    unit, per_step = ("tokens", batch_size * tokens) if tokens else ("examples", batch_size)
    if not flops_per_example:
        return Throughput(unit, per_step)
    peak = None
    if measure_peak:
        device = jax.local_devices()[0]
        copies = jax.process_count() if device.platform == "cpu" else jax.device_count()
        peak = measure_matmul_peak(model_dtype, device) * copies
    return Throughput(unit, per_step, batch_size * flops_per_example, peak)


def _si(value: float) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.1f} {prefix}"
    return f"{value:.1f} "


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """`update()` once per step; `report(step, metrics)` when the loop has fresh train metrics
    (they carry steps_per_sec over the window since the last report, eval time excluded);
    `write(line)` for other messages (process 0 only); `close()` at the end."""

    def __init__(
        self,
        total: int,
        initial: int,
        throughput: Throughput,
        *,
        enabled: bool,
        main: bool = True,
        watched: tuple[str, ...] = ("loss",),
        plain: bool | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
        out: TextIO | None = None,
    ):
        self.total, self.step, self.throughput = total, initial, throughput
        self.enabled, self.watched, self.interval_s = enabled, watched, interval_s
        self.main = main  # writes messages (eval results) even with the progress display off
        self.out = out or sys.stdout
        self.plain = not self.out.isatty() if plain is None else plain
        self._rate: float | None = None  # steps/s, for the ETA
        self._reports = 0
        self._reported_step = initial
        self._steady = [0, 0.0]  # steps and seconds of the windows after the first
        self._last_line = -float("inf")
        self._bar = None
        if enabled and not self.plain:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0
            )

    def update(self, steps: int = 1) -> None:
        self.step += steps
        if self._bar is not None:
            self._bar.update(steps)

    def report(self, step: int, metrics: dict[str, float]) -> None:
        steps_per_sec = metrics.get("steps_per_sec", 0.0)
        self._reports += 1
        window, self._reported_step = step - self._reported_step, step
        if self._reports > 1 and steps_per_sec > 0:
            self._steady[0] += window
            self._steady[1] += window / steps_per_sec
        # The first window holds the compilation: later windows replace it.
        self._rate = steps_per_sec if self._reports <= 2 else 0.8 * self._rate + 0.2 * steps_per_sec
        if not self.enabled:
            return
        shown = {k: metrics[k] for k in self.watched if k in metrics}
        rates = self.throughput.rates(steps_per_sec)
        if self._bar is not None:
            postfix = {k: f"{v:.4f}" for k, v in shown.items()}
            postfix[f"{self.throughput.unit}/s"] = _si(rates[f"{self.throughput.unit}_per_sec"])
            if "mfu" in rates:
                postfix["mfu"] = f"{rates['mfu']:.1%}"
            self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last_line < self.interval_s and step < self.total and self._reports > 1:
            return
        self._last_line = now
        parts = [
            f"step {step}/{self.total} ({step / max(self.total, 1):.0%})",
            " ".join(f"{k} {v:.4f}" for k, v in shown.items()),
            f"{_si(rates[f'{self.throughput.unit}_per_sec'])}{self.throughput.unit}/s",
            f"{steps_per_sec:.2f} steps/s",
        ]
        if "model_flops_per_sec" in rates:
            flops = f"{_si(rates['model_flops_per_sec'])}FLOP/s"
            parts.append(f"MFU {rates['mfu']:.1%} ({flops})" if "mfu" in rates else flops)
        if step < self.total and self._rate:
            parts.append(f"ETA {_duration((self.total - step) / self._rate)}")
        self.write(" | ".join(p for p in parts if p))

    def summary(self, steps_per_sec: float | None) -> dict[str, Any]:
        """Throughput for summary.json: over the reports after the first (which holds the
        compilation), else `steps_per_sec`."""
        if self._steady[1] > 0:
            steps_per_sec = self._steady[0] / self._steady[1]
        if not steps_per_sec:
            return {}
        rates = {f"train_{k}": v for k, v in self.throughput.rates(steps_per_sec).items()}
        if self.throughput.flops_per_step:
            rates["model_flops_per_step"] = self.throughput.flops_per_step
            rates["peak_flops"] = self.throughput.peak_flops
        return rates

    def write(self, line: str) -> None:
        if not self.main:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
