"""dlx vs PyTorch on this machine's CPU for the generative models: the DCGAN train step (both
players), the DDPM U-Net train step and DDIM sampling, with model FLOPs and % of matmul peak.

    .venv/bin/python bench/generative.py                       # everything (~3-5 min on 2 cores)
    .venv/bin/python bench/generative.py --only dcgan,unet     # sections: peak, dcgan, unet, ddim
    .venv/bin/python bench/generative.py --rounds 3 --ddim-rounds 2

Prints a markdown table and writes bench/results_generative.json. Both sides run at the configs'
sizes (configs/fashion_dcgan.py, configs/fashion_ddpm.py: batch 64) from the same weights (dlx's
seeded initial state, copied into bench/torch_generative.py's reference), in one process, timed
alternating in rounds, each side's round after one untimed call; rounds during which other
processes were busy are retried (bench/run.py's `quiet_rounds`) and the median round is kept.
- Train steps: dlx's runner step (`loop.prepare_run` -> `init_state` -> `compile_steps`, as
  bench/run.py builds it) on one fixed batch, against the reference's step on the same batch
  (DCGAN: discriminator update on real + fresh fakes, then the generator update; DDPM: noise
  prediction loss, clipping, Adam, EMA).
- DDIM: `config.diffusion.sample_steps` (50) steps from noise for a batch of `--sample-batch`
  images from the EMA weights: dlx's jitted sampler (`diffusion.Task._jitted_sample`, compiled
  with the options of dlx's train steps) against the reference's loop under `torch.no_grad()`;
  reported as images per second.
Model FLOPs count the convolutions and dense layers of the dlx modules as they run (an
interceptor adds up 2 x output size x kernel taps x input channels per call, the attention's two
score matmuls added), so a resize-convolution counts as the 3x3 convolution on the upsampled map
whatever its implementation (dlx's `upsample_conv` executes 4/9 of that count, so its "% of peak"
can pass 100%). A train step costs 3x the forward per network (the DCGAN step: 4x the generator's
forward and 8x the discriminator's on one batch; see `dcgan_step_flops`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # the repo root, for `configs` and `bench`

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import run as bench_run  # noqa: E402
from bench import torch_generative  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.train import loop  # noqa: E402

CONFIGS = {
    "dcgan": "configs/fashion_dcgan.py",
    "unet": "configs/fashion_ddpm.py",
    "ddim": "configs/fashion_ddpm.py",
}
SECTIONS = ("peak", "dcgan", "unet", "ddim")
GOAL_RATIO = {"dcgan": 1.0, "unet": 1.0}  # dlx ms / torch ms
StepRunner = Callable[[int], float]  # run(n) -> seconds for n calls, all finished


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the median is kept")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--dcgan-steps", type=int, default=5, help="DCGAN steps per round")
    parser.add_argument("--unet-steps", type=int, default=2, help="U-Net steps per round")
    parser.add_argument(
        "--ddim-rounds",
        type=int,
        default=2,
        help="timed DDIM rounds, one sampling call per side each",
    )
    parser.add_argument("--sample-batch", type=int, default=64, help="images per DDIM call")
    args = bench_run.parse_with_sections(
        parser, argv, SECTIONS, os.path.join(BENCH_DIR, "results_generative.json")
    )
    if (
        min(args.rounds, args.ddim_rounds, args.dcgan_steps, args.unet_steps, args.sample_batch) < 1
        or args.warmup < 0
    ):
        parser.error("--rounds, --ddim-rounds, the --*-steps and --sample-batch must be >= 1")
    return args


# ------------------------------------------------------------------------------------------------
# Model FLOPs
# ------------------------------------------------------------------------------------------------
def forward_flops(model: nn.Module, *args, method: str | None = None, **kwargs) -> int:
    """Multiply-add FLOPs (x2) of the convolutions, dense layers and attention score matmuls in
    one call of `model` (shapes only: nothing is computed)."""
    total = 0

    def count(next_fun, call_args, call_kwargs, context):
        nonlocal total
        out = next_fun(*call_args, **call_kwargs)
        module, x = context.module, call_args[0] if call_args else None
        if context.method_name != "__call__" or x is None:
            return out
        if isinstance(module, nn.Conv):
            total += 2 * out.size * int(np.prod(module.kernel_size)) * x.shape[-1]
        elif isinstance(module, nn.Dense):
            total += 2 * out.size * x.shape[-1]
        elif type(module).__name__ == "SelfAttention":  # QK^T and weights @ V over H*W positions
            b, height, width, c = x.shape
            total += 2 * 2 * b * (height * width) ** 2 * c
        return out

    def init_and_apply():
        variables = model.init(jax.random.PRNGKey(0), *args, method=method, **kwargs)
        with nn.intercept_methods(count):
            return model.apply(variables, *args, method=method, **kwargs)

    jax.eval_shape(init_and_apply)
    return total


def dcgan_step_flops(model, batch: int) -> int:
    """The DCGAN step: the fakes (G forward), the discriminator's forward and backward on the real
    and the fake batch (2 x 3D), the generator's forward and backward (3G), the discriminator's
    forward and input gradient for it (2D): 4G + 8D, G and D one forward on one batch."""
    z = jnp.zeros((batch, model.latent_dim))
    images = jnp.zeros((batch, *model.image_shape))
    g = forward_flops(model, z, method="generate")
    d = forward_flops(model, images, method="discriminate")
    return 4 * g + 8 * d


# ------------------------------------------------------------------------------------------------
# Sides
# ------------------------------------------------------------------------------------------------
def load_config(section: str):
    config = torch_generative.load_config(
        os.path.join(os.path.dirname(BENCH_DIR), CONFIGS[section])
    )
    return config


def torch_reference(model: bench_run.DlxModel):
    """bench/torch_generative.py's trainer for the model's config, from its dlx state."""
    run = model.run
    trainer = torch_generative.TRAINERS[run.config.task](
        run.config, torch_generative.model_fields(run.task.model), "cpu"
    )
    trainer.load_dlx_state(torch_generative.jax_to_numpy(model.state))
    return trainer


def torch_step_runner(trainer, model: bench_run.DlxModel) -> StepRunner:
    images = torch_generative.as_model_input(
        model.run.config.task, model.numpy_batch["image"], "cpu"
    )

    def run_steps(num_steps: int) -> float:
        start = time.perf_counter()
        for step in range(num_steps):
            trainer.step(images, step)
        return time.perf_counter() - start

    return run_steps


def timed_rounds(
    runners: dict[str, StepRunner], steps: int, rounds: int, untimed_first: bool = True
) -> dict[str, Any]:
    """Rounds of `steps` calls per side in turn (after one untimed call each, unless
    `untimed_first` is off), kept while the machine is quiet; median ms per call."""

    def one_round() -> dict[str, float]:
        if untimed_first:
            return bench_run.alternating_round(runners, steps)
        return {name: 1e3 * run(steps) / steps for name, run in runners.items()}

    kept = bench_run.quiet_rounds(one_round, rounds)
    ms_rounds = {name: [r[name] for r in kept.kept] for name in runners}
    ms = {name: statistics.median(v) for name, v in ms_rounds.items()}
    return {
        "steps_per_round": steps,
        "rounds": rounds,
        **{f"{k}_ms": v for k, v in ms.items()},
        "ratio": ms["dlx"] / ms["torch"],
        "ms_rounds": ms_rounds,
        "busy_rounds_dropped": kept.dropped,
        "contended": kept.contended,
    }


def with_throughput(
    result: dict, flop: float, peak_gflops: float | None, sides: tuple[str, ...] = ("dlx", "torch")
) -> dict:
    result["flops"] = flop
    for side in sides:
        result[f"{side}_gflops"] = flop / result[f"{side}_ms"] / 1e6
        if peak_gflops:
            result[f"{side}_peak_fraction"] = result[f"{side}_gflops"] / peak_gflops
    return result


def compare_train_step(section: str, args, peak_gflops: float | None) -> dict[str, Any]:
    model = bench_run.build_dlx(load_config(section))
    trainer = torch_reference(model)
    runners = {"dlx": model.run_steps, "torch": torch_step_runner(trainer, model)}
    for run_steps in runners.values():
        run_steps(args.warmup)
    steps = args.dcgan_steps if section == "dcgan" else args.unet_steps
    result = timed_rounds(runners, steps, args.rounds)
    config, task = model.run.config, model.run.task
    batch = config.data.batch_size
    if section == "dcgan":
        flop = dcgan_step_flops(task.model, batch)
    else:
        size, channels = config.diffusion.image_size, task.image_shape[-1]
        flop = 3 * forward_flops(
            task.model, jnp.zeros((batch, size, size, channels)), jnp.zeros((batch,), jnp.int32)
        )
    return {
        "batch_size": batch,
        **with_throughput(result, flop, peak_gflops),
        "goal_ratio": GOAL_RATIO[section],
    }


def compare_ddim(args, peak_gflops: float | None) -> dict[str, Any]:
    config = load_config("ddim")
    run = loop.prepare_run(config)
    state = loop.init_state(run)
    task, count = run.task, args.sample_batch
    trainer = torch_generative.TRAINERS[config.task](
        config, torch_generative.model_fields(task.model), "cpu"
    )
    trainer.load_dlx_state(torch_generative.jax_to_numpy(state))
    d = config.diffusion

    def dlx_calls(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            x, _ = task._jitted_sample(state.ema, jax.random.PRNGKey(i), count, "ddim")
            x.block_until_ready()
        return time.perf_counter() - start

    def torch_calls(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            trainer.ddim(trainer.ema, count, d.sample_steps, d.eta)
        return time.perf_counter() - start

    runners = {"dlx": dlx_calls, "torch": torch_calls}
    dlx_calls(1)  # compiles
    trainer.ddim(trainer.ema, count, 2, d.eta)  # two steps warm torch up at this batch
    # a call is 50 network evaluations: no untimed call before each timed one
    result = timed_rounds(runners, 1, args.ddim_rounds, untimed_first=False)
    steps = len(task.ddim_steps(d.sample_steps))
    flop = steps * forward_flops(
        task.model,
        jnp.zeros((count, d.image_size, d.image_size, task.image_shape[-1])),
        jnp.zeros((count,), jnp.int32),
    )
    result = with_throughput(result, flop, peak_gflops, ("dlx", "torch"))
    for side in ("dlx", "torch"):
        result[f"{side}_images_per_s"] = count / (result[f"{side}_ms"] / 1e3)
    return {"sample_batch": count, "sampler_steps": steps, **result}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def report(results: dict) -> str:
    pct, verdict = bench_run._pct, bench_run._verdict
    lines = bench_run.report_header(results)
    steps = {k: results[k] for k in ("dcgan", "unet") if k in results}
    if steps:
        lines += [
            "",
            "| train step (batch 64) | dlx ms | torch ms | dlx/torch (goal <= 1.0) "
            "| model GFLOP/step | dlx GFLOP/s (% peak) | torch GFLOP/s (% peak) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in steps.items():
            ok = verdict(r["ratio"] <= r["goal_ratio"], r)
            lines.append(
                f"| {name} | {r['dlx_ms']:.1f} | {r['torch_ms']:.1f} | {r['ratio']:.2f} "
                f"({ok}) | {r['flops'] / 1e9:.2f} | {r['dlx_gflops']:.0f} "
                f"({pct(r.get('dlx_peak_fraction'))}) | {r['torch_gflops']:.0f} "
                f"({pct(r.get('torch_peak_fraction'))}) |"
            )
    if "ddim" in results:
        r = results["ddim"]
        lines += [
            "",
            f"| DDIM, {r['sampler_steps']} steps, batch {r['sample_batch']} "
            "| dlx images/s | torch images/s | dlx/torch time | model GFLOP "
            "| dlx GFLOP/s (% peak) | torch GFLOP/s (% peak) |",
            "|---|---|---|---|---|---|---|",
            f"| U-Net (EMA weights) | {r['dlx_images_per_s']:.1f} "
            f"| {r['torch_images_per_s']:.1f} | {r['ratio']:.2f} | {r['flops'] / 1e9:.1f} "
            f"| {r['dlx_gflops']:.0f} ({pct(r.get('dlx_peak_fraction'))}) "
            f"| {r['torch_gflops']:.0f} ({pct(r.get('torch_peak_fraction'))}) |",
        ]
    lines += [
        "",
        "Model FLOPs count a resize-convolution as the 3x3 convolution on the upsampled map; "
        "dlx computes it with 4/9 of those multiply-adds (`upsample_conv`).",
    ]
    sections = [
        ("peak", results.get("peak") or {}),
        *((k, results[k]) for k in ("dcgan", "unet", "ddim") if k in results),
    ]
    return "\n".join(lines + bench_run.load_notes(results, sections))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    peak_gflops = bench_run.measure_peak(results) if "peak" in args.only else None
    for section in ("dcgan", "unet"):
        if section in args.only:
            results[section] = compare_train_step(section, args, peak_gflops)
    if "ddim" in args.only:
        results["ddim"] = compare_ddim(args, peak_gflops)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
