"""The runner: config -> mesh -> sharded jit train step -> metrics, checkpoints and plots.

`train_and_evaluate(config, workdir)` trains (resuming from the workdir if it holds a checkpoint);
`evaluate(config, workdir)` scores the workdir's latest checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import data as data_lib
from dlx.errors import ConfigError
from dlx.layers.linear import param_count
from dlx.train import config as config_lib
from dlx.train import sharding
from dlx.train.checkpoint import (Checkpointer, finished_step, restore_variables,
                                  warm_start_step)
from dlx.train.metrics import MetricWriter, plot_curves
from dlx.train.optimizer import build_optimizer, learning_rate_at
from dlx.train.state import TrainState


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
    model: Any
    tx: optax.GradientTransformation
    total_steps: int
    steps_per_epoch: float
    abstract_state: Any
    state_shardings: Any
    example_batch: dict


def prepare_run(config: ml_collections.ConfigDict, workdir: str | None = None,
                devices: list | None = None) -> Run:
    """Everything that can fail on bad input, done before the workdir is touched (a task may read
    files of an existing `workdir`, e.g. its tokenizer, but writes nothing yet). The mesh spans
    `devices` (default: all of them)."""
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    config_lib.validate_for_mesh(config, sharding.data_parallel_size(mesh), jax.process_count())
    data_dir = config.data.data_dir or None
    if jax.process_index() == 0:  # preparing is idempotent but not safe to run concurrently
        data_lib.prepare(config.data.name, data_dir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("dlx: data prepared")
    info = data_lib.info(config.data.name, data_dir)
    for split in (config.data.train_split, config.data.eval_split):
        if split not in info.num_examples:
            raise ConfigError(f"data set '{config.data.name}' has no split '{split}'; "
                              f"its splits are {sorted(info.num_examples)}")
    task = importlib.import_module(f"dlx.tasks.{config.task}").Task(config, info, data_dir, workdir)
    model = task.model
    steps_per_epoch = task.examples_per_epoch() / config.data.batch_size
    total_steps = config.train_steps or max(1, round(config.num_epochs * steps_per_epoch))
    tx = build_optimizer(config.optimizer, total_steps)

    source = task.source(config.data.train_split, train=True)
    example = {k: np.asarray(v) for k, v in source[0].items()}
    example_batch = {k: jax.ShapeDtypeStruct((config.data.batch_size, *v.shape), v.dtype)
                     for k, v in example.items()}
    abstract_state, state_shardings = _state_layout(config, mesh, task, model, tx, example_batch)
    return Run(config, mesh, info, data_dir, task, model, tx, total_steps, steps_per_epoch,
               abstract_state, state_shardings, example_batch)


def _state_layout(config, mesh, task, model, tx, example_batch):
    """Shapes and shardings of the train state, from logical names, with nothing allocated."""
    rng = jax.random.PRNGKey(0)
    with _tracing_context(mesh, config):
        abstract_variables = jax.eval_shape(task.init, rng, example_batch)
    variable_shardings = sharding.logical_shardings(abstract_variables, mesh, config.sharding_rules)
    abstract_state = jax.eval_shape(
        lambda v: TrainState.create(apply_fn=model.apply, variables=v, tx=tx, rng=rng),
        nn.meta.unbox(abstract_variables))
    replicated = sharding.replicated(mesh)
    opt_shardings = optax.tree_map_params(
        tx, lambda _, param_sharding: param_sharding, abstract_state.opt_state,
        variable_shardings["params"], transform_non_params=lambda _: replicated)
    state_shardings = abstract_state.replace(
        step=replicated, rng=replicated, params=variable_shardings["params"],
        opt_state=opt_shardings,
        model_state={k: v for k, v in variable_shardings.items() if k != "params"})
    return abstract_state, state_shardings


def _tracing_context(mesh, config) -> contextlib.ExitStack:
    """Mesh and logical-axis rules in scope, for the models' activation sharding constraints."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(config.sharding_rules))
    return stack


