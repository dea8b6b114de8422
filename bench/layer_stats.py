"""The cost of per-layer statistics (`config.layer_stats_every_steps`) next to the train step.

    .venv/bin/python bench/layer_stats.py [--models mlp,cnn,resnet] [--rounds 5]

One stats call is the task's report of a step (a forward pass that records the hidden layers, the
step's gradients again, the optimizer's update), summarised on the device, pulled to the host and
written to metrics.jsonl and TensorBoard (scalars and histograms), exactly as the runner does.
Train steps and stats calls are timed alternately in rounds, and the median round is reported;
the overhead of logging every N steps is stats / (N x step). Off, nothing is compiled or run.
Writes bench/results_layer_stats.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import run as bench_run  # noqa: E402
from configs import fashion_cnn, fashion_mlp, fashion_resnet  # noqa: E402
from dlx.train import loop  # noqa: E402
from dlx.train.metrics import MetricWriter  # noqa: E402

MODELS = {
    "mlp": fashion_mlp.get_config,
    "cnn": fashion_cnn.get_config,
    "resnet": fashion_resnet.get_config,
}
EVERY = (1, 10, 100)


def measure(name: str, rounds: int, steps: int) -> dict:
    config = MODELS[name]()
    config.progress_bar = False
    model = bench_run.build_dlx(config)
    stats_of = loop.compile_layer_stats(model.run)
    with tempfile.TemporaryDirectory() as workdir:
        writer = MetricWriter(workdir, enabled=True)

        def stats_call() -> None:
            with loop._tracing_context(model.run.mesh, config):
                stats = stats_of(model.state, model.batch, np.int32(model.steps))
            scalars, samples = jax.device_get(stats)
            writer.write(model.steps, "layers", scalars)
            writer.write_histograms(model.steps, "layers", samples)

        stats_call()  # compile
        model.run_steps(1)
        step_ms, stats_ms = [], []
        for _ in range(rounds):
            step_ms.append(1e3 * model.run_steps(steps) / steps)
            start = time.perf_counter()
            for _ in range(steps):
                stats_call()
            stats_ms.append(1e3 * (time.perf_counter() - start) / steps)
        writer.close()
        num_scalars = len(jax.device_get(stats_of(model.state, model.batch, np.int32(0)))[0])
    step, stats = statistics.median(step_ms), statistics.median(stats_ms)
    return {
        "config": f"configs/fashion_{name}.py",
        "batch_size": config.data.batch_size,
        "scalars_per_call": num_scalars,
        "train_step_ms": step,
        "stats_call_ms": stats,
        "overhead": {str(every): stats / (every * step) for every in EVERY},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,resnet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps and stats calls per round")
    args = parser.parse_args(argv)
    results, started, other_load = bench_run.start_results()
    results["models"] = {
        name: measure(name, args.rounds, args.steps) for name in args.models.split(",")
    }
    results["other_load"] = other_load.fraction()
    results["seconds"] = time.perf_counter() - started
    print("| model | train step (ms) | stats call (ms) | every 1 | every 10 | every 100 |")
    print("|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        overhead = " | ".join(f"{100 * r['overhead'][str(e)]:.1f}%" for e in EVERY)
        print(f"| {name} | {r['train_step_ms']:.1f} | {r['stats_call_ms']:.1f} | {overhead} |")
    with open(os.path.join(BENCH_DIR, "results_layer_stats.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
