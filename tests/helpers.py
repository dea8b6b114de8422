"""Running launch.py the way a user does: a subprocess with its own device count."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def launch_env(devices: int = 8) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("PJRT_NPROC", None)  # sized by dlx for the child's own device count (dlx/runtime.py)
    return env


def launch_command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "launch.py"), *args, "--config.progress_bar=False"]


def launch(*args: str, devices: int = 8, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=REPO, env=launch_env(devices),
                          capture_output=True, text=True, timeout=timeout)


def train_losses(workdir: Path) -> dict[int, float]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def eval_records(workdir: Path) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "eval"]


def tree_snapshot(path: Path) -> dict[str, tuple[int, float]]:
    """Every file under `path` with its size and modification time."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime)
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def free_port() -> int:
    """A TCP port nobody listens on now, for a coordinator of a multi-process run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
