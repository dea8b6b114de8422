"""A `jax.profiler` trace of a window of train steps (`config.profile_steps = (first, last)`).

The trace goes to `<workdir>/tensorboard/plugins/profile/<time>/<host>.xplane.pb` (and a
Perfetto `trace.json.gz`): TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`)
shows it beside the scalars, ui.perfetto.dev opens the JSON. Steps are numbered as in the logs
(the first step is 1); every process traces its own devices.
"""

from __future__ import annotations

import os

import jax


class TraceWindow:
    def __init__(self, steps: tuple[int, int], workdir: str):
        self.first, self.last = (int(s) for s in steps) if steps else (0, 0)
        self.directory = os.path.join(workdir, "tensorboard")
        self.active = False

    def before_step(self, step: int) -> None:
        """Called before step `step` (1-based) runs: starts the trace when it is in the window."""
        if not self.active and self.first > 0 and self.first <= step <= self.last:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after_step(self, step: int, outputs) -> None:
        """Called after step `step` was dispatched: ends the trace once the window's last step
        has finished computing."""
        if self.active and step >= self.last:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
