"""The runner: config -> mesh -> sharded jit train step -> metrics, checkpoints and plots.

`train_and_evaluate(config, workdir)` trains (resuming from the workdir if it holds a checkpoint);
`evaluate(config, workdir)` scores the workdir's latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import data as data_lib
from dlx import registry, runtime
from dlx.errors import ConfigError
from dlx.hub import is_dlx_workdir
from dlx.train import config as config_lib
from dlx.train import layer_stats, profiling, provenance, sharding
from dlx.train import progress as progress_lib
from dlx.train import workdir as workdir_lib
from dlx.train.checkpoint import (
    Checkpointer,
    StateMismatch,
    check_pretrained_items,
    finished_step,
    restore_items,
    usable_step,
    warm_start_step,
)
from dlx.train.metrics import MetricWriter, plot_curves


class NonFiniteError(RuntimeError):
    """The loss or gradients became NaN/Inf and config.nan_policy is 'stop'."""


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# Set-up shared by training and evaluation
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    mesh: Any
    data_info: Any
    data_dir: str | None
    task: Any
    total_steps: int
    steps_per_epoch: float
    abstract_state: Any
    state_shardings: Any
    example_batch: dict


def prepare_run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    devices: list | None = None,
    *,
    data_spec: dict | None = None,
) -> Run:
    """Everything that can fail on bad input, done before the workdir is touched (a task may read
    files of an existing `workdir`, e.g. its tokenizer, but writes nothing yet). The mesh spans
    `devices` (default: all of them). With `data_spec` (a trained run's, `read_data_spec`), the
    data set is not opened: what the state's layout needs of it comes from the spec."""
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    data_parallel = sharding.data_parallel_size(mesh)
    config_lib.validate_for_mesh(config, data_parallel, jax.process_count())
    data_dir = config.data.data_dir or None
    if data_spec is not None:
        task = registry.task_class(config.task)(config, data_spec["info"], data_dir, workdir)
        task.check_for_mesh(data_parallel)
        return _run_with_example(
            config,
            mesh,
            task,
            data_dir,
            data_spec["example"],
            data_spec["total_steps"],
            data_spec["steps_per_epoch"],
        )
    if jax.process_index() == 0:  # preparing is idempotent but not safe to run concurrently
        data_lib.prepare(config.data.name, data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("dlx: data prepared")
    info = data_lib.info(config.data.name, data_dir)
    for split in (config.data.train_split, config.data.eval_split):
        # TFDS split expressions are allowed: "test[:500]", "train[:90%]", "train+test"
        for part in split.split("+"):
            if part.split("[", 1)[0].strip() not in info.num_examples:
                raise ConfigError(
                    f"data set '{config.data.name}' has no split '{part}'; "
                    f"its splits are {sorted(info.num_examples)} (slices such as "
                    f"'test[:500]' or 'train[:90%]' of them are allowed)"
                )
    task = registry.task_class(config.task)(config, info, data_dir, workdir)
    task.check_for_mesh(data_parallel)
    steps_per_epoch = task.examples_per_epoch() / config.data.batch_size
    total_steps = task.total_steps()

    source = task.source(config.data.train_split, train=True)
    example = {
        k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in source[0].items()
    }
    return _run_with_example(config, mesh, task, data_dir, example, total_steps, steps_per_epoch)


def _run_with_example(
    config, mesh, task, data_dir, example: dict, total_steps: int, steps_per_epoch: float
) -> Run:
    example_batch = {
        k: jax.ShapeDtypeStruct((config.data.batch_size, *v.shape), v.dtype)
        for k, v in example.items()
    }
    abstract_state, state_shardings = _state_layout(config, mesh, task, example_batch)
    return Run(
        config,
        mesh,
        task.data_info,
        data_dir,
        task,
        total_steps,
        steps_per_epoch,
        abstract_state,
        state_shardings,
        example_batch,
    )


# What a trained run's workdir keeps of its data set, so that loading the run for inference
# (dlx.inference) needs no data set: the split sizes, features and classes, one example's shapes.
DATA_SPEC_FILE = "data_spec.json"


def write_data_spec(run: Run, workdir: str) -> None:
    info = run.data_info
    spec = {
        "info": {
            "name": info.name,
            "num_examples": info.num_examples,
            "features": {
                k: {"shape": list(f.shape), "dtype": np.dtype(f.dtype).name}
                for k, f in info.features.items()
            },
            "num_classes": info.num_classes,
            "class_names": list(info.class_names) if info.class_names else None,
        },
        "example": {
            k: {"shape": list(v.shape[1:]), "dtype": np.dtype(v.dtype).name}
            for k, v in run.example_batch.items()
        },
        "total_steps": run.total_steps,
        "steps_per_epoch": run.steps_per_epoch,
    }
    workdir_lib.write_atomically(os.path.join(workdir, DATA_SPEC_FILE), json.dumps(spec, indent=1))


def read_data_spec(workdir: str) -> dict | None:
    """The data spec a run wrote into `workdir` (None for runs older than the spec)."""
    path = os.path.join(workdir, DATA_SPEC_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        spec = json.load(f)
    info = spec["info"]
    features = {
        k: data_lib.FeatureInfo(tuple(f["shape"]), np.dtype(f["dtype"]))
        for k, f in info["features"].items()
    }
    class_names = tuple(info["class_names"]) if info["class_names"] else None
    return {
        **spec,
        "info": data_lib.DataInfo(
            info["name"], info["num_examples"], features, info["num_classes"], class_names
        ),
        "example": {
            k: jax.ShapeDtypeStruct(tuple(v["shape"]), np.dtype(v["dtype"]))
            for k, v in spec["example"].items()
        },
    }


def _state_layout(config, mesh, task, example_batch):
    """Shapes and shardings of the task's whole train state, from the logical axis names its
    leaves carry, with nothing allocated."""
    with _tracing_context(mesh, config):
        boxed = jax.eval_shape(task.init_state, _run_keys(config)[0], example_batch)
    return nn.meta.unbox(boxed), sharding.logical_shardings(boxed, mesh, config.sharding_rules)


def _run_keys(config) -> tuple[jax.Array, jax.Array]:
    """(the key the state is initialised from, the key step s folds in s to draw from)."""
    init_key, step_key = jax.random.split(jax.random.PRNGKey(config.seed))
    return init_key, step_key


def _tracing_context(mesh, config) -> contextlib.ExitStack:
    """Mesh and logical-axis rules in scope, for the models' activation sharding constraints."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(config.sharding_rules))
    return stack


def init_state(run: Run, restored: dict | None = None) -> Any:
    """A step-0 state, freshly initialised from config.seed and laid out over the mesh; with
    `restored` (items of another run's state, see `config.init_from`), the task puts those in."""
    init_key, _ = _run_keys(run.config)

    def create():
        batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in run.example_batch.items()}
        return nn.meta.unbox(run.task.init_state(init_key, batch))

    with _tracing_context(run.mesh, run.config):
        state = jax.jit(create, out_shardings=run.state_shardings)()
    return state if restored is None else run.task.warm_start(state, restored)


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Where config.init_from's weights come from: another run's checkpoint `step`, or
    (`step` None) a pretrained checkpoint the task reads (`Task.pretrained_items`)."""

    source: str
    step: int | None


def check_warm_start(run: Run) -> WarmStart:
    """config.init_from, checked against this run's state before anything is written."""
    source = run.config.init_from
    if is_dlx_workdir(source):
        return WarmStart(
            source, warm_start_step(source, run.abstract_state, run.task.warm_start_items)
        )
    check_pretrained_items(source, run.task.pretrained_items(source), run.abstract_state)
    return WarmStart(source, None)


def starting_state(run: Run, warm_start: WarmStart | None) -> Any:
    """The state a fresh run starts from: initialised from config.seed, then config.init_from's
    weights put in."""
    if warm_start is None:
        return init_state(run)
    if warm_start.step is None:
        return init_state(run, run.task.pretrained_items(warm_start.source))
    items = run.task.warm_start_items
    restored = restore_items(
        warm_start.source, warm_start.step, run.abstract_state, run.state_shardings, items
    )
    return init_state(run, restored)


def restore_state(run: Run, checkpointer: Checkpointer, step: int, with_data: bool = True):
    """(state, data state) of checkpoint `step`. A task that checkpoints part of its state
    (`Task.checkpointed`, e.g. without frozen pretrained weights) gets the rest from the state a
    fresh run starts from (the seed and config.init_from), which is the same at every resume."""
    task = run.task
    saved, data_state = checkpointer.restore(
        task.checkpointed(run.abstract_state),
        task.checkpointed(run.state_shardings),
        step=step,
        with_data=with_data,
    )
    if task.checkpoints_whole_state():
        return saved, data_state
    warm_start = check_warm_start(run) if run.config.init_from else None
    return task.restore_checkpointed(starting_state(run, warm_start), saved), data_state


class _WithKey:
    """A jitted `f(*args, key)` called as `f(*args)` with the run's key (also `.lower`)."""

    def __init__(self, compiled, key: jax.Array):
        self.compiled, self.key = compiled, key

    def __call__(self, *args):
        return self.compiled(*args, self.key)

    def lower(self, *args):
        return self.compiled.lower(*args, self.key)


def compile_steps(run: Run):
    """The jitted train step `(state, batch, step) -> (state, metrics)`: the task's step with
    this step's random key, and the NaN guard on the metrics the task names. The run's key is an
    argument of the compiled program, not a constant in it, so runs that differ only in their
    seed share one compilation (through the persistent cache, where one is set)."""
    batch_sharding = sharding.batch_sharding(run.mesh)
    replicated = sharding.replicated(run.mesh)
    skip_nonfinite = run.config.nan_policy == "skip"
    _, step_key = _run_keys(run.config)
    watched = run.task.nonfinite_metrics

    def train_step(state, batch, step, step_key):
        new_state, metrics = run.task.train_step(
            state, batch, jax.random.fold_in(step_key, step), step
        )
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(metrics[k])) for k in watched]))
        if skip_nonfinite:
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        return new_state, {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}

    compiled = jax.jit(
        train_step,
        in_shardings=(run.state_shardings, batch_sharding, replicated, replicated),
        out_shardings=(run.state_shardings, None),
        donate_argnums=0,
        compiler_options=runtime.compiler_options(),
    )
    return _WithKey(compiled, step_key)


