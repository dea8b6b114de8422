"""XLA:CPU thread pools are sized before JAX starts (dlx/runtime.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO, launch_env

PRINT_THREADS = "import dlx, os; print(os.environ.get('PJRT_NPROC'))"


@pytest.mark.parametrize("devices, preset, expected", [
    (2, None, str(max(os.cpu_count() or 1, 4))),
    (8, None, str(max(os.cpu_count() or 1, 16))),
    (1, None, "None"),  # one device runs no collectives: XLA's default stays
    (2, "3", "3"),  # the user's choice stays
])
def test_several_cpu_devices_get_two_pool_threads_each(devices, preset, expected):
    env = launch_env(devices)
    if preset is not None:
        env["PJRT_NPROC"] = preset
    out = subprocess.run([sys.executable, "-c", PRINT_THREADS], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == expected
