"""Process-level XLA:CPU settings that must be in place before JAX creates its CPU client."""
from __future__ import annotations

import os
import re

CPU_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def forced_cpu_device_count() -> int:
    """The number of CPU devices asked for with XLA_FLAGS or JAX_NUM_CPU_DEVICES (1 if neither)."""
    counts = [int(n) for n in CPU_DEVICE_COUNT_FLAG.findall(os.environ.get("XLA_FLAGS", ""))]
    if os.environ.get("JAX_NUM_CPU_DEVICES", "").isdigit():
        counts.append(int(os.environ["JAX_NUM_CPU_DEVICES"]))
    return max(counts, default=1)


def configure_cpu_threads() -> None:
    """Gives XLA:CPU's thread pools two threads per device when one process runs several CPU
    devices, unless PJRT_NPROC or NPROC is set already.

    XLA sizes its CPU pools max(cores, devices). With as many threads as devices, a collective
    step can deadlock: one device's launch holds a pool thread until its all-reduce completes,
    while the other device's launch waits for a thread to run its earlier work, and after XLA's
    40 s rendezvous timeout the process aborts. Seen here with 2 devices on 2 busy cores (3 of 8
    runs of `shakespeare_gpt.py:test`; 0 of 10 with 4 or 8 threads). JAX reads the variable when
    it creates the CPU client, which happens at first use, so this must run before any JAX work.
    """
    devices = forced_cpu_device_count()
    if devices > 1 and "PJRT_NPROC" not in os.environ and "NPROC" not in os.environ:
        os.environ["PJRT_NPROC"] = str(max(os.cpu_count() or 1, 2 * devices))
