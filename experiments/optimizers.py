"""Study: the eight optimizers on the same Fashion-MNIST model, seed, budget and data order.

    python experiments/optimizers.py [--config configs/fashion_mlp.py] [--epochs 5] \
        [--out runs/experiments/optimizers]

Each optimizer is one ordinary `launch.py` run (so any of them can be resumed, evaluated or
reproduced from its workdir like any other run). Re-running skips finished runs and rewrites
`report.md` and `loss_curves.png` in --out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlx.train.metrics import read_metrics  # noqa: E402
from experiments import common  # noqa: E402

# Learning rates in each method's usual range for a small network with batch 128: the study
# compares methods at sensible settings, not one learning rate that suits only some of them.
OPTIMIZERS = {
    "sgd": {"learning_rate": 0.1},
    "momentum": {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
    "rmsprop": {"learning_rate": 1e-3},
    "adagrad": {"learning_rate": 0.05},
    "adadelta": {"learning_rate": 1.0, "eps": 1e-6},
    "adam": {"learning_rate": 1e-3},
    "adamw": {"learning_rate": 1e-3, "weight_decay": 1e-4},
    "nadam": {"learning_rate": 1e-3},
}


def run_one(name: str, settings: dict, args) -> Path:
    overrides = {
        "optimizer.name": name,
        "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "warmup_cosine",
        "optimizer.warmup_steps": args.warmup_steps,
        "num_epochs": float(args.epochs),
        "train_steps": 0,
        "seed": args.seed,
        "eval_every_epochs": 1.0,
        "progress_bar": False,
        **{f"optimizer.{k}": v for k, v in settings.items()},
    }
    if args.train_steps:
        overrides.update(
            train_steps=args.train_steps,
            num_epochs=0.0,
            eval_every_epochs=0.0,
            eval_every_steps=max(1, args.train_steps // 4),
        )
    return common.launch_run(args.config, Path(args.out) / name, overrides, label=name)


def report(workdirs: dict[str, Path], args, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    rows = []
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, workdir in workdirs.items():
        records = read_metrics(str(workdir / "metrics.jsonl"))
        summary = json.loads((workdir / "summary.json").read_text())
        train = [r for r in records if r["split"] == "train"]
        evals = [r for r in records if r["split"] == "eval"]
        ax_train.plot([r["step"] for r in train], [r["loss"] for r in train], label=name, lw=1)
        ax_eval.plot(
            [r["step"] for r in evals], [r["loss"] for r in evals], marker="o", ms=3, label=name
        )
        rows.append(
            (
                name,
                summary["final_eval"]["accuracy"],
                summary["final_eval"]["loss"],
                summary["final_train"]["loss"],
                summary["wall_time_s"],
                OPTIMIZERS[name]["learning_rate"],
            )
        )
    for ax, title in ((ax_train, "train loss"), (ax_eval, "test loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)

    config = json.loads((next(iter(workdirs.values())) / "config.json").read_text())
    lines = [
        "# Optimizers on Fashion-MNIST",
        "",
        f"Model `{config['model']['name']}` from `{args.config}`, seed {args.seed}, "
        f"{summary['steps']} steps of global batch {config['data']['batch_size']} "
        f"(the same data order for every run), warmup {args.warmup_steps} steps then cosine decay, "
        f"no weight decay except AdamW's.",
        "",
        "| optimizer | peak learning rate | test accuracy | test loss | final train loss | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, acc, loss, train_loss, wall, lr in sorted(rows, key=lambda r: -r[1]):
        lines.append(
            f"| {name} | {lr:g} | {acc:.2%} | {loss:.4f} | {train_loss:.4f} | {wall:.0f} |"
        )
    lines += ["", "![loss curves](loss_curves.png)", ""]
    return common.write_report(out, lines, f"{args.out}/<optimizer>", command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mlp.py")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument(
        "--train_steps", type=int, default=0, help="a step budget instead of epochs"
    )
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/experiments/optimizers")
    parser.add_argument("--only", nargs="*", choices=list(OPTIMIZERS), default=list(OPTIMIZERS))
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    workdirs = {name: run_one(name, OPTIMIZERS[name], args) for name in args.only}
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/optimizers.py", *given])
    print(f"Report: {report(workdirs, args, command)}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
