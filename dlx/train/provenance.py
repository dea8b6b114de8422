"""What a run came from: the command line and the code (git commit, dirty flag, the diff).

The diff is saved in the workdir (`git.diff`) when the source tree has changes, so a run trained
from uncommitted code can be rebuilt: `git checkout <commit> && git apply git.diff`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

DIFF_FILE = "git.diff"
MAX_UNTRACKED_BYTES = 1 << 20  # untracked files larger than this are named, not copied
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the dlx package


_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """The command line this process runs (launch.py's whole argv: mode, --config, overrides),
    for summary.json; without it, sys.argv."""
    global _command
    _command = list(argv)


def command_line() -> str:
    """The command as one line a shell runs again unchanged."""
    return shlex.join(sys.argv if _command is None else _command)


def _git(*args: str, cwd: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=cwd, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _untracked_patch(root: str, paths: list[str]) -> tuple[str, list[str]]:
    """New-file patches of the untracked files, and the names of those too large to copy."""
    patches, skipped = [], []
    for path in paths:
        if os.path.getsize(os.path.join(root, path)) > MAX_UNTRACKED_BYTES:
            skipped.append(path)
            continue
        # --no-index exits 1 when the files differ, which they always do here
        out = subprocess.run(
            ["git", "diff", "--no-index", "--binary", "--", "/dev/null", path],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=30,
            check=False,
        )
        patches.append(out.stdout)
    return "".join(patches), skipped


def git_state(source_dir: str = SOURCE_DIR) -> dict:
    """{"commit", "dirty", "diff"} of the git checkout holding `source_dir` (all None outside
    one). Dirty means tracked changes or untracked files (ignored ones aside); the diff is
    `git diff HEAD` plus every untracked file as a new-file patch."""
    root = (_git("rev-parse", "--show-toplevel", cwd=source_dir) or "").strip()
    commit = root and (_git("rev-parse", "HEAD", cwd=root) or "").strip()
    if not commit:
        return {"commit": None, "dirty": None, "diff": None}
    tracked = _git("diff", "HEAD", "--binary", cwd=root) or ""
    untracked = [
        p
        for p in (_git("ls-files", "--others", "--exclude-standard", "-z", cwd=root) or "").split(
            "\0"
        )
        if p
    ]
    new_files, skipped = _untracked_patch(root, untracked)
    if not (tracked or untracked):
        return {"commit": commit, "dirty": False, "diff": None}
    header = (
        f"# Changes to {root} at commit {commit} when the run started.\n"
        f"# Rebuild that tree: git checkout {commit} && git apply {DIFF_FILE}\n"
    )
    if skipped:
        header += (
            f"# Untracked files left out (over {MAX_UNTRACKED_BYTES} bytes): {', '.join(skipped)}\n"
        )
    return {"commit": commit, "dirty": True, "diff": header + tracked + new_files}


def save_git_state(workdir: str, source_dir: str = SOURCE_DIR) -> dict:
    """Writes `git.diff` into `workdir` when the tree is dirty (removes a stale one when it is
    clean) and returns {"commit", "dirty", "diff_file"} for summary.json."""
    state = git_state(source_dir)
    path = os.path.join(workdir, DIFF_FILE)
    if state["diff"]:
        with open(path, "w") as f:
            f.write(state["diff"])
    elif os.path.exists(path):
        os.remove(path)
    return {
        "commit": state["commit"],
        "dirty": state["dirty"],
        "diff_file": DIFF_FILE if state["diff"] else None,
    }
