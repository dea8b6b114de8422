"""Study: activation functions. (a) The eight functions and their derivatives, the derivative
taken by `jax.grad` exactly as backpropagation sees it; (b) the same Fashion-MNIST MLP trained
with each of them (same seeds, budget and data order), each at its own best learning rate, with
the share of dead hidden units over training from the per-layer statistics.

    python experiments/activations.py [--epochs 5] [--out runs/experiments/activations] \
        [--report_dir experiments/results/activations]

The model is `configs/fashion_mlp.py` (784-512-256-10, He-normal weights, dropout 0.2, AdamW,
warm-up then cosine) with only `model.activation` changed. Each activation's peak learning rate
is the best of `GRID` on a validation split held out of the training set (seed 0); it then
trains from three seeds at that rate and is scored on the test split (experiments/common.py,
`tune_and_repeat`). A unit is "dead" at a logged step when its output is exactly 0 for every
example of that step's batch (`activation/hidden_<i>/dead_fraction`, logged every
`--stats_every` steps). Re-running skips finished runs and rewrites the report, the figures and
results.json (the numbers behind them). `--quick` is the test suite's version (digits, 30 steps,
one seed, the step and ReLU, one rate for the step and a two-rate sweep for ReLU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

ACTIVATIONS = ("step", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu")
GRID = (3e-4, 1e-3, 3e-3)  # AdamW peak learning rates, the same grid for every activation
QUICK_GRID = (3e-3,)
QUICK_SWEPT = {"relu": (3e-3, 1e-2)}  # --quick sweeps one arm only: the sweep runs, cheaply
QUICK_ACTIVATIONS = ("step", "relu")
CURVE_X = np.linspace(-4.0, 4.0, 161)  # includes 0 exactly


# ------------------------------------------------------------------------------------------------
# (a) The functions and their derivatives
# ------------------------------------------------------------------------------------------------
def function_curves(x: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (f(x), f'(x)) for every activation, f' by `jax.grad` (what backpropagation
    multiplies by): the step's is 0 everywhere, ReLU's is 0 at x <= 0 (JAX takes 0 at 0)."""
    import jax
    import jax.numpy as jnp

    from dlx.layers import activations

    @jax.jit  # one compilation for all of them (op by op, each primitive compiles alone)
    def evaluate(points):
        return {
            name: (activations.get(name)(points), jax.vmap(jax.grad(activations.get(name)))(points))
            for name in ACTIVATIONS
        }

    curves = jax.device_get(evaluate(jnp.asarray(x, jnp.float32)))
    return {
        name: (np.asarray(curves[name][0]), np.asarray(curves[name][1])) for name in ACTIVATIONS
    }


def function_facts(x: np.ndarray, curves: dict) -> dict[str, dict[str, float]]:
    """Per activation: f(0), the largest |f'|, f' at both ends of x and the share of x where
    f' is exactly 0 (no gradient passes)."""
    facts = {}
    for name, (value, slope) in curves.items():
        facts[name] = {
            "value_at_0": float(value[np.argmin(np.abs(x))]),
            "max_abs_derivative": float(np.max(np.abs(slope))),
            "derivative_at_low": float(slope[0]),
            "derivative_at_high": float(slope[-1]),
            "zero_derivative_share": float(np.mean(slope == 0.0)),
        }
    return facts


def plot_functions(x: np.ndarray, curves: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (value, slope) in curves.items():
        style = {"lw": 2.5, "ls": "--"} if name == "step" else {"lw": 1.3}
        ax_f.plot(x, value, label=name, **style)
        ax_d.plot(x, slope, label=name, **style)
    ax_f.set_title("f(x)")
    ax_d.set_title("f'(x) by jax.grad (the step's is 0 everywhere: drawn dashed)")
    for ax in (ax_f, ax_d):
        ax.set_xlabel("x")
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# (b) Training with each
# ------------------------------------------------------------------------------------------------
def protocol(args) -> common.Protocol:
    base = {
        "num_epochs": float(args.epochs),
        "train_steps": 0,
        "eval_every_epochs": 1.0,
        "layer_stats_every_steps": args.stats_every,
        "progress_bar": False,
    }
    if args.train_steps:
        base = common.fixed_steps(base, args.train_steps)
    return common.Protocol.from_args(args, base)


def hidden_layers(run: Path) -> list[str]:
    """The hidden layers a run's per-layer statistics name ("hidden_0", ...), in order."""
    records = [r for r in common.read_run_metrics(run) if r["split"] == "layers"]
    if not records:
        return []
    names = {k.split("/")[1] for k in records[0] if k.endswith("/dead_fraction")}
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))


