"""Process-level settings that must be in place before JAX starts: XLA:CPU thread pools, and
glibc malloc for the big per-step buffers."""

from __future__ import annotations

import os
import re
import sys

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


# glibc malloc settings per DLX_MALLOC policy (glibc reads GLIBC_TUNABLES only at process start).
# A train step allocates its large XLA buffers afresh each step; glibc serves blocks above its mmap
# threshold (at most 32 MB) with mmap and unmaps them on free, so every step page-faults its whole
# working set in again, 4 KB at a time. "hugepages" has glibc ask for 2 MB transparent huge pages
# on those mappings (where the kernel's THP mode is "madvise"; "always" does so already). The
# nanoGPT-size GPT step on 2 cores (bench/profile_step.py gpt): 1.55 M page faults and 6.1 s of
# kernel CPU time a step -> 3.4 k and 3.3 s; 10.8 -> 9.1 s a step; peak RSS 6.6 GiB either way.
# Keeping freed memory instead (mmap_max=0, one arena, no trimming; or jemalloc without decay)
# ends the faults (7.6-8.0 s a step) but fragments: peak RSS 12.7 GiB, and 24 GiB (killed for
# memory) in a longer run, so it is not offered.
MALLOC_POLICIES = {"hugepages": {"glibc.malloc.hugetlb": "1"}, "system": {}}
DEFAULT_MALLOC_POLICY = "hugepages"


def malloc_tunables(policy: str, current: str = "") -> str | None:
    """GLIBC_TUNABLES for `policy` merged into `current` (the user's own settings win), or None
    when nothing would change."""
    if policy not in MALLOC_POLICIES:
        raise ValueError(
            f"DLX_MALLOC={policy!r} is not a malloc policy; use one of "
            f"{sorted(MALLOC_POLICIES)} (unset means {DEFAULT_MALLOC_POLICY!r})"
        )
    settings = [s for s in current.split(":") if s]
    present = {s.split("=", 1)[0] for s in settings}
    missing = [f"{k}={v}" for k, v in MALLOC_POLICIES[policy].items() if k not in present]
    return ":".join(settings + missing) if missing else None


def reexec_with_malloc_policy() -> None:
    """Restarts this process (same interpreter and arguments) with the DLX_MALLOC policy's glibc
    malloc settings, where glibc is the C library and the settings are not in place yet; entry
    points (launch.py, bench/) call it first. `DLX_MALLOC=system` leaves malloc as it is."""
    import platform

    policy = os.environ.get("DLX_MALLOC") or DEFAULT_MALLOC_POLICY
    tunables = malloc_tunables(policy, os.environ.get("GLIBC_TUNABLES", ""))
    if (
        tunables is None
        or sys.platform != "linux"
        or platform.libc_ver()[0] != "glibc"
        or os.environ.get("DLX_MALLOC_REEXEC")
    ):  # the last: the restarted process itself
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(
        sys.executable,
        sys.orig_argv,
        {**os.environ, "GLIBC_TUNABLES": tunables, "DLX_MALLOC_REEXEC": "1"},
    )


# XLA:CPU hands convolutions to YNNPACK by default, whose kernel gradient is slow: YNNPACK gets
# reductions and single matmuls only, convolutions go to Eigen (Fashion-MNIST CNN step: 60 -> 30
# ms on 2 cores). YNNPACK's matmuls beat Eigen's, most on a transposed operand (the dense input
# gradient x @ W.T: 3.5 -> 1.8 ms); BENCHMARKS.md has the measurements. YNNPACK declines a dot
# whose left operand is contracted along its leading axis, so kernel gradients (x.T @ g) stay Eigen.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
}


def compiler_options() -> dict[str, str] | None:
    """The XLA options dlx compiles its steps with on this backend (`jax.jit(compiler_options=)`)."""
    import jax

    return CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
