"""Running dlx the way a user does: in this process for most tests (`train`, `load_config`), or
launch.py as a subprocess with its own device count where a process boundary is the point
(signals, kill -9, several processes, another device count)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_config(spec: str, overrides: dict | None = None):
    """`spec` (a configs/ file[:variant] or a config.json) with `{"dotted.key": value}` overrides
    applied as `--config.dotted.key=value` would be, progress bar off."""
    from dlx.train import config as config_lib

    config = config_lib.load(spec)
    config.progress_bar = False
    overrides = overrides or {}
    config_lib.prepare_overrides(config, list(overrides))
    for path, value in overrides.items():
        *groups, key = path.split(".")
        node = config
        for group in groups:
            node = node[group]
        node[key] = value
    return config


def train(spec: str, workdir, overrides: dict | None = None, devices: int | None = None) -> dict:
    """What `launch.py --config spec --workdir workdir --config.k=v ...` trains, in this process
    on its first `devices` fake devices (default: all 8): the run's summary."""
    import jax

    from dlx.train import loop

    return loop.train_and_evaluate(
        load_config(spec, overrides), str(workdir), jax.devices()[:devices] if devices else None
    )


@dataclasses.dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def cli(*args: str) -> CliResult:
    """`launch.py *args` in this process (`launch.main`): its exit code and what it printed."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import launch

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            launch.main(["launch.py", *args])
        except SystemExit as e:
            code = e.code
    return CliResult(code, out.getvalue(), err.getvalue())


def refused(result: CliResult, expected: str) -> str:
    """The one `error:` line of a refused command, checked to name `expected`."""
    assert result.code == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(result.error_lines) == 1 and expected in result.error_lines[0], result.stderr
    return result.error_lines[0]


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
    return subprocess.run(
        launch_command(*args),
        cwd=REPO,
        env=launch_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_losses(workdir: Path) -> dict[int, float]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def eval_records(workdir: Path) -> list[dict]:
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "eval"]


def tree_snapshot(path: Path) -> dict[str, tuple[int, float]]:
    """Every file under `path` with its size and modification time."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime)
        for p in sorted(Path(path).rglob("*"))
        if p.is_file()
    }


def free_port() -> int:
    """A TCP port nobody listens on now, for a coordinator of a multi-process run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