def last_value(run: Path, split: str, metric: str) -> float:
    """The metric's last logged value in a run (NaN if never logged)."""
    _, values = common.series(run, split, metric)
    return float(values[-1]) if len(values) else float("nan")


def hidden_grad_norm_max(run: Path) -> float:
    """The largest gradient norm of any hidden (not head) parameter over a run's logged steps."""
    records = [r for r in common.read_run_metrics(run) if r["split"] == "layers"]
    norms = [
        v
        for r in records
        for k, v in r.items()
        if k.startswith("grad_norm/") and not k.startswith("grad_norm/head/")
    ]
    return float(max(norms)) if norms else float("nan")


def arm_results(arm: common.Arm) -> dict:
    layers = hidden_layers(arm.runs[0])
    return {
        "learning_rate": arm.learning_rate,
        "sweep": {f"{rate:g}": score for rate, score in arm.sweep.items()},
        "test_accuracy": arm.final("accuracy"),
        "test_loss": arm.final("loss"),
        "dead_fraction_end": {
            layer: [
                last_value(run, "layers", f"activation/{layer}/dead_fraction") for run in arm.runs
            ]
            for layer in layers
        },
        "hidden_grad_norm_max": [hidden_grad_norm_max(run) for run in arm.runs],
    }


def plot_training(arms: dict[str, common.Arm], layers: list[str], report_dir: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, arm in arms.items():
        common.plot_band(ax_train, arm.runs, "train", "loss", name, lw=1)
        common.plot_band(ax_eval, arm.runs, "eval", "accuracy", name, marker="o", ms=3)
    ax_train.set_yscale("log")
    for ax, title in ((ax_train, "train loss"), (ax_eval, "test accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(f"{title} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "curves.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(layers), figsize=(6 * len(layers), 4.2), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for name, arm in arms.items():
            metric = f"activation/{layer}/dead_fraction"
            common.plot_band(ax, arm.runs, "layers", metric, name, lw=1.2)
        ax.set_title(f"{layer}: share of units that are 0 on the whole batch")
        ax.set_xlabel("step")
        ax.set_ylabel("dead units (mean ± std over seeds)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "dead_units.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def report(arms: dict[str, common.Arm], facts: dict, args, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = {name: arm_results(arm) for name, arm in arms.items()}
    layers = list(next(iter(results.values()))["dead_fraction_end"])
    plot_training(arms, layers, report_dir)
    (report_dir / "results.json").write_text(
        json.dumps({"functions": facts, "arms": results}, indent=1) + "\n"
    )

    first = next(iter(arms.values())).runs[0]
    config = json.loads((first / "config.json").read_text())
    summary = json.loads((first / "summary.json").read_text())
    model, optimizer = config["model"], config["optimizer"]
    grids = {tuple(arm.sweep) or (arm.learning_rate,) for arm in arms.values()}
    grid = (
        "{" + ", ".join(f"{rate:g}" for rate in args.grid) + "}"
        if len(grids) == 1
        else "its grid (the table's second column; '-': one rate, no sweep)"
    )
    lines = [
        "# Activation functions",
        "",
        "## (a) The functions and their derivatives",
        "",
        f"f'(x) is `jax.vmap(jax.grad(f))` on {len(CURVE_X)} points of "
        f"[{CURVE_X[0]:g}, {CURVE_X[-1]:g}] (x = 0 among them): the derivative backpropagation "
        "multiplies by.",
        "",
        "![functions and derivatives](functions.png)",
        "",
        f"| activation | f(0) | max abs f'(x) | f'({CURVE_X[0]:g}) | f'({CURVE_X[-1]:g}) | "
        "share of x with f'(x) = 0 |",
        "|---|---|---|---|---|---|",
    ]
    for name, fact in facts.items():
        lines.append(
            f"| {name} | {fact['value_at_0']:.3g} | {fact['max_abs_derivative']:.3g} | "
            f"{fact['derivative_at_low']:.3g} | {fact['derivative_at_high']:.3g} | "
            f"{fact['zero_derivative_share']:.0%} |"
        )
    lines += [
        "",
        "## (b) The same MLP trained with each",
        "",
        f"`{args.config}` with `model.activation` changed only: hidden "
        f"{tuple(model['hidden'])}, `{model.get('kernel_init', 'he_normal')}` weights, dropout "
        f"{model.get('dropout', 0.0)}, {optimizer['name']} (weight decay "
        f"{optimizer['weight_decay']:g}, schedule {optimizer['schedule']}), {summary['steps']} "
        f"steps of global batch {config['data']['batch_size']} on "
        f"`{config['data']['train_split']}` (the same data order for every run of a seed). Each "
        f"activation's peak learning rate is the best of {grid} on the validation split "
        f"`train[90%:]` (seed {args.seeds[0]}); the table is the test split over seeds "
        f"{', '.join(map(str, args.seeds))} at that rate (mean ± sample std). Dead units: the "
        f"share of a layer's units that output exactly 0 for the whole batch, at the last "
        f"logged step (statistics every {args.stats_every} steps). Whole study: "
        f"{common.training_minutes(arms.values()):.1f} min of training (the runs' wall time) on "
        f"this machine.",
        "",
        "| activation | learning-rate grid (validation accuracy) | chosen | test accuracy | "
        "test loss | " + " | ".join(f"dead units {layer}" for layer in layers) + " |",
        "|---|---|---|---|---|" + "---|" * len(layers),
    ]
    accuracy = {n: common.mean_spread(r["test_accuracy"])[0] for n, r in results.items()}
    for name in sorted(arms, key=lambda n: -np.nan_to_num(accuracy[n], nan=-1.0)):
        arm, result = arms[name], results[name]
        sweep = ", ".join(
            f"{rate:g} ({score:.2%})" if score is not None else f"{rate:g} (diverged)"
            for rate, score in arm.sweep.items()
        )
        dead = " | ".join(
            common.format_mean_spread(result["dead_fraction_end"][layer], percent=True, digits=1)
            for layer in layers
        )
        lines.append(
            f"| {name} | {sweep or '-'} | {arm.learning_rate:g} | "
            f"{common.format_mean_spread(result['test_accuracy'], percent=True)} | "
            f"{common.format_mean_spread(result['test_loss'], digits=4)} | {dead} |"
        )
    lines += [
        "",
        "![training curves (mean ± std over seeds)](curves.png)",
        "",
        "![dead units over training (mean ± std over seeds)](dead_units.png)",
        "",
        *common.grid_edge_note(arms.values()),
    ]
    lines += findings(results, facts, accuracy, layers)
    return common.write_report(report_dir, lines, f"{args.out}/<activation>/<lr_r|seed_s>", command)


def findings(results: dict, facts: dict, accuracy: dict, layers: list[str]) -> list[str]:
    """The expected/measured section, every measured sentence computed from the numbers."""
    ranked = sorted(results, key=lambda n: -np.nan_to_num(accuracy[n], nan=-1.0))
    spread = {n: common.mean_spread(r["test_accuracy"])[1] for n, r in results.items()}
    lines = [
        "## What we expected / what we measured",
        "",
        "Expected: the step passes no gradient, so its hidden layers never change and only the "
        "head learns (on fixed random binary features); sigmoid and tanh saturate (f' near 0 "
        "away from 0) and train slower; ReLU trains fast but can leave units dead (0 for every "
        "input); leaky ReLU, ELU, GELU and SiLU pass some gradient for x < 0 and end level with "
        "or above ReLU, with no dead units.",
        "",
    ]
    zero_share = {n: f["zero_derivative_share"] for n, f in facts.items()}
    always_zero = [n for n, share in zero_share.items() if share == 1.0]
    measured = [
        f"Measured: f' is exactly 0 on {', '.join(always_zero) or 'no activation'} over the "
        f"whole range and on {zero_share.get('relu', 0.0):.0%} of it for ReLU; at x = "
        f"{CURVE_X[0]:g} sigmoid's f' is {facts['sigmoid']['derivative_at_low']:.3g} and "
        f"tanh's {facts['tanh']['derivative_at_low']:.3g}."
    ]
    if "step" in results:
        step_norm = max(results["step"]["hidden_grad_norm_max"])
        measured.append(
            f"In training, the step network's hidden parameters got a gradient of norm "
            f"{step_norm:.3g} at most over every logged step"
            + (" (exactly 0: only the head learned)" if step_norm == 0 else "")
            + f"; it reached {accuracy['step']:.2%} test accuracy."
        )
    best, worst = ranked[0], ranked[-1]
    typical = sorted(spread.values())[len(spread) // 2]
    measured.append(
        f"{best} is first ({accuracy[best]:.2%}) and {worst} last ({accuracy[worst]:.2%}) of "
        f"{len(ranked)}."
    )
    learners = [n for n in ranked if n != "step"]
    if len(learners) >= 2:
        top_gap = accuracy[learners[0]] - accuracy[learners[min(3, len(learners) - 1)]]
        measured.append(
            f"Among the others the first {min(4, len(learners))} are within {top_gap:.2%}, "
            f"against a typical seed-to-seed spread of {typical:.2%}: "
            + (
                "their order is not resolved by these seeds."
                if top_gap < 2 * typical
                else "the differences at the top exceed the seed noise."
            )
        )
    for name in ("sigmoid", "tanh"):
        if name in accuracy and "relu" in accuracy:
            gap = accuracy["relu"] - accuracy[name]
            measured.append(
                f"ReLU is {abs(gap):.2%} {'above' if gap >= 0 else 'below'} {name}"
                + (
                    " (within twice the seed spread)."
                    if abs(gap) < 2 * max(spread["relu"], spread[name])
                    else "."
                )
            )
    dead_end = {
        n: max(common.mean_spread(r["dead_fraction_end"][layer])[0] for layer in layers)
        for n, r in results.items()
    }
    with_dead = [f"{n} ({dead_end[n]:.1%})" for n in ranked if dead_end[n] > 0]
    measured.append(
        "At the end, units dead on the whole batch (the larger of the layers' shares): "
        + (", ".join(with_dead) if with_dead else "none in any network")
        + "; "
        + (
            "none for " + ", ".join(n for n in ranked if dead_end[n] == 0) + "."
            if any(dead_end[n] == 0 for n in ranked)
            else "every network has some."
        )
    )
    return lines + [" ".join(measured), ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mlp.py")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument(
        "--train_steps", type=int, default=0, help="a step budget instead of epochs"
    )
    parser.add_argument("--stats_every", type=int, default=100, help="per-layer statistics")
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=ACTIVATIONS, default=list(ACTIVATIONS))
    parser.add_argument("--out", default="runs/experiments/activations")
    parser.add_argument("--report_dir", default="experiments/results/activations")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, 30 steps, seed 0, step and ReLU (ReLU with a two-rate sweep)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.train_steps, args.stats_every, args.seeds = (
            "configs/digits_mlp.py",
            30,
            10,
            [0],
        )
        args.grid = list(QUICK_GRID)
        if args.only == list(ACTIVATIONS):
            args.only = list(QUICK_ACTIVATIONS)
    common.use_compilation_cache(Path(args.out))
    import matplotlib

    matplotlib.use("Agg")
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    curves = function_curves(CURVE_X)
    plot_functions(CURVE_X, curves, report_dir / "functions.png")
    facts = function_facts(CURVE_X, curves)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    study = protocol(args)
    grids = {name: args.grid for name in args.only}
    if args.quick:
        grids.update({name: grid for name, grid in QUICK_SWEPT.items() if name in grids})
    arms = {
        name: common.tune_and_repeat(study, name, {"model.activation": name}, grids[name])
        for name in args.only
    }
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/activations.py", *given])
    print(f"Report: {report(arms, facts, args, command)}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
