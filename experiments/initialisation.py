"""Study: weight initialisation of a deep plain MLP. Five initialisations (zeros, N(0, 1),
N(0, 0.01^2), Xavier/Glorot normal, He/Kaiming normal) of a 20-layer, 128-wide MLP on
Fashion-MNIST, with tanh and with ReLU: the per-layer activation std and gradient norm at
initialisation and after one epoch, and the training curves.

    python experiments/initialisation.py [--epochs 3] [--out runs/experiments/initialisation] \
        [--report_dir experiments/results/initialisation]

The model is `configs/fashion_mlp.py` with `model.hidden` = (128,) * 20, no dropout and
`model.kernel_init` set per arm (every hidden layer; biases start at 0, the head keeps its
LeCun-normal weights). It trains with SGD and momentum 0.9 (warm-up then cosine, no weight
decay): plain gradient steps show what the initialisation does to the gradients, where Adam
would rescale each of them. Each arm's learning rate is the best of `GRID` on a validation
split held out of the training set (seed 0), then three seeds at that rate are scored on the
test split (experiments/common.py, `tune_and_repeat`); a run whose loss becomes NaN/Inf is
reported as diverged. The statistics at initialisation are those of each seed's first train
step (its initial state and first batch, computed here as `layer_stats_every_steps=1` would log
them); the runs log them every epoch, and the first of those is "after one epoch".
Re-running skips finished runs and rewrites the report, figures and results.json. `--quick` is
the test suite's version (digits, 6 hidden layers, 40 steps, one seed, three ReLU arms, one
rate).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

ACTIVATIONS = ("tanh", "relu")
INITIALISATIONS = {  # dlx initializer name -> how the report names it
    "zeros": "zeros",
    "normal": "N(0, 1)",
    "normal_0.01": "N(0, 0.01²)",
    "xavier_normal": "Xavier/Glorot normal",
    "he_normal": "He/Kaiming normal",
}
# What the theory prescribes for each activation: variance kept through tanh's linear regime
# (Glorot & Bengio 2010) and through ReLU, which zeroes half its inputs (He et al. 2015).
MATCHED = {"tanh": "xavier_normal", "relu": "he_normal"}
GRID = (0.01, 0.03, 0.1)  # SGD-momentum peak learning rates, the same for every arm
QUICK_GRID = (0.01,)
QUICK_ARMS = ("relu/zeros", "relu/normal_0.01", "relu/he_normal")
ARMS = tuple(f"{a}/{i}" for a in ACTIVATIONS for i in INITIALISATIONS)
FLOOR, CEILING = 1e-30, 1e30  # where the figure draws exact zeros and overflowing values


def steps_per_epoch(config_path: str, train_split: str, batch_size: int | None) -> int:
    from dlx import data
    from dlx.train import config as config_lib

    config = config_lib.load(config_path)
    batch = batch_size or config.data.batch_size
    return max(1, round(len(data.source(config.data.name, train_split)) / batch))


def protocol(args, epoch_steps: int) -> common.Protocol:
    base = {
        "model.hidden": tuple([args.width] * args.depth),
        "model.dropout": 0.0,
        "optimizer.name": "momentum",
        "optimizer.momentum": 0.9,
        "optimizer.nesterov": False,
        "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "warmup_cosine",
        "optimizer.warmup_steps": args.warmup_steps,
        "num_epochs": float(args.epochs),
        "train_steps": 0,
        "eval_every_epochs": 0.5,
        "layer_stats_every_steps": epoch_steps,
        "progress_bar": False,
    }
    if args.train_steps:
        base = common.fixed_steps(base, args.train_steps)
    return common.Protocol.from_args(args, base)


# ------------------------------------------------------------------------------------------------
# Per-layer statistics
# ------------------------------------------------------------------------------------------------
def epoch_stats(workdir: Path, step: int) -> dict[str, float]:
    """The statistics the run logged at `step` ({} if it never got there: it diverged)."""
    for record in common.read_run_metrics(workdir):
        if record["split"] == "layers" and record["step"] == step:
            return record
    return {}


def profile(stats: dict[str, float], depth: int) -> dict[str, list[float]]:
    """Per hidden layer (input side first): its output's std and share of exact zeros, and its
    kernel's gradient norm (NaN where `stats` has none)."""
    return {
        key: [stats.get(name.format(i=i), math.nan) for i in range(depth)]
        for key, name in (
            ("activation_std", "activation/hidden_{i}/std"),
            ("zero_fraction", "activation/hidden_{i}/zero_fraction"),
            ("grad_norm", "grad_norm/Dense_{i}/kernel"),
        )
    }


