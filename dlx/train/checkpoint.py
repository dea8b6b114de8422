"""Orbax checkpoints: the train state plus the data iterator's position, saved asynchronously,
each step sealed with a checksum manifest.

Restoring goes into an abstract target whose leaves carry the *current* mesh's shardings, so a
run saved on 8 devices resumes on 1 and the other way round.

Once Orbax has finished a step (in its background thread), process 0 writes
`<step>/dlx_manifest.json`: the size and SHA-256 of every file of the step. A step is restored
only if its files match. When the latest does not, it is skipped with a one-line warning (a run
that resumes moves it to `<workdir>/damaged_checkpoints/`) and the newest intact one is used;
with none intact, a UserError. A step Orbax finished but whose manifest was never written (the
run died in between) is unfinished: a resuming run deletes it. Steps saved before dlx wrote
manifests (no manifest, no dlx mark in Orbax's step metadata) are restored unverified, with a
warning.

`config.init_from` (`warm_start_step`, `restore_items`) starts a new run from another run's
latest checkpoint: the items of its state the task names (`Task.warm_start_items`, e.g. params
and batch statistics) only; the rest of the state, the step and the data position start afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from orbax.checkpoint._src.metadata import array_metadata_store

from dlx.errors import ConfigError, UserError
from dlx.train.workdir import on_process_0, replace_file

MANIFEST = "dlx_manifest.json"
_MARK = "dlx_manifest"  # in Orbax's step metadata: this step gets a manifest once finished
DAMAGED_DIR = "damaged_checkpoints"


def _restore_target(abstract: Any, shardings: Any) -> Any:
    """Abstract leaves carrying this run's shardings: what Orbax restores into."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract,
        shardings,
    )


@functools.cache
def _whole_arrays_when_on_cpu() -> None:
    """On CPU, save each replicated array whole from its first replica.

    Orbax's default on CPU and TPU is replica-parallel saving: every replica writes a slice, and
    each distinct shape compiles a slicing program at the first save (a small U-Net on 8 CPU
    devices: 144 programs, 7 s). CPU devices share one host memory, so the slices only copy. Orbax
    makes the same choice on GPU. The handler is process-wide in Orbax; the files are the same.
    """
    if jax.default_backend() == "cpu":
        handler = ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(), use_replica_parallel=False
        )
        with _absl_warnings_silenced(True):  # Orbax warns of every override
            ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def _state_dir(checkpoints: str, step: int) -> epath.Path:
    """Where step `step`'s state lies in a Checkpointer's folder (`<workdir>/checkpoints`)."""
    return epath.Path(os.path.abspath(checkpoints)) / str(step) / "state"


@contextlib.contextmanager
def _absl_warnings_silenced(silenced: bool):
    previous = absl_logging.get_verbosity()
    if silenced:
        absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Manifests: what a finished step's files were, and whether they still are
# ------------------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _step_files(step_dir: str) -> dict[str, str]:
    """{path relative to the step folder: absolute path}, every file of a step but its manifest."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir).replace(os.sep, "/")
            if not relative.startswith(MANIFEST):
                files[relative] = path
    return files


def write_manifest(step_dir: str, metric: float | None = None) -> None:
    """Records every file of a finished step, and its score on config.best_metric if evaluated."""
    lines = [
        f'  {json.dumps(relative)}: [{os.path.getsize(path)}, "{_sha256(path)}"]'
        for relative, path in sorted(_step_files(step_dir).items())
    ]
    head = json.dumps({"format": 1, "metric": metric})[:-1]
    replace_file(
        os.path.join(step_dir, MANIFEST), head + ', "files": {\n' + ",\n".join(lines) + "\n}}\n"
    )


def _read_manifest(step_dir: str) -> dict:
    """The manifest; FileNotFoundError when there is none, ValueError or TypeError when it is
    unreadable."""
    with open(os.path.join(step_dir, MANIFEST)) as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise TypeError(f"{MANIFEST} holds no file list")
    return manifest


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str  # "intact", "unverified" (saved before manifests), "unfinished" or "damaged"
    problem: str = ""

    @property
    def usable(self) -> bool:
        return self.status in ("intact", "unverified")


def check_step(step_dir: str) -> Verdict:
    """Whether a finished step's files are the ones its manifest recorded."""
    try:
        expected = {
            str(name): (int(size), str(digest))
            for name, (size, digest) in _read_manifest(step_dir)["files"].items()
        }
    except FileNotFoundError:
        return _without_manifest(step_dir)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Verdict("damaged", f"its {MANIFEST} is unreadable")
    problems = []
    for name, (size, _) in expected.items():
        path = os.path.join(step_dir, name)
        if not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{name} has {os.path.getsize(path)} bytes, {size} expected")
    if not problems:  # sizes first: cheap, and most damage (truncation) shows there
        problems = [
            f"{name} does not match its checksum"
            for name, (_, digest) in expected.items()
            if _sha256(os.path.join(step_dir, name)) != digest
        ]
    if not problems:
        return Verdict("intact")
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return Verdict("damaged", problems[0] + more)


