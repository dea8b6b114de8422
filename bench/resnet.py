"""dlx vs PyTorch on this machine's CPU: the ResNet train step (configs/fashion_resnet.py, batch
128 of 28x28x1 Fashion-MNIST), dlx with each batch-norm formulation, model FLOPs and % of the
matmul peak.

    .venv/bin/python bench/resnet.py                       # peak, ResNet-20, ResNet-56
    .venv/bin/python bench/resnet.py --only resnet20 --rounds 3 --steps 5

Prints a markdown table and writes bench/results_resnet.json. dlx runs as the runner runs it
(`loop.prepare_run` -> `init_state` -> `compile_steps`, 1-device mesh, the runner's XLA:CPU
options; bench/run.py's `build_dlx`), once per formulation of `config.model.formulation`:
"fused" (the CPU default: one-pass statistics, closed-form gradient, block outputs written once)
and "plain" (the jnp expressions under autodiff, the GPU/TPU default). PyTorch runs
bench/torch_resnet.py's reference of the same network from dlx's initial weights, NCHW,
`torch.set_num_threads(2)`, SGD with Nesterov momentum and weight decay on the kernels, label
smoothing: uint8 -> float / 255, forward, loss, backward, step. All three train on the same
fixed batch, alternating in rounds (each after one untimed step); rounds during which other
processes were busy are retried (bench/run.py's `quiet_rounds`) and the median round is kept.
Model FLOPs count every convolution and the head (`resnet.forward_flops`), x3 for a train step.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # the repo root, for `configs` and `bench`

import jax  # noqa: E402
import torch  # noqa: E402

from bench import generative as bench_generative  # noqa: E402
from bench import run as bench_run  # noqa: E402
from bench import torch_models, torch_resnet  # noqa: E402
from configs import fashion_resnet  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.models import resnet  # noqa: E402

SECTIONS = ("peak", "resnet20", "resnet56")
DEPTHS = {"resnet20": 20, "resnet56": 56}
GOAL_RATIO = 1.0  # dlx ms / torch ms
FORMULATIONS = ("fused", "plain")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument("--steps", type=int, default=5, help="train steps per side per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    args = bench_run.parse_with_sections(
        parser, argv, SECTIONS, os.path.join(BENCH_DIR, "results_resnet.json")
    )
    if min(args.rounds, args.steps) < 1 or args.warmup < 0:
        parser.error("--rounds and --steps must be >= 1, --warmup >= 0")
    return args


def config_for(depth: int, formulation: str):
    config = fashion_resnet.get_config()
    config.model.depth = depth
    config.model.formulation = formulation
    config.progress_bar = False
    return config


def torch_runner(model: bench_run.DlxModel) -> bench_run.StepRunner:
    """The reference's step on the dlx model's batch, from its initial weights."""
    config, state = model.run.config, jax.device_get(model.state)
    images, labels = torch_models.to_torch_batch(model.numpy_batch)
    net = torch_resnet.from_dlx_model(model.run.task.model, images.shape[1])
    torch_resnet.load_dlx(net, state.params, state.model_state["batch_stats"])
    step = torch_models.train_step(
        net, torch_resnet.sgd(net, config.optimizer), config.loss.label_smoothing
    )

    return bench_run.classifier_steps(step, images, labels)


def compare(section: str, args, peak_gflops: float | None) -> dict[str, Any]:
    depth = DEPTHS[section]
    models = {f: bench_run.build_dlx(config_for(depth, f)) for f in FORMULATIONS}
    runners: dict[str, bench_run.StepRunner] = {
        "dlx": models["fused"].run_steps,
        "dlx_plain": models["plain"].run_steps,
        "torch": torch_runner(models["fused"]),
    }
    for run_steps in runners.values():
        run_steps(args.warmup)  # the dlx steps compile on their first call
    result = bench_generative.timed_rounds(runners, args.steps, args.rounds)
    result["ratio_plain"] = result["dlx_plain_ms"] / result["torch_ms"]
    model = models["fused"].run.task.model
    image_shape = tuple(models["fused"].numpy_batch["image"].shape[1:])
    batch = models["fused"].run.config.data.batch_size
    flop = 3 * batch * resnet.forward_flops(model, image_shape)
    return {
        "depth": depth,
        "batch_size": batch,
        "image_shape": image_shape,
        "parameters": models["fused"].run.task.num_params(models["fused"].state),
        **bench_generative.with_throughput(result, flop, peak_gflops, tuple(runners)),
        "goal_ratio": GOAL_RATIO,
    }


def report(results: dict) -> str:
    pct, verdict = bench_run._pct, bench_run._verdict
    lines = bench_run.report_header(results)
    sections = [(k, results[k]) for k in DEPTHS if k in results]
    if sections:
        lines += [
            "",
            "| train step (batch 128, 28x28x1) | dlx fused ms | dlx plain ms | torch ms "
            "| dlx/torch (goal <= 1.0) | plain/torch | model GFLOP/step "
            "| dlx GFLOP/s (% peak) | torch GFLOP/s (% peak) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in sections:
            ok = verdict(r["ratio"] <= r["goal_ratio"], r)
            lines.append(
                f"| ResNet-{r['depth']} ({r['parameters']:,} params) | {r['dlx_ms']:.1f} "
                f"| {r['dlx_plain_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} ({ok}) "
                f"| {r['ratio_plain']:.2f} | {r['flops'] / 1e9:.1f} | {r['dlx_gflops']:.0f} "
                f"({pct(r.get('dlx_peak_fraction'))}) | {r['torch_gflops']:.0f} "
                f"({pct(r.get('torch_peak_fraction'))}) |"
            )
    notes = [("peak", results.get("peak") or {}), *sections]
    return "\n".join(lines + bench_run.load_notes(results, notes))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    peak_gflops = bench_run.measure_peak(results) if "peak" in args.only else None
    for section in DEPTHS:
        if section in args.only:
            results[section] = compare(section, args, peak_gflops)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