def init_state(run: Run, variables: dict | None = None) -> TrainState:
    """A step-0 state: from `variables` ({'params': ..., 'model_state': ...}, e.g. another
    run's, see `config.init_from`) if given, else freshly initialised from config.seed."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(run.config.seed))

    def create(given):
        if given is None:
            batch = {k: jnp.zeros(v.shape, v.dtype) for k, v in run.example_batch.items()}
            fresh = nn.meta.unbox(run.task.init(init_rng, batch))
        else:
            fresh = {"params": given["params"], **given["model_state"]}
        return TrainState.create(apply_fn=run.model.apply, variables=fresh, tx=run.tx,
                                 rng=state_rng)

    with _tracing_context(run.mesh, run.config):
        return jax.jit(create, out_shardings=run.state_shardings)(variables)


# XLA:CPU hands convolutions to YNNPACK by default, whose kernel gradient is slow: YNNPACK gets
# reductions and single matmuls only, convolutions go to Eigen (Fashion-MNIST CNN step: 60 -> 30
# ms on 2 cores). YNNPACK's matmuls beat Eigen's, most on a transposed operand (the dense input
# gradient x @ W.T: 3.5 -> 1.8 ms); BENCHMARKS.md has the measurements. YNNPACK declines a dot
# whose left operand is contracted along its leading axis, so kernel gradients (x.T @ g) stay Eigen.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compile_steps(run: Run):
    batch_sharding = sharding.batch_sharding(run.mesh)
    options = CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    skip_nonfinite = run.config.nan_policy == "skip"

    def train_step(state, batch):
        new_state, metrics = run.task.train_step(state, batch)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        if skip_nonfinite:
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
            new_state = new_state.replace(step=state.step + 1)
        return new_state, {**metrics, "nonfinite": 1.0 - finite.astype(jnp.float32)}

    train = jax.jit(train_step, in_shardings=(run.state_shardings, batch_sharding),
                    out_shardings=(run.state_shardings, None), donate_argnums=0,
                    compiler_options=options)
    evaluate = jax.jit(run.task.eval_step, in_shardings=(run.state_shardings, batch_sharding),
                       compiler_options=options)
    return train, evaluate


def run_eval(run: Run, state, eval_step) -> tuple[dict[str, float], dict]:
    source = run.task.source(run.config.data.eval_split, train=False)
    sums = None
    for local in data_lib.eval_batches(source, global_batch_size=run.config.data.eval_batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        with _tracing_context(run.mesh, run.config):
            out = eval_step(state, sharding.shard_batch(local, run.mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return run.task.summarize_eval(sums), sums


# ------------------------------------------------------------------------------------------------
# Workdir
# ------------------------------------------------------------------------------------------------
def _check_workdir_config(config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    changed = [k for k in config_lib.differences(config_lib.from_json(path), config)
               if k not in config_lib.RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(
            f"{workdir} holds a run with a different config ({', '.join(changed[:5])} differ); "
            f"resume it with its own config ({path}) or pick a new --workdir")


def _write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config) + "\n")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import flax
    import orbax.checkpoint
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "orbax_checkpoint": orbax.checkpoint.__version__, "numpy": np.__version__}


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
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    run = prepare_run(config, workdir)
    _check_workdir_config(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    # One order of initialisation: the workdir's checkpoint, else config.init_from, else scratch.
    start_step = finished_step(checkpoints) or 0
    warm_start = None
    if not start_step and config.init_from:  # checked before anything is written
        warm_start = config.init_from, warm_start_step(config.init_from, run.abstract_state)
    _write_config(config, workdir)
    if jax.process_index() == 0:
        run.task.write_run_files(workdir)
    is_main = jax.process_index() == 0
    cfg = run.config

    best_name, best_mode = _best_metric(run)
    checkpointer = Checkpointer(checkpoints, keep_latest=cfg.keep_checkpoints,
                                best_metric=best_name, best_mode=best_mode)
    train_source = run.task.source(cfg.data.train_split, train=True)
    train_iter = data_lib.train_iterator(
        train_source, global_batch_size=cfg.data.batch_size, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch)

    if start_step:
        state, data_state = checkpointer.restore(run.abstract_state, run.state_shardings)
        train_iter.set_state(data_state)
        log(f"Resumed from {workdir}/checkpoints at step {start_step}.")
    elif warm_start:
        source, source_step = warm_start
        state = init_state(run, restore_variables(
            source, source_step, run.abstract_state, run.state_shardings))
        log(f"Initialised from {source}/checkpoints at step {source_step} (params and model "
            f"state; step, optimizer and data start afresh).")
    else:
        state = init_state(run)
    _write_model_summary(run, workdir)

    train_step, eval_step = compile_steps(run)
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start_step)
    steps_per_epoch = run.steps_per_epoch
    log_every = max(1, cfg.log_every_steps)
    eval_every = config_lib.period(cfg, "eval_every", steps_per_epoch)
    checkpoint_every = config_lib.period(cfg, "checkpoint_every", steps_per_epoch)
    log(f"Training {cfg.model.name} on {cfg.data.name}: {run.total_steps} steps "
        f"({run.total_steps / steps_per_epoch:.2f} epochs) of global batch {cfg.data.batch_size} "
        f"on mesh {dict(run.mesh.shape)} ({jax.device_count()} {jax.default_backend()} devices, "
        f"{jax.process_count()} process(es)).")

    from tqdm import tqdm
    progress = tqdm(total=run.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                    disable=not (is_main and cfg.progress_bar), mininterval=1.0)
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
                where = (f"the last good checkpoint is step {good} in {workdir}/checkpoints"
                         if good else "no checkpoint was written yet")
                raise NonFiniteError(
                    f"loss or gradient became NaN/Inf at step {step}; {where}. Lower "
                    f"optimizer.learning_rate, add clipping, or set nan_policy='skip'.")
        step = pending[-1][0]
        elapsed = time.time() - t_window
        timed_steps += len(pending)
        timed_seconds += elapsed
        last_train = {k: float(np.mean([h[k] for h in host])) for k in host[0] if k != "nonfinite"}
        if cfg.nan_policy == "skip":
            last_train["skipped_updates"] = float(sum(h["nonfinite"] for h in host))
        last_train["learning_rate"] = float(learning_rate_at(cfg.optimizer, run.total_steps, step - 1))
        last_train["steps_per_sec"] = len(pending) / max(elapsed, 1e-9)
        writer.write(step, "train", last_train)
        progress.set_postfix(loss=f"{last_train['loss']:.4f}", refresh=False)
        pending, t_window = [], time.time()

    step = start_step
    if start_step >= run.total_steps:  # already finished: report, train nothing
        eval_metrics, _ = run_eval(run, state, eval_step)
    stopped = False
    try:
        with _StopRequest() as stop:
            while step < run.total_steps and not stopped:
                batch = next(train_iter)
                if jax.process_count() > 1:  # one process: the jitted step places the numpy
                    batch = sharding.shard_batch(batch, run.mesh)  # batch itself, ~10x cheaper
                with _tracing_context(run.mesh, cfg):
                    state, metrics = train_step(state, batch)
                step += 1
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
                    eval_metrics, eval_sums = run_eval(run, state, eval_step)
                    writer.write(step, "eval", eval_metrics)
                    with _tracing_context(run.mesh, cfg):
                        run.task.write_eval_artifacts(state, eval_sums, workdir, step)
                    if is_main:
                        progress.write(f"step {step}: eval " + ", ".join(
                            f"{k}={v:.4f}" for k, v in eval_metrics.items()))
                    t_window = time.time()  # eval time is not training throughput
                if do_checkpoint or stopped:
                    checkpointer.save(step, state, train_iter.get_state(),
                                      eval_metrics if do_eval else None)
    finally:  # also on NaN or errors: let in-flight checkpoint saves finish
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
        "final_eval": eval_metrics, "final_train": last_train, "steps": step,
        "epochs": step / steps_per_epoch, "wall_time_s": wall,
        "num_params": param_count(run.abstract_state.params),
        "train_steps_per_sec": timed_steps / timed_seconds if timed_seconds else None,
        "resumed_from_step": start_step, "device_count": jax.device_count(),
        "process_count": jax.process_count(), "backend": jax.default_backend(),
        "mesh": dict(run.mesh.shape), "versions": _versions(), "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
    }
    if is_main:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
        plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "plots"))
    return summary


def _write_model_summary(run: Run, workdir: str) -> None:
    module = importlib.import_module(f"dlx.models.{run.config.model.name}")
    if jax.process_index() != 0 or not hasattr(module, "summarize"):
        return
    shape = next((v.shape for k, v in run.example_batch.items() if k in ("image", "features")), None)
    if shape is None:
        return
    text = module.summarize(run.model, (1, *shape[1:]))
    with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
        f.write(text + "\n")


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Scores the latest checkpoint of `workdir` on config.data.eval_split."""
    run = prepare_run(config, workdir)
    state, step = _restore_latest(run, workdir)
    _, eval_step = compile_steps(run)
    metrics, _ = run_eval(run, state, eval_step)
    return {"step": step, **metrics}


