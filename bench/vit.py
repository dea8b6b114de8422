"""dlx vs PyTorch on this machine's CPU for the Vision Transformer: the train step of
configs/fashion_vit.py's model at its batch size, with model FLOPs and % of the matmul peak.

    .venv/bin/python bench/vit.py                          # peak and the train step (~2-4 min)
    .venv/bin/python bench/vit.py --only vit --rounds 3 --steps 3
    .venv/bin/python bench/vit.py --config configs/fashion_vit.py:test --only vit
    .venv/bin/python bench/vit.py --profile                # also where each side's step goes

Prints a markdown table and writes bench/results_vit.json. dlx's side is the runner's step
(`loop.prepare_run` -> `init_state` -> `compile_steps`, as bench/run.py builds it: forward,
label-smoothed cross-entropy, gradients, clipping, AdamW) on one fixed batch of the training
split; PyTorch's is bench/torch_vit.py's ViT, loaded with dlx's initial weights, with the same
loss, clipping and AdamW (`torch.optim.AdamW`, biases and norms not decayed) on the same batch.
Both run in one process, timed alternating in rounds (each side's round after one untimed step);
rounds during which other processes were busy are retried (bench/run.py's `quiet_rounds`) and
the median round is kept. Each side's process CPU time a step is kept too: when the machine is
busy it is the steadier comparison, cleanest with both sides on one core
(`taskset -c 0 ... --torch-threads 1`). Model FLOPs: `vit.train_flops_per_example` (3x the forward's matmuls,
attention scores included); XLA's own count of the compiled step is reported beside it.
`--profile` prints the dlx step's XLA ops by time (bench/profile_step.py's trace) and
torch.profiler's table of the PyTorch step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # the repo root, for `configs` and `bench`

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import profile_step, torch_models, torch_vit  # noqa: E402
from bench import run as bench_run  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.models import vit  # noqa: E402
from dlx.train import config as config_lib  # noqa: E402

CONFIG = "configs/fashion_vit.py"
SECTIONS = ("peak", "vit")
GOAL_RATIO = 1.0  # dlx ms / torch ms


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=CONFIG, help="a configs/ file[:variant] of a vit")
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--profile", action="store_true", help="print each side's op times")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=bench_run.TORCH_THREADS,
        help="PyTorch's intra-op threads (XLA uses the cores the process may run on: with "
        "`taskset -c 0` and --torch-threads 1 both sides run on one core)",
    )
    args = bench_run.parse_with_sections(
        parser, argv, SECTIONS, os.path.join(BENCH_DIR, "results_vit.json")
    )
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    return args


def load_config(spec: str):
    config = config_lib.load(spec)
    if config.model.name != "vit":
        raise SystemExit(f"{spec} trains model '{config.model.name}', not a vit")
    config.progress_bar = False
    return config


def torch_side(model: bench_run.DlxModel):
    """(the PyTorch ViT with dlx's initial weights, its step on dlx's batch as `run_steps`)."""
    config, task = model.run.config, model.run.task
    image_shape = tuple(model.numpy_batch["image"].shape[1:])
    net = torch_vit.ViT.from_fields(
        {k: v for k, v in config.model.items() if k != "name"}, image_shape
    )
    torch_vit.load_dlx(net, model.state.params, model.state.model_state.get("batch_stats"))
    optimizer = config.optimizer
    if optimizer.name != "adamw" or optimizer.frozen or optimizer.lr_multipliers:
        raise SystemExit("the PyTorch side implements AdamW without frozen params or multipliers")
    step = torch_models.train_step(
        net,
        torch_vit.adamw(net, optimizer),
        config.loss.label_smoothing,
        optimizer.clip_global_norm,
    )
    images, labels = torch_models.to_torch_batch(model.numpy_batch)
    assert task.num_classes == config.model.num_outputs

    run_steps = bench_run.classifier_steps(step, images, labels)
    return net, step, (images, labels), run_steps


def alternating_round(runners, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """bench/run.py's `alternating_round` (each side timed after one untimed step), also
    recording each side's process CPU time a step: on a machine other processes keep busy the
    wall times stretch with the load (PyTorch's OpenMP threads most), the CPU time far less."""
    wall, cpu = {}, {}
    for name, run_steps in runners.items():
        run_steps(1)
        start = time.process_time()
        wall[name] = 1e3 * run_steps(steps) / steps
        cpu[name] = 1e3 * (time.process_time() - start) / steps
    return wall, cpu


def compare_train_step(args, peak_gflops: float | None) -> tuple[dict[str, Any], Any]:
    config = load_config(args.config)
    model = bench_run.build_dlx(config)
    net, step, batch, torch_steps = torch_side(model)
    runners = {"dlx": model.run_steps, "torch": torch_steps}
    for run_steps in runners.values():
        run_steps(args.warmup)
    rounds = bench_run.quiet_rounds(lambda: alternating_round(runners, args.steps), args.rounds)
    ms_rounds = {name: [r[0][name] for r in rounds.kept] for name in runners}
    cpu_rounds = {name: [r[1][name] for r in rounds.kept] for name in runners}
    ms = {name: statistics.median(v) for name, v in ms_rounds.items()}
    cpu_ms = {name: statistics.median(v) for name, v in cpu_rounds.items()}
    image_shape = tuple(model.numpy_batch["image"].shape[1:])
    batch_size = config.data.batch_size
    step_flops = batch_size * vit.train_flops_per_example(model.run.task.model, image_shape)
    result = {
        "config": args.config,
        "model": {k: v for k, v in config.model.items()},
        "tokens": model.run.task.model.num_tokens(image_shape),
        "batch_size": batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        **{f"{name}_ms": value for name, value in ms.items()},
        "ratio": ms["dlx"] / ms["torch"],
        "goal_ratio": GOAL_RATIO,
        "ms_rounds": ms_rounds,
        **{f"{name}_cpu_ms": value for name, value in cpu_ms.items()},
        "cpu_ratio": cpu_ms["dlx"] / cpu_ms["torch"],
        "cpu_ms_rounds": cpu_rounds,
        "busy_rounds_dropped": rounds.dropped,
        "contended": rounds.contended,
        "step_flops": step_flops,
        **bench_run.xla_flops(model),
    }
    for side in ("dlx", "torch"):
        result[f"{side}_gflops"] = step_flops / ms[side] / 1e6
        if peak_gflops:
            result[f"{side}_peak_fraction"] = result[f"{side}_gflops"] / peak_gflops
    return result, (model, net, step, batch)


def profile(sides, steps: int) -> None:
    model, net, step, (images, labels) = sides
    events, traced = profile_step.trace_events(model, steps)
    print(f"\ndlx step, traced: {1e3 * traced:.1f} ms")
    print(profile_step.op_table(profile_step.xla_ops(events), steps, 30))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(images, labels)
    print(f"\ntorch step ({steps} steps profiled):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def report(results: dict) -> str:
    pct, verdict = bench_run._pct, bench_run._verdict
    lines = bench_run.report_header(results)
    r = results.get("vit")
    if r:
        m = r["model"]
        lines += [
            "",
            f"| ViT train step (batch {r['batch_size']}) | dlx ms | torch ms "
            f"| dlx/torch (goal <= {r['goal_ratio']}) | model GFLOP/step | XLA GFLOP fwd / step "
            "| dlx GFLOP/s (% peak) | torch GFLOP/s (% peak) | CPU ms a step, dlx / torch |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {'conv stem to ' if m.get('stem') == 'conv' else ''}patch {m['patch_size']}, "
            f"{r['tokens']} tokens, {m['num_layers']} x "
            f"{m['embed_dim']}, {m['num_heads']} heads, mlp {m.get('mlp_dim') or 4 * m['embed_dim']}"
            f" | {r['dlx_ms']:.1f} | {r['torch_ms']:.1f} "
            f"| {r['ratio']:.2f} ({verdict(r['ratio'] <= r['goal_ratio'], r)}) "
            f"| {r['step_flops'] / 1e9:.1f} "
            f"| {r['xla_forward_flops'] / 1e9:.1f} / {r['xla_step_flops'] / 1e9:.1f} "
            f"| {r['dlx_gflops']:.0f} ({pct(r.get('dlx_peak_fraction'))}) "
            f"| {r['torch_gflops']:.0f} ({pct(r.get('torch_peak_fraction'))}) "
            f"| {r['dlx_cpu_ms']:.0f} / {r['torch_cpu_ms']:.0f} ({r['cpu_ratio']:.2f}) |",
            "",
            f"{results['cpus_allowed']} CPU(s) allowed, PyTorch threads {results['torch_threads']};"
            " CPU ms: the process's CPU time a step (both sides' threads, spinning included).",
        ]
    sections = [("peak", results.get("peak") or {}), *((("vit", r),) if r else ())]
    return "\n".join(lines + bench_run.load_notes(results, sections))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    results, started, other_load = bench_run.start_results()
    results.update(
        {
            "cpus_allowed": len(os.sched_getaffinity(0)),
            "torch_threads": args.torch_threads,
        }
    )
    peak_gflops = bench_run.measure_peak(results) if "peak" in args.only else None
    if "vit" in args.only:
        results["vit"], sides = compare_train_step(args, peak_gflops)
        if args.profile:
            profile(sides, args.steps)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    np.set_printoptions(precision=3)
    main()