def _without_manifest(step_dir: str) -> Verdict:
    try:
        with open(os.path.join(step_dir, "_CHECKPOINT_METADATA")) as f:
            marked = _MARK in (json.load(f).get("custom_metadata") or {})
    except (OSError, ValueError, AttributeError, TypeError):  # e.g. half deleted
        return Verdict("damaged", f"it has no {MANIFEST} and no readable _CHECKPOINT_METADATA")
    return Verdict("unfinished") if marked else Verdict("unverified")


# ------------------------------------------------------------------------------------------------
# Choosing the step to restore
# ------------------------------------------------------------------------------------------------
def finished_step(directory: str) -> int | None:
    """The latest step Orbax finished under `directory`, unverified, or None; creates nothing."""
    return max(_finished_steps(directory), default=None)


def _finished_steps(directory: str) -> list[int]:
    return ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []


def usable_step(directory: str, *, resuming_workdir: str | None = None) -> int | None:
    """The newest step of `directory` to restore: intact, or saved before manifests existed;
    None when there is none. Each newer step is skipped with a one-line warning; with
    `resuming_workdir` (a run that trains on) damaged steps move to its `damaged_checkpoints/`
    and unfinished ones are deleted, so the run can save those steps again. Raises UserError
    when checkpoints are there but none is intact (and then changes nothing)."""
    return on_process_0(
        lambda: _choose_step(directory, resuming_workdir),
        f"find an intact checkpoint in {directory}",
    )


def _choose_step(directory: str, resuming_workdir: str | None) -> int | None:
    skipped: list[tuple[int, Verdict]] = []
    chosen = None
    for step in sorted(_finished_steps(directory), reverse=True):
        verdict = check_step(os.path.join(directory, str(step)))
        if verdict.usable:
            chosen = step, verdict
            break
        skipped.append((step, verdict))
    if chosen is None and any(v.status == "damaged" for _, v in skipped):
        found = "; ".join(f"step {s}: {v.problem or 'not finished'}" for s, v in skipped)
        raise UserError(
            f"no checkpoint in {directory} is intact ({found}); move the folder away "
            f"to start from scratch"
        )
    for step, verdict in skipped:
        where = os.path.join(directory, str(step))
        if verdict.status == "damaged":
            done = "skipped it"
            if resuming_workdir:
                done = f"moved it to {_move_aside(where, resuming_workdir)}"
            warn(f"checkpoint step {step} in {directory} is damaged ({verdict.problem}); {done}")
        else:
            done = "skipped it"
            if resuming_workdir:
                _delete(where)
                done = "deleted it"
            warn(
                f"checkpoint step {step} in {directory} was not finished (the run stopped before "
                f"its checksums were written); {done}"
            )
    if chosen is None:
        return None
    step, verdict = chosen
    if verdict.status == "unverified":
        warn(
            f"checkpoint step {step} in {directory} has no checksum manifest (saved by an older "
            f"dlx); restoring it unverified"
        )
    return step


def _delete(step_dir: str) -> None:
    """Renamed first, as Orbax names a save in progress: killed halfway, no half step is left,
    and Orbax removes the rest when the run's checkpoint manager starts."""
    doomed = step_dir + ".orbax-checkpoint-tmp"
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(step_dir, doomed)
    shutil.rmtree(doomed)


