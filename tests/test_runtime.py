"""Process settings made before JAX starts (dlx/runtime.py): XLA:CPU thread pools, glibc malloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dlx.runtime import malloc_tunables
from helpers import REPO, launch_env

PRINT_THREADS = "import dlx, os; print(os.environ.get('PJRT_NPROC'))"


@pytest.mark.parametrize(
    "devices, preset, expected",
    [
        (2, None, str(max(os.cpu_count() or 1, 4))),
        (8, None, str(max(os.cpu_count() or 1, 16))),
        (1, None, "None"),  # one device runs no collectives: XLA's default stays
        (2, "3", "3"),  # the user's choice stays
    ],
)
def test_several_cpu_devices_get_two_pool_threads_each(devices, preset, expected):
    env = launch_env(devices)
    if preset is not None:
        env["PJRT_NPROC"] = preset
    out = subprocess.run(
        [sys.executable, "-c", PRINT_THREADS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == expected


def test_malloc_policies_add_their_glibc_settings_and_keep_the_users():
    assert malloc_tunables("hugepages") == "glibc.malloc.hugetlb=1"
    assert (
        malloc_tunables("hugepages", "glibc.malloc.arena_max=4:glibc.rtld.nns=2")
        == "glibc.malloc.arena_max=4:glibc.rtld.nns=2:glibc.malloc.hugetlb=1"
    )
    assert malloc_tunables("hugepages", "glibc.malloc.hugetlb=0") is None  # the user's wins
    assert malloc_tunables("system", "glibc.malloc.hugetlb=0") is None
    with pytest.raises(ValueError, match="DLX_MALLOC='fast'.*hugepages"):
        malloc_tunables("fast")


PRINT_MALLOC = (
    "import os, sys; from dlx.runtime import reexec_with_malloc_policy; "
    "reexec_with_malloc_policy(); "
    "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")
@pytest.mark.parametrize(
    "policy, expected",
    [
        (None, "glibc.malloc.hugetlb=1"),
        ("hugepages", "glibc.malloc.hugetlb=1"),
        ("system", "None"),
    ],
)
def test_entry_points_restart_once_with_the_malloc_policy(policy, expected):
    env = launch_env(1)
    env.pop("GLIBC_TUNABLES", None)
    env.pop("DLX_MALLOC_REEXEC", None)
    if policy:
        env["DLX_MALLOC"] = policy
    out = subprocess.run(
        [sys.executable, "-c", PRINT_MALLOC, "--flag", "x"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == f"{expected} ['--flag', 'x']"  # same arguments after the restart


def test_a_bad_malloc_policy_stops_launch_with_exit_code_2(tmp_path):
    env = launch_env(1)
    env["DLX_MALLOC"] = "fast"
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch.py"),
            "--config",
            "configs/default.py",
            "--workdir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "DLX_MALLOC='fast' is not a malloc policy" in out.stderr
    assert not (tmp_path / "run").exists()