def _restore_latest(run: Run, workdir: str):
    """(state, step) of the workdir's latest finished checkpoint, restored onto run's mesh."""
    checkpoints = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoints):
        raise ConfigError(f"{workdir} has no checkpoints; train it first")
    best_name, best_mode = _best_metric(run)
    checkpointer = Checkpointer(checkpoints, keep_latest=run.config.keep_checkpoints,
                                best_metric=best_name, best_mode=best_mode, read_only=True)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise ConfigError(f"{checkpoints} holds no finished checkpoint; train it first")
        state, _ = checkpointer.restore(run.abstract_state, run.state_shardings, with_data=False)
    finally:
        checkpointer.close()
    return state, step


def sample(config: ml_collections.ConfigDict, workdir: str, *, prompt: str, max_new_tokens: int,
           temperature: float, top_k: int, top_p: float, num_samples: int, seed: int,
           out=sys.stdout) -> list[str]:
    """Generates text from the latest checkpoint of `workdir`, streaming one sample to `out` as
    it is produced (several samples are printed when done)."""
    from dlx.tasks.language_model import check_sampling
    check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)
    if num_samples < 1:
        raise ConfigError("num_samples must be >= 1")
    run = prepare_run(config, workdir)
    if not hasattr(run.task, "stream_tokens"):
        raise ConfigError(f"task '{config.task}' does not generate text; sample needs a "
                          f"language_model run")
    state, _ = _restore_latest(run, workdir)
    tokenizer = run.task.tokenizer
    live = num_samples == 1 and jax.process_index() == 0
    if live:
        out.write(prompt)
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    shown = ""
    with _tracing_context(run.mesh, config):
        for tokens in run.task.stream_tokens(
                state.params, run.task.encode_prompt(prompt), rng=jax.random.PRNGKey(seed),
                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                num_samples=num_samples):
            for row, token in zip(rows, tokens):
                row.append(int(token))
            if live:
                text = tokenizer.decode(rows[0])
                if not text.endswith("\ufffd"):  # a byte-level token may end mid-character
                    out.write(text[len(shown):])
                    out.flush()
                    shown = text
    texts = [tokenizer.decode(row) for row in rows]
    if jax.process_index() == 0:
        if live:
            out.write(texts[0][len(shown):] + "\n")
        else:
            for i, text in enumerate(texts):
                out.write(f"=== sample {i} ===\n{prompt}{text}\n\n")
        out.flush()
    return texts