def compile_layer_stats(run: Run):
    """The jitted `(state, batch, step) -> (scalars, histogram samples)` of the task's per-layer
    statistics of the train step at `step` (same batch and random key as that step)."""
    _, step_key = _run_keys(run.config)

    def stats(state, batch, step, step_key):
        report = run.task.layer_stats(state, batch, jax.random.fold_in(step_key, step), step)
        return layer_stats.summarize(report)

    replicated = sharding.replicated(run.mesh)
    compiled = jax.jit(
        stats,
        in_shardings=(
            run.state_shardings,
            sharding.batch_sharding(run.mesh),
            replicated,
            replicated,
        ),
        out_shardings=replicated,
        compiler_options=runtime.compiler_options(),
    )
    return _WithKey(compiled, step_key)


def run_eval(run: Run, state, evaluator=None) -> tuple[dict[str, float], Any]:
    """(metrics, the evaluator's merged accumulator) of `state` on config.data.eval_split."""
    evaluator = evaluator or run.task.evaluator()
    source = run.task.source(run.config.data.eval_split, train=False)
    acc = evaluator.init()
    for local in data_lib.eval_batches(
        source,
        global_batch_size=run.config.data.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        with _tracing_context(run.mesh, run.config):
            acc = evaluator.update(acc, state, sharding.shard_batch(local, run.mesh))
    acc = evaluator.merge(acc)
    return evaluator.result(acc), acc


# ------------------------------------------------------------------------------------------------
# Workdir
# ------------------------------------------------------------------------------------------------
def _check_workdir_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    changed = [
        k
        for k in config_lib.differences(config_lib.from_json(path), config)
        if k not in config_lib.resumable_changes(config)
    ]
    if changed:
        raise ConfigError(
            f"{workdir} holds a run with a different config ({', '.join(changed[:5])} differ); "
            f"resume it with its own config ({path}) or pick a new --workdir"
        )


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
        workdir_lib.write_atomically(
            os.path.join(workdir, "config.json"), config_lib.to_json(config) + "\n"
        )


def _versions() -> dict[str, str]:
    import flax
    import orbax.checkpoint

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax_checkpoint": orbax.checkpoint.__version__,
        "numpy": np.__version__,
    }