def _move_aside(step_dir: str, workdir: str) -> str:
    aside = os.path.join(workdir, DAMAGED_DIR)
    os.makedirs(aside, exist_ok=True)
    name, n = os.path.basename(step_dir), 1
    target = os.path.join(aside, name)
    while os.path.exists(target):
        n += 1
        target = os.path.join(aside, f"{name}-{n}")
    os.rename(step_dir, target)
    return target


def _intact_before(directory: str, step: int) -> int | None:
    """The newest intact step older than `step`; read on this process alone, silently."""
    return next(
        (
            s
            for s in sorted(_finished_steps(directory), reverse=True)
            if s < step and check_step(os.path.join(directory, str(s))).usable
        ),
        None,
    )


def _io_problem(error: BaseException) -> str | None:
    """The operating system's words for an I/O failure (also from inside TensorStore), else None."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    code = re.search(r"os_error_code='?(\d+)", str(error))
    return os.strerror(int(code.group(1))) if code else None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


# ------------------------------------------------------------------------------------------------
# Saving and restoring
# ------------------------------------------------------------------------------------------------
class _QuietAboutIOErrors(logging.Filter):
    """Orbax logs an I/O failure of a background save (a full disk) several times over, with
    tracebacks, from its threads; `Checkpointer.wait` reports it once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and _io_problem(error) is not None:
            return False
        return "os_error_code" not in record.getMessage()


_QUIET = _QuietAboutIOErrors()
_NOISY_LOGGERS = ("absl", "asyncio")


@contextlib.contextmanager
def _orbax_failures_reported_once() -> Iterator[None]:
    """Silences the echoes of a failed background save; after one, TensorStore's callbacks also
    hit Orbax's closed event loop ('Event loop is closed', printed as unraisable)."""
    previous_hook = sys.unraisablehook

    def hook(unraisable):
        if not (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            previous_hook(unraisable)

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).addFilter(_QUIET)
    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(_QUIET)


