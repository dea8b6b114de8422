"""The workdir: one run at a time, files written whole or not at all, and decisions about its
shared files made once, by process 0.

The lock is `<workdir>/run.lock`, held by process 0 of a run with `flock` and removed when the
run ends. The kernel drops a flock when its process dies, so a lock file left by a killed run
(`kill -9`, a crashed host) does not block the next run: the file also records the holder
(pid, host, start time) for the refusal message and for filesystems without locks (some network
filesystems), where a record whose pid is dead on this host counts as stale; a record from
another host cannot be checked from here and is obeyed (the message says which file to delete).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator

from dlx.errors import UserError

LOCK_NAME = "run.lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def replace_file(path: str, text: str) -> None:
    """`path` holds `text` or what it held before, never a part: a run killed while writing
    leaves no torn file behind."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomically(path: str, text: str) -> None:
    """`replace_file`, with UserError when the file cannot be written (a full disk)."""
    try:
        replace_file(path, text)
    except OSError as e:
        raise UserError(
            f"writing {path} failed ({e.strerror or e}); free space (or fix the "
            f"folder) and run the same command again"
        ) from None


def on_process_0(decide: Callable[[], int | None], what: str) -> int | None:
    """`decide()` run on process 0 only (it may read and change the shared workdir) and its
    answer given to every process; an error there is an error everywhere, so none waits alone."""
    import jax

    if jax.process_count() == 1:
        return decide()
    import numpy as np
    from jax.experimental import multihost_utils

    failure, answer = None, -1
    if jax.process_index() == 0:
        try:
            result = decide()
            answer = -1 if result is None else result
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others are told
            failure, answer = e, -2
    answer = int(multihost_utils.broadcast_one_to_all(np.int32(answer)))
    if failure is not None:
        raise failure
    if answer == -2:
        raise UserError(f"process 0 could not {what}; its error line says why")
    return None if answer == -1 else answer


def _process_start(pid: int) -> str | None:
    """When the kernel started `pid` (Linux): tells a live run from a new one that got its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(record: dict) -> bool:
    """Whether the run a lock record names may still be running (only this host's are checked)."""
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = record.get("pid_started")
    return started is None or _process_start(pid) in (None, started)


def _read_record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another run"
    return (
        f"another run: pid {record.get('pid')} on {record.get('host')}, "
        f"started {record.get('started')}"
    )


class WorkdirLock:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None
        self._flocked = False

    def acquire(self) -> None:
        """Takes the lock or raises UserError naming the run that holds it."""
        os.makedirs(self.workdir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                self._refuse(holder)
            except OSError as e:
                if e.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                self._acquire_by_record(fd)
                return
            if self._same_file(fd):
                break
            os.close(fd)  # the holder removed the file between our open and flock: try again
        self._fd, self._flocked = fd, True
        self._write_record()

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _acquire_by_record(self, fd: int) -> None:
        holder = _read_record(fd)
        if holder and holder_alive(holder):
            os.close(fd)
            self._refuse(holder, stale_hint=True)
        self._fd = fd
        self._write_record()

    def _refuse(self, holder: dict, stale_hint: bool = False) -> None:
        hint = f"; if that run is dead, delete {self.path}" if stale_hint else ""
        raise UserError(
            f"{self.workdir} is in use by {_describe(holder)}; wait for it to end or "
            f"give another --workdir{hint}"
        )

    def _write_record(self) -> None:
        pid = os.getpid()
        record = {
            "pid": pid,
            "host": socket.gethostname(),
            "pid_started": _process_start(pid),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still held, so a run waiting to open it cannot lock a file nobody sees.
        if self._flocked or _read_record(self._fd).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """The workdir's lock, held by process 0 of the run for the duration."""
    lock = WorkdirLock(workdir)
    on_process_0(lambda: lock.acquire(), f"lock {workdir}")
    try:
        yield
    finally:
        lock.release()
