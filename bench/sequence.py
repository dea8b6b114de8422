"""dlx vs PyTorch on this machine's CPU for sequence models: LSTM and GRU layers, and the
character GPT train step (nanoGPT size and `:small`), with model FLOPs and % of matmul peak.

    .venv/bin/python bench/sequence.py                       # everything (5-10 min on 2 cores)
    .venv/bin/python bench/sequence.py --only lstm,gru       # sections: peak, lstm, gru, gpt,
                                                             # gpt_small
    .venv/bin/python bench/sequence.py --only peak,gpt --gpt-rounds 5 --gpt-steps 1
    .venv/bin/python bench/sequence.py --only gpt,gpt_small --gpt-dtype bfloat16 \
        --out bench/results_sequence_bf16.json   # mixed precision on both sides

Prints a markdown table and writes bench/results_sequence.json. dlx and PyTorch (2 threads) are
timed alternating in rounds, each side's round after one untimed call (the steady state of a
training loop), the layers in this process, each GPT side in a worker process of its own
(`SideWorker`); rounds during which other processes were busy are retried (bench/run.py's
`quiet_rounds`) and the median round is kept.
- Layers: one `dlx.layers.recurrent.Recurrent` layer vs `torch.nn.LSTM/GRU` (batch-first, same
  weights), forward + backward (gradients of sum(h * g) for a fixed g w.r.t. the weights and the
  input); outputs and gradients are checked to agree before timing. Each side's forward alone
  (no gradient, so no saved residuals) is timed in the same rounds, to tell where a gap lies.
- GPT: the runner's compiled train step (`loop.prepare_run` -> `init_state` -> `compile_steps`,
  forward + backward + clipping + AdamW, dropout on) on one fixed batch, vs bench/torch_lm.py's
  GPT twin with the same weights, loss, clipping and AdamW. Model FLOPs from
  `transformer.train_flops_per_token`, XLA's cost analysis of the compiled step next to it.
  `--gpt-dtype bfloat16`: dlx with `config.model.dtype="bfloat16"` against PyTorch's forward
  under `torch.autocast("cpu", torch.bfloat16)` (both keep float32 weights, optimizer and
  logits); % of peak is then left out (the peak measured is float32's).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # the repo root, for `configs` and `bench`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench import run as bench_run  # noqa: E402
from bench import torch_lm  # noqa: E402
from dlx import data as data_lib  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.layers import recurrent  # noqa: E402
from dlx.models import transformer  # noqa: E402
from dlx.train import loop, sharding  # noqa: E402

LAYERS = ("lstm", "gru")
GPTS = {"gpt": None, "gpt_small": "small"}  # section -> configs/shakespeare_gpt.py variant
SECTIONS = ("peak", *LAYERS, *GPTS)
GOAL_RATIO = 1.0
GOAL_PEAK_FRACTION = 0.30  # the nanoGPT-size step only
LAYER_SHAPE = dict(batch=64, steps=128, inputs=256, hidden=512)
StepRunner = Callable[[int], float]  # run_steps(n) -> seconds for n calls, all finished


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument(
        "--layer-steps", type=int, default=5, help="forward+backward calls per layer round"
    )
    parser.add_argument(
        "--gpt-rounds",
        type=int,
        default=3,
        help="timed rounds for the nanoGPT-size model (~20 s each)",
    )
    parser.add_argument(
        "--gpt-steps", type=int, default=2, help="train steps per round for the nanoGPT-size model"
    )
    parser.add_argument(
        "--gpt-small-steps", type=int, default=10, help="train steps per round for the :small model"
    )
    parser.add_argument(
        "--gpt-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype of both GPTs (see the module docstring)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # SECTION:SIDE, see SideWorker
    args = bench_run.parse_with_sections(
        parser, argv, SECTIONS, os.path.join(BENCH_DIR, "results_sequence.json")
    )
    if (
        min(args.rounds, args.gpt_rounds, args.layer_steps, args.gpt_steps, args.gpt_small_steps)
        < 1
    ):
        parser.error("--rounds and the --*-steps must be >= 1")
    return args


def timed_rounds(runners: dict[str, StepRunner], steps: int, rounds: int) -> dict[str, Any]:
    """`bench_run.alternating_round`s while the machine is quiet; median ms per call."""
    kept = bench_run.quiet_rounds(lambda: bench_run.alternating_round(runners, steps), rounds)
    ms_rounds = {name: [r[name] for r in kept.kept] for name in runners}
    return {
        "steps_per_round": steps,
        "rounds": rounds,
        **{f"{name}_ms": statistics.median(ms) for name, ms in ms_rounds.items()},
        "ms_rounds": ms_rounds,
        "busy_rounds_dropped": kept.dropped,
        "contended": kept.contended,
    }


# ------------------------------------------------------------------------------------------------
# LSTM / GRU layer
# ------------------------------------------------------------------------------------------------
def layer_flops(cell: str, batch: int, steps: int, inputs: int, hidden: int) -> float:
    """Matmul FLOPs of forward + backward: the input and recurrent projections, 3x forward."""
    gates = recurrent.GATES[cell] * hidden
    return 3 * 2 * batch * steps * (inputs + hidden) * gates


def compare_layer(cell: str, args) -> dict[str, Any]:
    b, t, d, h = (LAYER_SHAPE[k] for k in ("batch", "steps", "inputs", "hidden"))
    torch.manual_seed(0)
    reference = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](d, h, batch_first=True)
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = {"params": recurrent.params_from_torch(state_dict, cell, 1)["layer_0"]}
    layer = recurrent.Recurrent(cell, h)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((b, t, d)).astype(np.float32)
    g_np = rng.standard_normal((b, t, h)).astype(np.float32)

    def loss(params, x, g):
        out, _ = layer.apply(params, x)
        return jnp.sum(out * g), out

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    forward_fn = jax.jit(lambda params, x: layer.apply(params, x)[0])
    x, g = jnp.asarray(x_np), jnp.asarray(g_np)
    xt, gt = torch.from_numpy(x_np).requires_grad_(True), torch.from_numpy(g_np)

    def torch_call():
        reference.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = reference(xt)
        out.backward(gt)
        return out

    # Same computation on both sides: outputs, input and weight gradients.
    (grads, x_grad), out = grad_fn(params, x, g)
    out_t = torch_call()
    names = {
        "input_kernel": "weight_ih_l0",
        "recurrent_kernel": "weight_hh_l0",
        "input_bias": "bias_ih_l0",
        "recurrent_bias": "bias_hh_l0",
    }
    errors = {
        "output": float(np.abs(np.asarray(out) - out_t.detach().numpy()).max()),
        "input_grad": float(np.abs(np.asarray(x_grad) - xt.grad.numpy()).max()),
    }
    for ours, theirs in names.items():
        reference_grad = getattr(reference, theirs).grad.numpy()
        ours_grad = np.asarray(grads["params"][ours])
        errors[ours + "_grad"] = float(
            np.abs(ours_grad - (reference_grad.T if ours_grad.ndim == 2 else reference_grad)).max()
        )
    if max(errors.values()) > 2e-3:
        raise AssertionError(f"{cell}: dlx and torch disagree: {errors}")

    def dlx_steps(n: int, call=lambda: grad_fn(params, x, g)) -> float:
        start = time.perf_counter()
        results = [call() for _ in range(n)]
        jax.block_until_ready(results)
        return time.perf_counter() - start

    def torch_steps(n: int, call=torch_call) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call()
        return time.perf_counter() - start

    def torch_forward():
        with torch.no_grad():
            return reference(xt)

    # The forward alone too, without the residuals the gradient needs: where a gap comes from.
    runners = {
        "dlx": dlx_steps,
        "torch": torch_steps,
        "dlx_forward": functools.partial(dlx_steps, call=lambda: forward_fn(params, x)),
        "torch_forward": functools.partial(torch_steps, call=torch_forward),
    }
    for run_steps in runners.values():
        run_steps(2)  # warm-up
    result = timed_rounds(runners, args.layer_steps, args.rounds)
    flop = layer_flops(cell, b, t, d, h)
    return {
        **LAYER_SHAPE,
        **result,
        "max_abs_diff": errors,
        "ratio": result["dlx_ms"] / result["torch_ms"],
        "goal_ratio": GOAL_RATIO,
        "forward_ratio": result["dlx_forward_ms"] / result["torch_forward_ms"],
        "step_flops": flop,
        **{f"{side}_gflops": flop / result[f"{side}_ms"] / 1e6 for side in ("dlx", "torch")},
    }


# ------------------------------------------------------------------------------------------------
# Character GPT train step
# ------------------------------------------------------------------------------------------------
def gpt_config(variant: str | None):
    config = importlib.import_module("configs.shakespeare_gpt").get_config(variant)
    config.progress_bar = False
    return config


def build_dlx_lm(config) -> bench_run.DlxModel:
    """bench/run.py's `build_dlx` for the language-model task (its batches come from the task's
    window source)."""
    run = loop.prepare_run(config)
    state = loop.init_state(run)
    train_step = loop.compile_steps(run)
    source = run.task.source(config.data.train_split, train=True)
    numpy_batch = next(
        iter(
            data_lib.train_iterator(
                source, global_batch_size=config.data.batch_size, seed=config.seed
            )
        )
    )
    numpy_batch = {k: np.asarray(v) for k, v in numpy_batch.items()}
    return bench_run.DlxModel(
        run, state, train_step, sharding.shard_batch(numpy_batch, run.mesh), numpy_batch
    )


def torch_gpt_runner(config, params, numpy_batch) -> StepRunner:
    m = config.model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=m.dtype == "bfloat16")
    model = torch_lm.GPT(jax.device_get(params), m.num_heads, m.dropout)
    optimizer = torch_lm.adamw(model, config.optimizer)
    tokens = torch.tensor(numpy_batch["tokens"], dtype=torch.long)
    inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    clip = config.optimizer.clip_global_norm

    def run_steps(num_steps: int) -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            with autocast:
                logits = model(inputs).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
        return time.perf_counter() - start

    return run_steps


def initial_params_and_batch(config) -> tuple[Any, dict[str, np.ndarray]]:
    """The runner's seeded initial parameters and first train batch, without compiling a step
    (the torch side's starting point: the same numbers as the dlx side's)."""
    run = loop.prepare_run(config)
    params = jax.device_get(loop.init_state(run).params)
    source = run.task.source(config.data.train_split, train=True)
    batch = next(
        iter(
            data_lib.train_iterator(
                source, global_batch_size=config.data.batch_size, seed=config.seed
            )
        )
    )
    return params, {k: np.asarray(v) for k, v in batch.items()}


def params_checksum(params) -> float:
    return float(
        sum(
            np.abs(np.asarray(leaf, np.float64)).sum() for leaf in jax.tree_util.tree_leaves(params)
        )
    )


WORKER_REPLY = "@@bench-worker "  # prefixes the worker's protocol lines on its stdout


def _reply(message: dict) -> None:
    print(WORKER_REPLY + json.dumps(message), flush=True)


def serve_side(section: str, side: str, dtype: str) -> None:
    """Worker process of `SideWorker`: builds one side of a GPT comparison, warms it up, says
    what it built, then runs N steps for every N read from stdin and replies the seconds."""
    torch.set_num_threads(bench_run.TORCH_THREADS)
    config = gpt_config(GPTS[section])
    config.model.dtype = dtype
    if side == "dlx":
        model = build_dlx_lm(config)
        run_steps, params = model.run_steps, model.state.params
        module = model.run.task.model  # the flax Model, vocab size filled in from the tokenizer
        info = {
            "vocab_size": module.vocab_size,
            **bench_run.xla_flops(model),
            "step_flops": transformer.train_flops_per_token(module, config.data.seq_len)
            * config.data.batch_size
            * config.data.seq_len,
        }
    else:
        params, batch = initial_params_and_batch(config)
        run_steps, info = torch_gpt_runner(config, params, batch), {}
    info["params_checksum"] = params_checksum(params)
    run_steps(1 if section == "gpt" else 3)  # compile / warm up
    _reply(info)
    for line in sys.stdin:
        _reply({"seconds": run_steps(int(line))})


class SideWorker:
    """One side of a GPT comparison in a process of its own, called as a `StepRunner`.

    Users run one framework per process, and a step's speed depends on the process's memory:
    a nanoGPT step spends 2-6 s of kernel time faulting in its buffers (dlx/runtime.py), more
    when the other side has just used and freed the memory (dlx alone in bench/profile_step.py:
    8.0-9.1 s a step; alternating in one process with torch, 2 steps a round: 11.1-12.4 s). So
    each side runs in its own process, and `bench_run.alternating_round` runs an untimed step
    before each timed one; rounds still alternate, and the workers' CPU time counts as the
    benchmark's own in the busy-round check.
    """

    def __init__(self, section: str, side: str, dtype: str):
        self.name = f"{section}:{side}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                self.name,
                "--gpt-dtype",
                dtype,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        bench_run.WORKER_PIDS.add(self.process.pid)
        self.info = self._read_reply()

    def _read_reply(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(WORKER_REPLY):
                return json.loads(line[len(WORKER_REPLY) :])
        raise RuntimeError(f"bench worker {self.name} exited with code {self.process.wait()}")

    def __call__(self, num_steps: int) -> float:
        self.process.stdin.write(f"{num_steps}\n")
        self.process.stdin.flush()
        return self._read_reply()["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        bench_run.WORKER_PIDS.discard(self.process.pid)


def compare_gpt(section: str, args, peak_gflops: float | None) -> dict[str, Any]:
    config = gpt_config(GPTS[section])
    config.model.dtype = args.gpt_dtype
    runners = {side: SideWorker(section, side, args.gpt_dtype) for side in ("dlx", "torch")}
    try:
        info = runners["dlx"].info
        if info["params_checksum"] != runners["torch"].info["params_checksum"]:
            raise RuntimeError("the dlx and torch workers start from different parameters")
        steps = args.gpt_steps if section == "gpt" else args.gpt_small_steps
        result = timed_rounds(runners, steps, args.gpt_rounds if section == "gpt" else args.rounds)
    finally:
        for worker in runners.values():
            worker.close()

    seq_len, batch, step_flops = config.data.seq_len, config.data.batch_size, info["step_flops"]
    out = {
        "model": {
            k: config.model[k]
            for k in ("num_layers", "embed_dim", "num_heads", "max_len", "dropout", "dtype")
        },
        "vocab_size": info["vocab_size"],
        "batch_size": batch,
        "seq_len": seq_len,
        "sides_in_own_processes": True,
        **result,
        "ratio": result["dlx_ms"] / result["torch_ms"],
        "goal_ratio": GOAL_RATIO,
        "step_flops": step_flops,
        "xla_forward_flops": info["xla_forward_flops"],
        "xla_step_flops": info["xla_step_flops"],
        "xla_step_over_formula": info["xla_step_flops"] / step_flops,
        "xla_forward_over_formula": info["xla_forward_flops"] / (step_flops / 3),
        **{f"{side}_gflops": step_flops / result[f"{side}_ms"] / 1e6 for side in ("dlx", "torch")},
    }
    if section == "gpt":
        out["goal_peak_fraction"] = GOAL_PEAK_FRACTION
    if peak_gflops and args.gpt_dtype == "float32":
        for side in ("dlx", "torch"):
            out[f"{side}_peak_fraction"] = out[f"{side}_gflops"] / peak_gflops
    return out


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def report(results: dict) -> str:
    pct, verdict = bench_run._pct, bench_run._verdict
    lines = bench_run.report_header(results)
    peak = results.get("peak")
    layers = {k: results[k] for k in LAYERS if k in results}
    if layers:
        s = LAYER_SHAPE
        lines += [
            "",
            f"| layer fwd+bwd (batch {s['batch']}, {s['steps']} steps, in {s['inputs']}, "
            f"hidden {s['hidden']}) | dlx ms | torch ms | dlx/torch (goal <= 1.0) "
            "| matmul GFLOP | dlx GFLOP/s | torch GFLOP/s | forward only: dlx / torch ms "
            "| max abs diff |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in layers.items():
            ok = verdict(r["ratio"] <= r["goal_ratio"], r)
            lines.append(
                f"| {name} | {r['dlx_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} "
                f"({ok}) | {r['step_flops'] / 1e9:.1f} | {r['dlx_gflops']:.0f} "
                f"| {r['torch_gflops']:.0f} | {r['dlx_forward_ms']:.1f} / "
                f"{r['torch_forward_ms']:.1f} ({r['forward_ratio']:.2f}) "
                f"| {max(r['max_abs_diff'].values()):.1e} |"
            )
    gpts = {k: results[k] for k in GPTS if k in results}
    if gpts:
        lines += [
            "",
            "| GPT train step | dlx s | torch s | dlx/torch (goal <= 1.0) "
            "| model GFLOP/step | XLA GFLOP/step (/ model) | dlx GFLOP/s (% peak) "
            "| torch GFLOP/s (% peak) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in gpts.items():
            ok = verdict(r["ratio"] <= r["goal_ratio"], r)
            goal = r.get("goal_peak_fraction")
            peak_note = (
                f", goal >= {pct(goal)}: " + verdict((r.get("dlx_peak_fraction") or 0) >= goal, r)
                if goal and "dlx_peak_fraction" in r
                else ""
            )
            m = r["model"]
            lines.append(
                f"| {name} ({m['num_layers']}x{m['embed_dim']}, ctx {r['seq_len']}, batch "
                f"{r['batch_size']}, {m.get('dtype', 'float32')}) | {r['dlx_ms'] / 1e3:.3f} "
                f"| {r['torch_ms'] / 1e3:.3f} "
                f"| {r['ratio']:.2f} ({ok}) | {r['step_flops'] / 1e9:.0f} "
                f"| {r['xla_step_flops'] / 1e9:.0f} ({r['xla_step_over_formula']:.2f}) "
                f"| {r['dlx_gflops']:.0f} ({pct(r.get('dlx_peak_fraction'))}{peak_note}) "
                f"| {r['torch_gflops']:.0f} ({pct(r.get('torch_peak_fraction'))}) |"
            )
    sections = [("peak", peak or {}), *layers.items(), *gpts.items()]
    return "\n".join(lines + bench_run.load_notes(results, sections))


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        serve_side(*args.worker.split(":"), args.gpt_dtype)
        return None
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    peak_gflops = bench_run.measure_peak(results) if "peak" in args.only else None
    for cell in LAYERS:
        if cell in args.only:
            results[cell] = compare_layer(cell, args)
    for section in GPTS:
        if section in args.only:
            results[section] = compare_gpt(section, args, peak_gflops)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