class Checkpointer:
    """Orbax's manager, plus a manifest for every step it finishes: written on process 0 in a
    thread of its own once Orbax's background save is done, and waited for by the next save,
    `wait` and `close`. Only then are the steps beyond `keep_latest` (and the best by
    `best_metric`) deleted, so an older intact step exists whenever the newest is unfinished.
    A save that fails (a full disk) raises UserError there, and the steps before it stay."""

    def __init__(
        self,
        directory: str,
        *,
        keep_latest: int,
        best_metric: str,
        best_mode: str,
        read_only: bool = False,
    ):
        self.keep_latest = max(1, keep_latest)
        self.best_metric, self.best_mode = best_metric, best_mode
        self.directory = os.path.abspath(directory)
        self._sealer: threading.Thread | None = None
        self._pending_step: int | None = None
        self._seal_problem: str | None = None
        self._failed = False
        if not read_only:
            _whole_arrays_when_on_cpu()
        # Orbax warns that a read-only manager saves nothing: what it is asked for (eval, sample).
        with _absl_warnings_silenced(read_only):
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    create=not read_only,
                    read_only=read_only,
                    enable_async_checkpointing=True,
                    cleanup_tmp_directories=not read_only,
                ),
            )  # what a killed run left half-done
        self._quiet = contextlib.ExitStack()
        if not read_only:
            self._quiet.enter_context(_orbax_failures_reported_once())

    def latest_step(self) -> int | None:
        """The newest step whose files match their manifest (in-flight saves finished first)."""
        self.wait()
        return usable_step(self.directory)

    def save(
        self,
        step: int,
        state: Any,
        data_state: dict | None,
        eval_metrics: dict | None = None,
        *,
        wait: bool = False,
    ) -> None:
        self.wait()
        items = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(data_state)
        metric = (eval_metrics or {}).get(self.best_metric)
        self._pending_step = step
        with self._save_failures(step):
            self.manager.save(
                step,
                args=ocp.args.Composite(**items),
                force=True,
                custom_metadata={_MARK: MANIFEST},
            )
        if jax.process_index() == 0:
            self._sealer = threading.Thread(
                target=self._seal,
                args=(step, None if metric is None else float(metric)),
                daemon=True,
                name=f"dlx-manifest-{step}",
            )
            self._sealer.start()
        if wait:
            self.wait()

    def _seal(self, step: int, metric: float | None) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the main thread's own wait raises it
            return
        step_dir = os.path.join(self.directory, str(step))
        if not os.path.isdir(step_dir):
            self._seal_problem = "Orbax did not finish it; see its log above"
            return
        try:
            write_manifest(step_dir, metric)
            self._delete_unkept()
        except OSError as e:  # a full disk
            self._seal_problem = e.strerror or str(e)

    def _delete_unkept(self) -> None:
        """Deletes the sealed steps beyond the latest `keep_latest` and the best one. Steps without
        a manifest (saved before dlx wrote them) are left alone."""
        scores = {}
        for step in _finished_steps(self.directory):
            with contextlib.suppress(OSError, ValueError, TypeError):
                scores[step] = _read_manifest(os.path.join(self.directory, str(step))).get("metric")
        keep = set(sorted(scores)[-self.keep_latest :])
        scored = [
            (metric if self.best_mode == "max" else -metric, -step)
            for step, metric in scores.items()
            if isinstance(metric, (int, float)) and math.isfinite(metric)
        ]
        if scored:  # the best; of equals, the earliest
            keep.add(-max(scored)[1])
        for step in sorted(scores.keys() - keep):
            _delete(os.path.join(self.directory, str(step)))

    def wait(self) -> None:
        """Blocks until the last save and its manifest are written; raises UserError if they
        could not be."""
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        with self._save_failures(self._pending_step):
            self.manager.wait_until_finished()
            if self._seal_problem:
                raise OSError(0, self._seal_problem)

    @contextlib.contextmanager
    def _save_failures(self, step: int | None):
        try:
            yield
        except Exception as e:
            problem = _io_problem(e)
            if problem is None or step is None:
                raise
            self._failed = True
            previous = _intact_before(self.directory, step)
            kept = (
                f"step {previous} is the latest intact checkpoint"
                if previous is not None
                else "no earlier checkpoint exists"
            )
            raise UserError(
                f"saving checkpoint step {step} in {self.directory} failed "
                f"({problem}); {kept}. Free space (or fix the folder) and run the same "
                f"command to resume"
            ) from None

    def restore(
        self, abstract_state: Any, shardings: Any, step: int | None = None, with_data: bool = True
    ) -> tuple[Any, dict | None]:
        """The state at `step` (default: the newest intact one), laid out with `shardings`, and
        the data state. StateMismatch if the checkpoint's variables are not `abstract_state`'s
        (another model or optimizer config)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"{self.directory} holds no finished checkpoint")
        # Checked before Orbax reads anything: its failed restores leave its threads failing.
        difference = None
        with contextlib.suppress(Exception):  # unreadable metadata: the restore will say
            difference = variables_difference(
                ocp.PyTreeCheckpointHandler().metadata(_state_dir(self.directory, step)),
                abstract_state,
            )
        if difference:
            raise StateMismatch(
                f"checkpoint step {step} in {self.directory} does not fit this config: {difference}"
            )
        target = _restore_target(abstract_state, shardings)
        items = {"state": ocp.args.StandardRestore(target)}
        if with_data:
            items["data"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            if check_step(os.path.join(self.directory, str(step))).status != "unverified":
                raise
            raise UserError(
                f"checkpoint step {step} in {self.directory} (saved without checksums) "
                f"cannot be restored: {_first_line(e)}; move it out of the folder to "
                f"restore an older one"
            ) from None
        return restored["state"], restored.get("data") if with_data else None

    def close(self) -> None:
        """Finishes the last save (raising UserError if it failed, once) and closes Orbax."""
        try:
            if not self._failed:
                self.wait()
        finally:
            with contextlib.suppress(Exception) if self._failed else contextlib.nullcontext():
                self.manager.close()
            if not self._failed:  # after a failure Orbax's threads go on failing while we exit
                self._quiet.close()


class StateMismatch(ConfigError):
    """A checkpoint whose variables (names, shapes, dtypes) are not those the config makes."""


def _named_leaves(tree: Any) -> dict[str, Any]:
    """{'params/Dense_0/kernel': leaf, ...}"""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _item(state: Any, name: str) -> Any:
    return state[name] if isinstance(state, dict) else getattr(state, name)


def warm_start_step(workdir: str, abstract_state: Any, items: tuple[str, ...]) -> int:
    """The step of `workdir`'s latest checkpoint, after checking that its state's `items` have
    exactly the names, shapes and dtypes of `abstract_state`'s; raises ConfigError (naming
    what differs) otherwise. Reads metadata only (and checksums: a damaged step is skipped)."""
    where = f"config.init_from='{workdir}'"
    step = usable_step(os.path.join(workdir, "checkpoints"))
    if step is None:
        raise ConfigError(
            f"{where} holds no finished checkpoint; give the workdir of a run that "
            f"has saved one (its checkpoints/ folder)"
        )
    stored = ocp.PyTreeCheckpointHandler().metadata(
        _state_dir(os.path.join(workdir, "checkpoints"), step)
    )
    difference = variables_difference(
        {k: stored[k] for k in items if k in stored},
        {k: _item(abstract_state, k) for k in items},
    )
    if difference:
        raise ConfigError(
            f"{where} (step {step}): {difference}; init_from needs the same model config"
        )
    return step


def variables_difference(stored: Any, wanted: Any) -> str | None:
    """What first differs between the leaves of a checkpoint's metadata `stored` and those of
    the state `wanted` (names, then shapes and dtypes), said for a user: "it lacks [...]" are
    variables of `wanted` the checkpoint does not have; None if nothing differs."""
    stored, wanted = _named_leaves(stored), _named_leaves(wanted)
    keys = {  # a key array is saved as its raw data, of another shape and dtype
        name
        for name, leaf in wanted.items()
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    }
    stored = {name: leaf for name, leaf in stored.items() if name not in keys}
    wanted = {name: leaf for name, leaf in wanted.items() if name not in keys}
    missing = sorted(wanted.keys() - stored.keys())
    extra = sorted(stored.keys() - wanted.keys())
    if missing or extra:
        lacks = f"lacks {missing[:3]}" if missing else ""
        holds = f"holds {extra[:3]}, which this config does not make" if extra else ""
        return "it " + " and ".join(part for part in (lacks, holds) if part)
    for name, leaf in wanted.items():
        have = stored[name]
        if tuple(have.shape) != tuple(leaf.shape) or have.dtype != leaf.dtype:
            return (
                f"'{name}' is {have.dtype}{list(have.shape)} there but "
                f"{leaf.dtype}{list(leaf.shape)} here"
            )
    return None


def check_pretrained_items(source: str, items: dict, abstract_state: Any) -> list[str]:
    """ConfigError unless every leaf of `items` (a task's `pretrained_items`: {item: partial
    tree}) is a leaf of `abstract_state` with the same shape; returns the state's leaves of
    those items that the checkpoint leaves at their fresh initialisation (a new head)."""
    where = f"config.init_from='{source}'"
    given = _named_leaves(items)
    wanted = _named_leaves({k: _item(abstract_state, k) for k in items})
    extra = sorted(given.keys() - wanted.keys())
    if extra:
        raise ConfigError(
            f"{where} holds weights this model does not have: {extra[:3]}; set config.model to "
            f"the checkpoint's architecture (or leave those fields out)"
        )
    for name, leaf in given.items():
        if tuple(leaf.shape) != tuple(wanted[name].shape):
            raise ConfigError(
                f"{where}: '{name}' is {list(leaf.shape)} there but "
                f"{list(wanted[name].shape)} in this model"
            )
    return sorted(wanted.keys() - given.keys())


def restore_items(
    workdir: str, step: int, abstract_state: Any, shardings: Any, items: tuple[str, ...]
) -> dict:
    """{item: ...} of `workdir`'s checkpoint `step` for each of `items`, laid out with
    `shardings` (this run's mesh); check it first with `warm_start_step`."""
    target = {
        k: _restore_target(_item(abstract_state, k), _item(shardings, k))
        for k in items
        if jax.tree.leaves(_item(abstract_state, k))
    }  # e.g. a model without model state
    restored = ocp.PyTreeCheckpointer().restore(
        _state_dir(os.path.join(workdir, "checkpoints"), step),
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    return {**{k: _item(abstract_state, k) for k in items if k not in target}, **restored}
