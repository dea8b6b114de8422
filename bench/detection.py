"""dlx vs PyTorch on this machine's CPU for the detector at inference: images per second of
`configs/fashion_detection.py`'s network on a batch of test canvases, from the same weights.

    .venv/bin/python bench/detection.py                    # ~1 min on 2 cores
    .venv/bin/python bench/detection.py --batch 64 --rounds 7

Sides, alternating in rounds (bench/generative.py's `timed_rounds`, busy rounds retried):
- `dlx`: the model's forward in eval mode, jitted with dlx's step compiler options;
- `torch`: its twin `bench/torch_yolo.py` under `torch.no_grad()`, eval mode;
- `dlx_predict`: the detection task's whole `predict` (forward, box decoding, class-aware NMS
  on device, 100 detections an image), for what a user of `launch.py predict` waits for.
Writes bench/results_detection.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import generative, torch_yolo  # noqa: E402
from bench import run as bench_run  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.train import config as config_lib  # noqa: E402
from dlx.train import loop  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=250, help="images per call")
    parser.add_argument("--calls", type=int, default=3, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results_detection.json"))
    return parser.parse_args(argv)


def compare(args) -> dict[str, Any]:
    config = config_lib.load(
        os.path.join(os.path.dirname(BENCH_DIR), "configs/fashion_detection.py")
    )
    run = loop.prepare_run(config)
    state = jax.device_get(loop.init_state(run))
    task = run.task
    images = np.stack(
        [task.source("test", train=False)[i]["image"] for i in range(args.batch)]
    )  # uint8 [B, 96, 96, 1]
    variables = {"params": state.params, **state.model_state}
    forward = jax.jit(
        lambda v, x: task.model.apply(v, x.astype(np.float32) / 255.0, train=False),
        compiler_options=runtime.compiler_options(),
    )
    predict = jax.jit(task.predict, compiler_options=runtime.compiler_options())
    net = torch_yolo.Detector.from_dlx_model(task.model, images.shape[-1]).eval()
    torch_yolo.load_dlx(net, jax.tree.map(np.asarray, variables))
    torch_images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def dlx_calls(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            forward(variables, images).block_until_ready()
        return time.perf_counter() - start

    def predict_calls(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            jax.block_until_ready(predict(state, {"image": images}))
        return time.perf_counter() - start

    def torch_calls(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                net(torch_images.float().div_(255.0))
        return time.perf_counter() - start

    runners = {"dlx": dlx_calls, "torch": torch_calls, "dlx_predict": predict_calls}
    result = generative.timed_rounds(runners, args.calls, args.rounds)
    for side in runners:
        result[f"{side}_images_per_s"] = args.batch / (result[f"{side}_ms"] / 1e3)
    return {"batch": args.batch, **result}


def report(results: dict) -> str:
    r = results["detector"]
    lines = bench_run.report_header(results) + [
        "",
        f"| detector inference, batch {r['batch']} of 96x96 | images/s | ms per batch |",
        "|---|---|---|",
        f"| dlx forward | {r['dlx_images_per_s']:.0f} | {r['dlx_ms']:.1f} |",
        f"| torch forward | {r['torch_images_per_s']:.0f} | {r['torch_ms']:.1f} |",
        f"| dlx predict (forward + decode + NMS) | {r['dlx_predict_images_per_s']:.0f} "
        f"| {r['dlx_predict_ms']:.1f} |",
        "",
        f"dlx/torch forward time: {r['ratio']:.2f}",
    ]
    return "\n".join(lines + bench_run.load_notes(results, [("detector", r)]))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    results["detector"] = compare(args)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
