"""Is dlx's language modelling right, not merely runnable? Train the same character-level model
on Shakespeare with dlx (through the runner, as a user would) and with a PyTorch reference
(bench/torch_lm.py) from the same initial weights, on the same batches, with the same optimizer
and schedule, and compare validation losses at the same steps.

    .venv/bin/python bench/lm_parity.py                      # gpt, lstm, gru at :small
    .venv/bin/python bench/lm_parity.py --models gpt --steps 500

Writes bench/results_lm_parity.json and, next to it with the same stem, a .png (`--out` moves
both): validation loss against step and wall time for both. Dropout masks come from each
framework's own generator, so the curves agree statistically, not bit for bit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torch_lm  # noqa: E402

from dlx import data as data_lib  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.optim.optimizer import learning_rate_at  # noqa: E402
from dlx.train import loop  # noqa: E402

CONFIGS = {
    "gpt": "configs.shakespeare_gpt",
    "lstm": "configs.shakespeare_lstm",
    "gru": "configs.shakespeare_gru",
}


def load_config(name: str, steps: int | None, variant: str):
    config = importlib.import_module(CONFIGS[name]).get_config(variant)
    config.progress_bar = False
    config.decoding.num_samples = 0  # sampling is not part of the comparison
    if steps:
        config.train_steps = steps
        config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
        config.eval_every_steps = max(1, steps // 8)
        config.checkpoint_every_steps = steps
    return config


def dlx_curve(config) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as workdir:
        summary = loop.train_and_evaluate(config, workdir)
        records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = [{"step": r["step"], "loss": r["loss"]} for r in records if r["split"] == "eval"]
    # training time alone (the runner's steps/s leaves out evals), as for the torch side
    return evals, summary["steps"] / summary["train_steps_per_sec"]


def torch_model(config, params):
    m = config.model
    if m.name == "transformer":
        return torch_lm.GPT(params, m.num_heads, m.dropout)
    return torch_lm.RecurrentLM(params, m.cell, m.dropout)


def torch_curve(config) -> tuple[list[dict], float]:
    run = loop.prepare_run(config)
    params = jax.device_get(loop.init_state(run).params)  # the weights the dlx run starts from
    model = torch_model(config, params)
    optimizer = torch_lm.adamw(model, config.optimizer)
    train = data_lib.train_iterator(
        run.task.source(config.data.train_split, train=True),
        global_batch_size=config.data.batch_size,
        seed=config.seed,
    )
    eval_source = run.task.source(config.data.eval_split, train=False)
    eval_every = config.eval_every_steps
    curve, elapsed = [], 0.0
    for step in range(run.total_steps):
        tokens = torch.tensor(next(train)["tokens"], dtype=torch.long)
        start = time.time()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(config.optimizer, run.total_steps, step)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optimizer.clip_global_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.clip_global_norm)
        optimizer.step()
        elapsed += time.time() - start
        done = step + 1
        if done % eval_every == 0 or done == run.total_steps:
            batches = data_lib.eval_batches(
                eval_source, global_batch_size=config.data.eval_batch_size
            )
            curve.append(
                {
                    "step": done,
                    "loss": torch_lm.mean_token_loss(model, batches),
                    "train_seconds": elapsed,
                }
            )
    return curve, elapsed


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        for side, style in (("dlx", "-"), ("torch", "--")):
            steps = [p["step"] for p in r[side]]
            losses = [p["loss"] for p in r[side]]
            axes[0].plot(steps, losses, style, label=f"{name} {side}")
            seconds = np.asarray(steps) / r["total_steps"] * r[f"{side}_wall_s"]
            axes[1].plot(seconds, losses, style, label=f"{name} {side}")
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall time (s, 2-core CPU)")
    for ax in axes:
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Shakespeare char LM: dlx vs PyTorch reference, same init, batches, optimizer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variant", default="small")
    parser.add_argument("--steps", type=int, default=0, help="override the config's train_steps")
    parser.add_argument("--out", default=str(REPO / "bench" / "results_lm_parity.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = {}
    for name in args.models:
        config = load_config(name, args.steps, args.variant)
        dlx_points, dlx_wall = dlx_curve(config)
        torch_points, torch_wall = torch_curve(config)
        gaps = [abs(a["loss"] - b["loss"]) for a, b in zip(dlx_points, torch_points)]
        results[name] = {
            "config": f"{CONFIGS[name].replace('.', '/')}.py:{args.variant}",
            "total_steps": config.train_steps,
            "dlx": dlx_points,
            "torch": torch_points,
            "dlx_wall_s": dlx_wall,
            "torch_wall_s": torch_wall,
            "final_gap": gaps[-1],
            "max_gap": max(gaps),
        }
        print(
            f"{name}: final val loss dlx {dlx_points[-1]['loss']:.4f} torch "
            f"{torch_points[-1]['loss']:.4f} (gap {gaps[-1]:.4f}, max {max(gaps):.4f}); "
            f"train time dlx {dlx_wall:.0f} s, torch {torch_wall:.0f} s",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(results, indent=1))
        plot(results, Path(args.out).with_suffix(".png"))


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