def arm_results(arm: common.Arm, depth: int, epoch_steps: int) -> dict:
    return {
        "learning_rate": arm.learning_rate,
        "sweep": {f"{rate:g}": score for rate, score in arm.sweep.items()},
        "test_accuracy": arm.final("accuracy"),
        "test_loss": arm.final("loss"),
        "diverged": [(run / common.DIVERGED).exists() for run in arm.runs],
        "at_init": [profile(common.first_step_layer_stats(run), depth) for run in arm.runs],
        "after_epoch": [profile(epoch_stats(run, epoch_steps), depth) for run in arm.runs],
    }


def seed_mean(profiles: list[dict], key: str) -> np.ndarray:
    """The mean over seeds of one per-layer quantity (NaN where no seed has a finite value)."""
    values = np.array([p[key] for p in profiles], dtype=float)
    values[~np.isfinite(values)] = np.nan
    with warnings.catch_warnings():  # a layer no seed has a value for is NaN, said quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def plot_profiles(results: dict, depth: int, path: Path) -> None:
    """Rows: activations; columns: activation std, gradient norm per layer; solid at
    initialisation, dashed after one epoch; band: min..max over seeds."""
    import matplotlib.pyplot as plt

    activations = [a for a in ACTIVATIONS if any(n.startswith(a + "/") for n in results)]
    fig, axes = plt.subplots(len(activations), 2, figsize=(12, 4.2 * len(activations)))
    axes = np.atleast_2d(axes)
    layers = np.arange(1, depth + 1)
    for row, activation in zip(axes, activations):
        for init in INITIALISATIONS:
            name = f"{activation}/{init}"
            if name not in results:
                continue
            color = None
            for when, style in (("at_init", "-"), ("after_epoch", "--")):
                for ax, key in zip(row, ("activation_std", "grad_norm")):
                    values = np.array([p[key] for p in results[name][when]], dtype=float)
                    values = np.clip(
                        np.nan_to_num(values, nan=np.nan, posinf=CEILING), FLOOR, CEILING
                    )
                    label = (
                        f"{INITIALISATIONS[init]} ({'init' if when == 'at_init' else '1 epoch'})"
                    )
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        centre = np.exp(np.nanmean(np.log(values), axis=0))
                        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
                    (line,) = ax.plot(layers, centre, style, color=color, label=label, lw=1.3)
                    ax.fill_between(
                        layers,
                        low,
                        high,
                        color=line.get_color(),
                        alpha=0.15,
                        lw=0,
                    )
                    color = line.get_color()
        for ax, title in zip(row, ("std of the layer's output", "gradient norm of its kernel")):
            ax.set_yscale("log")
            ax.set_xlabel("hidden layer")
            ax.set_title(f"{activation}: {title}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(arms: dict[str, common.Arm], path: Path) -> None:
    import matplotlib.pyplot as plt

    activations = [a for a in ACTIVATIONS if any(n.startswith(a + "/") for n in arms)]
    fig, axes = plt.subplots(len(activations), 2, figsize=(12, 4.2 * len(activations)))
    axes = np.atleast_2d(axes)
    for row, activation in zip(axes, activations):
        for init, label in INITIALISATIONS.items():
            arm = arms.get(f"{activation}/{init}")
            if arm is None:
                continue
            common.plot_band(row[0], arm.runs, "train", "loss", label, lw=1)
            common.plot_band(row[1], arm.runs, "eval", "accuracy", label, marker="o", ms=3)
        row[0].set_yscale("log")
        for ax, title in zip(row, ("train loss", "test accuracy")):
            ax.set_xlabel("step")
            ax.set_title(f"{activation}: {title} (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def _g(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "0" if value == 0 else f"{value:.2g}"


def report(arms: dict[str, common.Arm], args, epoch_steps: int, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = {name: arm_results(arm, args.depth, epoch_steps) for name, arm in arms.items()}
    plot_profiles(results, args.depth, report_dir / "layer_profiles.png")
    plot_training(arms, report_dir / "curves.png")
    (report_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    first = next(iter(arms.values())).runs[0]
    config = json.loads((first / "config.json").read_text())
    steps = config["train_steps"] or round(config["num_epochs"] * epoch_steps)
    grid = ", ".join(f"{rate:g}" for rate in args.grid)
    last = args.depth - 1
    lines = [
        "# Initialisation of a deep MLP",
        "",
        f"`{args.config}` with {args.depth} hidden layers of {args.width} (no dropout), every "
        f"hidden kernel drawn by the arm's initialiser, biases 0, the head LeCun-normal. SGD "
        f"with momentum 0.9, warm-up {args.warmup_steps} steps then cosine, no weight decay; "
        f"{steps} steps of global batch {config['data']['batch_size']} on "
        f"`{config['data']['train_split']}` (one epoch = {epoch_steps} steps; the same data "
        f"order for every run of a seed). Each arm's peak learning rate is the best of "
        f"{{{grid}}} on the validation split `train[90%:]` (seed {args.seeds[0]}): a small grid "
        f"per arm; the accuracy table is the test split over seeds "
        f"{', '.join(map(str, args.seeds))} at that rate (mean ± sample std). Whole study: "
        f"{common.training_minutes(arms.values()):.1f} min of training (the runs' wall time) on "
        f"this machine.",
        "",
        "## Signal and gradient through the layers",
        "",
        f"Per hidden layer: the std of its output over a batch and the norm of its kernel's "
        f"gradient (mean over seeds; the band in the figure spans the seeds). At initialisation: "
        f"each seed's first train step; after one epoch: the statistics the run logged at step "
        f"{epoch_steps} ('-': the run diverged before). A std or norm under ~1e-19 reads 0: its "
        f"square underflows float32 (the zero-fraction statistic tells true zeros apart: "
        f"results.json). In the figure zeros are drawn at {FLOOR:g} and overflowing values at "
        f"{CEILING:g}.",
        "",
        "![per-layer activation std and gradient norm](layer_profiles.png)",
        "",
        f"| activation | initialisation | std, layer 1 | std, layer {args.depth} | grad norm, "
        f"layer 1 | grad norm, layer {args.depth} | std, layer {args.depth} after 1 epoch | "
        f"grad norm, layer 1 after 1 epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        activation, init = name.split("/")
        std0, grad0 = (seed_mean(result["at_init"], k) for k in ("activation_std", "grad_norm"))
        std1, grad1 = (seed_mean(result["after_epoch"], k) for k in ("activation_std", "grad_norm"))
        lines.append(
            f"| {activation} | {INITIALISATIONS[init]} | {_g(std0[0])} | {_g(std0[last])} | "
            f"{_g(grad0[0])} | {_g(grad0[last])} | {_g(std1[last])} | {_g(grad1[0])} |"
        )
    lines += [
        "",
        "## Training",
        "",
        "| activation | initialisation | learning-rate grid (validation accuracy) | chosen | "
        "test accuracy | test loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        activation, init = name.split("/")
        sweep = ", ".join(
            f"{rate:g} ({score:.2%})" if score is not None else f"{rate:g} (diverged)"
            for rate, score in arm.sweep.items()
        )
        lines.append(
            f"| {activation} | {INITIALISATIONS[init]} | {sweep or '-'} | {arm.learning_rate:g} | "
            f"{common.format_mean_spread(arm.final('accuracy'), percent=True)} | "
            f"{common.format_mean_spread(arm.final('loss'), digits=4)} |"
        )
    lines += ["", *common.grid_edge_note(arms.values())]
    lines += ["![training curves (mean ± std over seeds)](curves.png)", ""]
    lines += findings(results, args.depth)
    return common.write_report(
        report_dir, lines, f"{args.out}/<activation>/<initialisation>/<lr_r|seed_s>", command
    )


def findings(results: dict, depth: int) -> list[str]:
    """The expected/measured section, every measured sentence computed from the numbers."""
    lines = [
        "## What we expected / what we measured",
        "",
        "Expected: zeros give every unit of a layer the same value and the same gradient (here "
        "0 and 0: no hidden kernel ever moves), so the network stays at chance. N(0, 1) ignores "
        f"the fan-in ({depth} layers of 128): tanh saturates (its outputs near ±1, f' near 0) and "
        "ReLU's signal grows ~8x per layer until it overflows. N(0, 0.01²) shrinks the signal "
        "~10x per layer, so it and the gradients vanish. Xavier keeps the variance through "
        "tanh and He through ReLU; the mismatched pair (Xavier with ReLU) halves the variance "
        "per layer, He with tanh pushes tanh towards saturation.",
        "",
    ]
    measured = []
    for name, result in results.items():
        std = seed_mean(result["at_init"], "activation_std")
        all_zero = np.all(seed_mean(result["at_init"], "zero_fraction") == 1.0)
        grad = seed_mean(result["at_init"], "grad_norm")
        accuracy, spread = common.mean_spread(result["test_accuracy"])
        if all_zero:
            signal = "every hidden output is exactly 0 at initialisation"
        elif not np.isfinite(std[-1]):
            signal = f"the output std overflows float32 by layer {depth}"
        elif std[-1] == 0:
            signal = (
                f"the output std goes from {_g(std[0])} (layer 1) to below what float32 can "
                f"measure at layer {depth} (a std under ~1e-19 reads 0: its square underflows)"
            )
        else:
            signal = (
                f"the output std goes from {_g(std[0])} (layer 1) to {_g(std[-1])} (layer "
                f"{depth}), a factor {_g(std[-1] / std[0])}"
            )
        if all_zero and np.all(grad == 0):
            gradient = "no hidden kernel gets any gradient (exactly 0)"
        elif np.all(grad == 0):
            gradient = "every hidden kernel's gradient norm reads 0 (vanished below ~1e-19)"
        elif not np.isfinite(grad[0]):
            gradient = "the gradient norm at layer 1 overflows"
        else:
            gradient = (
                f"the kernel gradient norm is {_g(grad[0])} at layer 1 and {_g(grad[-1])} at "
                f"layer {depth}"
            )
        diverged = sum(result["diverged"])
        outcome = (
            f"all {diverged} seeds diverged"
            if diverged == len(result["diverged"])
            else f"test accuracy {accuracy:.2%} ± {spread:.2%}"
            + (f" ({diverged} diverged)" if diverged else "")
        )
        measured.append(f"- {name}: {signal}; {gradient}; {outcome}.")
    for activation, matched in MATCHED.items():
        names = [n for n in results if n.startswith(activation + "/")]
        scores = {n: common.mean_spread(results[n]["test_accuracy"]) for n in names}
        scored = {n: s for n, s in scores.items() if not math.isnan(s[0])}
        if not scored or f"{activation}/{matched}" not in scored:
            continue
        best = max(scored, key=lambda n: scored[n][0])
        ours = scored[f"{activation}/{matched}"]
        gap = scored[best][0] - ours[0]
        verdict = (
            f"the prescribed {INITIALISATIONS[matched]} is the best"
            if best.endswith("/" + matched)
            else f"{best} is best, {gap:.2%} above the prescribed {INITIALISATIONS[matched]}"
            + (" (within twice the seed spread)" if gap < 2 * max(scored[best][1], ours[1]) else "")
        )
        chance = [n for n, (a, _) in scored.items() if a < 0.15]
        measured.append(
            f"- With {activation}: {verdict}"
            + (f"; at chance level (< 15%): {', '.join(chance)}" if chance else "")
            + "."
        )
    return lines + ["Measured:", "", *measured, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mlp.py")
    parser.add_argument("--depth", type=int, default=20, help="hidden layers")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument(
        "--train_steps", type=int, default=0, help="a step budget instead of epochs"
    )
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", choices=ARMS, default=list(ARMS), help="activation/initialiser"
    )
    parser.add_argument("--out", default="runs/experiments/initialisation")
    parser.add_argument("--report_dir", default="experiments/results/initialisation")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, 6 hidden layers, 40 steps, seed 0, ReLU with zeros, N(0, 0.01²) "
        "and He, one rate",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.depth, args.train_steps, args.warmup_steps, args.seeds = (
            "configs/digits_mlp.py",
            6,
            40,
            5,
            [0],
        )
        args.grid = list(QUICK_GRID)
        if args.only == list(ARMS):
            args.only = list(QUICK_ARMS)
    common.use_compilation_cache(Path(args.out))
    from dlx.train import config as config_lib

    batch_size = args.batch_size or config_lib.load(args.config).data.batch_size
    epoch_steps = steps_per_epoch(args.config, common.Protocol.train_split, batch_size)
    study = protocol(args, epoch_steps)
    if args.batch_size:
        study.base["data.batch_size"] = args.batch_size
    Path(args.out).mkdir(parents=True, exist_ok=True)
    arms = {}
    for name in args.only:
        activation, init = name.split("/")
        overrides = {"model.activation": activation, "model.kernel_init": init}
        arms[name] = common.tune_and_repeat(study, name, overrides, args.grid)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/initialisation.py", *given])
    print(f"Report: {report(arms, args, epoch_steps, command)}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