def _best_metric(run: Run) -> tuple[str, str]:
    name, mode = run.task.best_metric_default
    return (run.config.best_metric or name), mode


# ------------------------------------------------------------------------------------------------
# Preemption: SIGTERM/SIGINT ask for a checkpoint and a clean exit
# ------------------------------------------------------------------------------------------------
class _StopRequest:
    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal means "now"
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """All processes stop at the same step, whichever of them got the signal."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
        return bool(np.any(flags))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> dict:
    """Trains `config` into `workdir` on a mesh over `devices` (default: all of them), resuming
    from the workdir's newest intact checkpoint; returns the run's summary."""
    run = prepare_run(config, workdir, devices)
    _check_workdir_config(config, workdir)
    # One order of initialisation: the workdir's checkpoint, else config.init_from, else scratch.
    warm_start = None
    if config.init_from and finished_step(os.path.join(workdir, "checkpoints")) is None:
        warm_start = check_warm_start(run)  # checked before anything is written
    with workdir_lib.locked(workdir):  # one run at a time; the lock of a killed run is stale
        return _train(config, workdir, run, warm_start)


def _train(
    config: ml_collections.ConfigDict, workdir: str, run: Run, warm_start: WarmStart | None
) -> dict:
    checkpoints = os.path.join(workdir, "checkpoints")
    # The newest intact checkpoint: damaged ones are moved aside, unfinished ones deleted.
    start_step = usable_step(checkpoints, resuming_workdir=workdir) or 0
    if not start_step and config.init_from and warm_start is None:  # it held unfinished ones only
        warm_start = check_warm_start(run)
    _write_config(config, workdir)
    if jax.process_index() == 0:
        write_data_spec(run, workdir)
        run.task.write_run_files(workdir)
    git = provenance.save_git_state(workdir) if jax.process_index() == 0 else None
    is_main = jax.process_index() == 0
    cfg = run.config

    best_name, best_mode = _best_metric(run)
    checkpointer = Checkpointer(
        checkpoints, keep_latest=cfg.keep_checkpoints, best_metric=best_name, best_mode=best_mode
    )
    train_source = run.task.source(cfg.data.train_split, train=True)
    train_iter = data_lib.train_iterator(
        train_source,
        global_batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=cfg.data.num_threads,
        prefetch=cfg.data.prefetch,
    )

    if start_step:
        state, data_state = restore_state(run, checkpointer, start_step)
        train_iter.set_state(data_state)
        log(f"Resumed from {workdir}/checkpoints at step {start_step}.")
    else:
        state = starting_state(run, warm_start)
        if warm_start and warm_start.step is not None:
            log(
                f"Initialised from {warm_start.source}/checkpoints at step {warm_start.step} "
                f"({', '.join(run.task.warm_start_items)}; the rest of the state, the step and "
                f"the data start afresh)."
            )
        elif warm_start:
            log(f"Initialised from the pretrained checkpoint {warm_start.source}.")
    train_step = compile_steps(run)
    stats_every = cfg.layer_stats_every_steps
    layer_stats_of = compile_layer_stats(run) if stats_every else None
    evaluator = run.task.evaluator()
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
    steps_per_epoch = run.steps_per_epoch
    log_every = max(1, cfg.log_every_steps)
    eval_every = config_lib.period(cfg, "eval_every", steps_per_epoch)
    checkpoint_every = config_lib.period(cfg, "checkpoint_every", steps_per_epoch)
    log(
        f"Training {cfg.task} ({cfg.model.get('name')}) on {cfg.data.name}: {run.total_steps} steps "
        f"({run.total_steps / steps_per_epoch:.2f} epochs) of global batch {cfg.data.batch_size} "
        f"on mesh {dict(run.mesh.shape)} ({run.mesh.devices.size} {jax.default_backend()} devices, "
        f"{jax.process_count()} process(es))."
    )

    throughput = progress_lib.throughput_of(
        run.task,
        cfg.data.batch_size,
        cfg.model.get("dtype", "float32"),
        measure_peak=is_main and start_step < run.total_steps,
    )
    progress = progress_lib.Progress(
        run.total_steps,
        start_step,
        throughput,
        enabled=is_main and cfg.progress_bar,
        main=is_main,
        watched=run.task.nonfinite_metrics,
    )
    trace = profiling.TraceWindow(cfg.profile_steps, workdir)
    pending: list[tuple[int, dict]] = []
    eval_metrics: dict[str, float] = {}
    last_train: dict[str, float] = {}
    t_start = time.time()
    timed_steps, timed_seconds, t_window = 0, 0.0, time.time()

    def flush() -> None:
        """Pulls the pending per-step metrics to the host, checks them, writes their mean."""
        nonlocal pending, last_train, timed_steps, timed_seconds, t_window
        if not pending:
            return
        host = jax.device_get([m for _, m in pending])
        for (step, _), values in zip(pending, host):
            if values["nonfinite"] and cfg.nan_policy == "stop":
                checkpointer.wait()
                good = checkpointer.latest_step()
                where = (
                    f"the last good checkpoint is step {good} in {workdir}/checkpoints"
                    if good
                    else "no checkpoint was written yet"
                )
                raise NonFiniteError(
                    f"{' or '.join(run.task.nonfinite_metrics)} became NaN/Inf at step {step}; "
                    f"{where}. Lower the learning rate, add clipping, or set "
                    f"nan_policy='skip'."
                )
        step = pending[-1][0]
        elapsed = time.time() - t_window
        timed_steps += len(pending)
        timed_seconds += elapsed
        last_train = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k != "nonfinite"}
        if cfg.nan_policy == "skip":
            last_train["skipped_updates"] = float(sum(h["nonfinite"] for h in host))
        last_train["steps_per_sec"] = len(pending) / max(elapsed, 1e-9)
        writer.write(step, "train", last_train)
        progress.report(step, last_train)
        pending, t_window = [], time.time()

    step = start_step
    if start_step >= run.total_steps:  # already finished: report, train nothing
        eval_metrics, _ = run_eval(run, state, evaluator)
    stopped = False
    try:
        with _StopRequest() as stop:
            while step < run.total_steps and not stopped:
                batch = next(train_iter)
                if jax.process_count() > 1:  # one process: the jitted step places the numpy
                    batch = sharding.shard_batch(batch, run.mesh)  # batch itself, ~10x cheaper
                trace.before_step(step + 1)
                stats = None
                with _tracing_context(run.mesh, cfg):
                    if stats_every and (step + 1) % stats_every == 0:  # before: state is donated
                        stats = layer_stats_of(state, batch, np.int32(step))
                    state, metrics = train_step(state, batch, np.int32(step))
                step += 1
                if stats is not None:
                    scalars, samples = jax.device_get(stats)
                    writer.write(step, "layers", scalars)
                    writer.write_histograms(step, "layers", samples)
                trace.after_step(step, metrics)
                pending.append((step, metrics))
                progress.update(1)
                is_last = step == run.total_steps
                do_eval = is_last or config_lib.is_due(step, eval_every)
                do_checkpoint = is_last or config_lib.is_due(step, checkpoint_every)
                # One process alone checks every step; many compare flags at log steps only.
                check_stop = not is_last and (jax.process_count() == 1 or step % log_every == 0)
                stopped = check_stop and stop.agreed()
                if step % log_every == 0 or do_eval or do_checkpoint or stopped:
                    flush()
                if do_eval:
                    eval_metrics, eval_acc = run_eval(run, state, evaluator)
                    writer.write(step, "eval", eval_metrics)
                    with _tracing_context(run.mesh, cfg):
                        evaluator.write_artifacts(eval_acc, state, workdir, step)
                    progress.write(
                        f"step {step}: eval "
                        + ", ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items())
                    )
                    t_window = time.time()  # eval time is not training throughput
                if do_checkpoint or stopped:
                    checkpointer.save(
                        step,
                        run.task.checkpointed(state),
                        train_iter.get_state(),
                        eval_metrics if do_eval else None,
                    )
    finally:  # also on NaN or errors: let in-flight checkpoint saves finish
        trace.close()
        progress.close()
        checkpointer.close()
        writer.close()
    if stopped:
        log(f"Stopped by signal at step {step}; checkpoint saved. Run the same command to resume.")
        return {"stopped_at": step}
    summary_path = os.path.join(workdir, "summary.json")
    if start_step >= run.total_steps and os.path.exists(summary_path):
        # Already finished: keep the summary of the run that trained (its wall time and speed).
        with open(summary_path) as f:
            return {**json.load(f), "final_eval": eval_metrics}
    wall = time.time() - t_start
    summary = {
        "final_eval": eval_metrics,
        "final_train": last_train,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "wall_time_s": wall,
        "num_params": run.task.num_params(run.abstract_state),
        "trainable_params": run.task.trainable_params(run.abstract_state),
        "train_steps_per_sec": timed_steps / timed_seconds if timed_seconds else None,
        "resumed_from_step": start_step,
        "device_count": run.mesh.devices.size,
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "mesh": dict(run.mesh.shape),
        "versions": _versions(),
        **progress.summary(timed_steps / timed_seconds if timed_seconds else None),
        "command": provenance.command_line(),
        "cwd": os.getcwd(),
        "git_commit": git and git["commit"],
        "git_dirty": git and git["dirty"],
        "git_diff": git and git["diff_file"],
    }
    if is_main:
        workdir_lib.write_atomically(summary_path, json.dumps(summary, indent=2))
        plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "plots"))
    return summary


EVAL_RESULTS = "eval_results.jsonl"


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Scores the latest checkpoint of `workdir` on config.data.eval_split, and appends the
    result (with the split, the time and the command) to `workdir/eval_results.jsonl`."""
    sharding.fit_mesh_to_devices(config.mesh, jax.device_count())
    run = prepare_run(config, workdir)
    state, step = restore_latest(run, workdir)
    metrics, _ = run_eval(run, state)
    if jax.process_index() == 0:
        record = {
            "step": step,
            "split": config.data.eval_split,
            **metrics,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": provenance.command_line(),
        }
        with open(os.path.join(workdir, EVAL_RESULTS), "a") as f:
            f.write(json.dumps(record) + "\n")
    return {"step": step, **metrics}


def restore_latest(run: Run, workdir: str):
    """(state, step) of the workdir's latest finished checkpoint, restored onto run's mesh."""
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise ConfigError(f"{workdir} has no checkpoints; train it first")
    best_name, best_mode = _best_metric(run)
    checkpointer = Checkpointer(
        checkpoints,
        keep_latest=run.config.keep_checkpoints,
        best_metric=best_name,
        best_mode=best_mode,
        read_only=True,
    )
    try:
        step = checkpointer.latest_step()  # the newest intact one
        if step is None:
            raise ConfigError(f"{checkpoints} holds no finished checkpoint; train it first")
        state, _ = restore_state(run, checkpointer, step, with_data=False)
    except StateMismatch as e:
        path = os.path.join(workdir, "config.json")
        changed = (
            config_lib.differences(config_lib.from_json(path), run.config)
            if os.path.exists(path)
            else []
        )
        overrides = f" (this command changes {', '.join(changed[:5])} of {path})" if changed else ""
        raise ConfigError(
            f"{e}. The run's own model and optimizer config restore it: leave out the "
            f"overrides that change them{overrides}"
        ) from None
    finally:
        checkpointer.close()
    return state, step
