"""Study: batch size and learning rate for the Fashion-MNIST CNN at a fixed epoch budget.

    python experiments/batch_size.py [--batch_sizes 16 64 256 1024] [--epochs 1] \
        [--optimizer momentum] [--out runs/experiments/batch_size] \
        [--report_dir experiments/results/batch_size]
    python experiments/batch_size.py --quick --out /tmp/bs   # digits MLP, seconds: for tests

Every batch size trains for the same number of epochs (so a larger batch takes fewer steps) at
every learning rate of one log grid, seed 0, scored on a validation slice held out of the training
set: that grid is one seed. The best rate of each batch size is then trained from every seed and
scored on the test split (`common.tune_and_repeat`, one arm per batch size). Warmup is the same
fraction of each run's steps, then cosine decay to zero.

The linear scaling rule (Goyal et al. 2017: multiply the learning rate by k when the batch grows
k-fold) is drawn through the best rate of `--reference_batch`; where the measured best rate
stays within one grid step of that line the rule holds. Wall time is the training time logged in
each run's metrics.jsonl, evaluation and compilation excluded (`training_seconds`).
Re-running skips finished runs and rewrites the report and figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

# Log grids with a factor of 2 between rates, wide enough for a 64-fold range of batch sizes.
GRIDS = {
    "momentum": tuple(0.01 * 2**k for k in range(7)),  # 0.01 .. 0.64
    "adam": tuple(2.5e-4 * 2**k for k in range(7)),  # 2.5e-4 .. 0.016
}
WARMUP_FRACTION = 0.1  # of each run's steps


@dataclasses.dataclass(frozen=True)
class Setup:
    """The budget of one study invocation (the full one or `--quick`)."""

    config: str
    data: str
    train_split: str
    validation_split: str
    test_split: str
    epochs: float
    batch_sizes: tuple[int, ...]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    reference_batch: int
    optimizer: str
    evals: int  # per run, evenly spaced over the budget: the points of the accuracy curves
    grid_extensions: int = common.MAX_GRID_EXTENSIONS  # rates a sweep may add past its grid


FULL = Setup(
    config="configs/fashion_cnn.py",
    data="fashion_mnist",
    train_split="train[:20000]",
    validation_split="train[50000:55000]",
    test_split="test",
    epochs=1.0,
    batch_sizes=(16, 64, 256, 1024),
    learning_rates=GRIDS["momentum"],
    seeds=(0, 1, 2),
    reference_batch=64,
    optimizer="momentum",
    evals=4,
)
QUICK = Setup(
    config="configs/digits_mlp.py",
    data="digits",
    train_split="train[:1000]",
    validation_split="train[1000:]",
    test_split="test",
    epochs=1.0,
    batch_sizes=(16, 64),
    learning_rates=(0.05, 0.2),
    seeds=(0,),  # a second seed compiles a second initialisation (seconds) and adds no code path
    reference_batch=16,
    optimizer="momentum",
    evals=2,
    grid_extensions=0,
)


@functools.lru_cache
def examples(setup: Setup) -> int:
    """Images in the training split."""
    from dlx import data

    return len(data.source(setup.data, setup.train_split, None))


def steps_for(setup: Setup, batch_size: int) -> int:
    """The run's length, as the runner rounds it."""
    return max(1, round(setup.epochs * examples(setup) / batch_size))


def base_overrides(setup: Setup) -> dict:
    optimizer = {"optimizer.name": setup.optimizer}
    if setup.optimizer == "momentum":
        optimizer.update({"optimizer.momentum": 0.9, "optimizer.nesterov": True})
    return {
        "data.name": setup.data,
        **optimizer,
        "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "warmup_cosine",
        "num_epochs": setup.epochs,
        "train_steps": 0,
        "eval_every_epochs": setup.epochs / setup.evals,
        "checkpoint_every_epochs": 0.0,  # the final checkpoint is always written
        "progress_bar": False,
    }


def batch_overrides(setup: Setup, batch_size: int) -> dict:
    steps = steps_for(setup, batch_size)
    return {
        "data.batch_size": batch_size,
        "optimizer.warmup_steps": max(1, round(WARMUP_FRACTION * steps)),
        "log_every_steps": max(1, steps // 25),  # enough windows to time every eval
    }


@dataclasses.dataclass
class Result:
    batch_size: int
    arm: common.Arm
    steps: int

    @property
    def test(self) -> list[float]:
        return self.arm.final("accuracy")

    def curves(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per seed: (eval steps, training seconds at those steps, test accuracy)."""
        curves = []
        for run in self.arm.runs:
            steps, accuracy = common.series(run, "eval", "accuracy")
            if not len(steps):
                continue
            timed = training_seconds(common.read_run_metrics(run))
            seconds = np.interp(steps, list(timed), list(timed.values()))
            curves.append((steps, seconds, accuracy))
        return curves

    def seconds(self) -> list[float]:
        """Each seed's training seconds for the whole budget (compilation excluded)."""
        return [float(c[1][-1]) for c in self.curves()]

    def step_ms(self) -> float:
        """The median milliseconds per step over the logging windows after the first (which
        holds the compilation), over all seeds."""
        rates = []
        for run in self.arm.runs:
            train = [r for r in common.read_run_metrics(run) if r["split"] == "train"]
            rates += [r["steps_per_sec"] for r in train[1:]]
        return 1000.0 / float(np.median(rates)) if rates else math.nan


def training_seconds(records: list[dict]) -> dict[int, float]:
    """Seconds of training up to each logged step, evaluation and compilation excluded: the
    first logging window, which holds the compilation (long or short, as the compilation cache
    has the program or not), is timed at the median rate of the other windows."""
    train = [r for r in records if r["split"] == "train"]
    if len(train) > 1:
        median = float(np.median([r["steps_per_sec"] for r in train[1:]]))
        train[0] = {**train[0], "steps_per_sec": median}
    return common.training_seconds(train)


def linear_prediction(results: dict[int, Result], reference: int, batch_size: int) -> float:
    return results[reference].arm.learning_rate * batch_size / reference


def grid_step(learning_rates: Sequence[float]) -> float:
    """The grid's ratio between neighbouring rates (its largest, if uneven)."""
    rates = sorted(learning_rates)
    return max((b / a for a, b in zip(rates, rates[1:])), default=1.0)


def within_one_step(rate: float, prediction: float, step: float) -> bool:
    return abs(math.log(rate / prediction)) <= math.log(step) + 1e-9


def edge(arm: common.Arm) -> str:
    """Where in its sweep (the grid and any rates past its edge) an arm's best rate sits."""
    if len(arm.sweep) < 2:
        return ""
    if arm.learning_rate == max(arm.sweep):
        return "top"
    return "bottom" if arm.learning_rate == min(arm.sweep) else ""


def swept_rates(results: dict[int, Result], setup: Setup) -> list[float]:
    """The grid, and the rates a sweep trained past its edge (`common.tune_and_repeat`)."""
    arms = [r.arm for r in results.values()]
    return sorted({*setup.learning_rates, *common.swept_rates(arms)})


def sweep_cell(arm: common.Arm, rate: float) -> float | None:
    """The validation accuracy of `rate` in an arm's sweep: NaN where that rate diverged, None
    where this arm did not train it."""
    if rate not in arm.sweep:
        return None
    return math.nan if arm.sweep[rate] is None else arm.sweep[rate]


def budget(setup: Setup) -> str:
    return f"{setup.epochs:g} epoch{'' if setup.epochs == 1 else 's'}"


def pct(values: Sequence[float]) -> str:
    return common.format_mean_spread(values, percent=True, digits=2)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def plot_heatmap(results: dict[int, Result], setup: Setup, path: Path) -> None:
    """Validation accuracy over (batch size, learning rate); the best cell of each row boxed."""
    import matplotlib.pyplot as plt

    rates = swept_rates(results, setup)
    cells = [[sweep_cell(r.arm, lr) for lr in rates] for r in results.values()]
    grid = np.array([[np.inf if c is None else c for c in row] for row in cells])
    fig, ax = plt.subplots(figsize=(1.0 * len(rates) + 2.5, 0.7 * len(results) + 1.8))
    finite = grid[np.isfinite(grid)]
    low = float(np.percentile(finite, 20)) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 1.0
    shown = np.ma.masked_invalid(np.where(np.isnan(grid), low, grid))  # untrained cells blank
    image = ax.imshow(shown, cmap="viridis", vmin=low, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isinf(value):
            continue
        text = "div" if np.isnan(value) else f"{value:.1%}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color="white" if np.isnan(value) or value < (low + high) / 2 else "black",
        )
    for i, result in enumerate(results.values()):
        if result.arm.learning_rate in rates:
            j = rates.index(result.arm.learning_rate)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xticks(range(len(rates)), [f"{lr:g}" for lr in rates], rotation=45)
    ax.set_yticks(range(len(results)), [str(b) for b in results])
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("batch size")
    ax.set_title(f"validation accuracy after {budget(setup)}, seed {setup.seeds[0]}", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_best_rate(results: dict[int, Result], setup: Setup, path: Path) -> None:
    """Best rate against batch size on log-log axes, with the linear and square-root rules."""
    import matplotlib.pyplot as plt

    sizes = np.array(list(results), float)
    best = np.array([r.arm.learning_rate for r in results.values()])
    reference = setup.reference_batch
    anchor = results[reference].arm.learning_rate
    fig, ax = plt.subplots(figsize=(6, 4.5))
    rates = swept_rates(results, setup)
    ax.axhspan(min(rates), max(rates), color="grey", alpha=0.1, label="rates swept")
    dense = np.geomspace(sizes.min(), sizes.max(), 50)
    ax.plot(
        dense,
        anchor * dense / reference,
        "k-",
        lw=1,
        label=f"linear rule through batch {reference}",
    )
    ax.plot(dense, anchor * np.sqrt(dense / reference), "k--", lw=1, label="square-root rule")
    on_edge = np.array([bool(edge(r.arm)) for r in results.values()])
    if (~on_edge).any():
        ax.plot(
            sizes[~on_edge], best[~on_edge], "o", color="C3", ms=8, label="best inside the grid"
        )
    if on_edge.any():
        ax.plot(
            sizes[on_edge],
            best[on_edge],
            "o",
            mfc="none",
            color="C3",
            ms=8,
            label="best at the edge of the rates swept",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(sizes, [str(int(b)) for b in sizes])
    ax.set_yticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("best peak learning rate (validation, seed 0)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band(ax, curves: list[tuple[np.ndarray, np.ndarray]], label: str) -> None:
    """Mean and one standard deviation over seeds whose curves share their evaluation points."""
    length = min(len(y) for _, y in curves)
    xs = np.mean([x[:length] for x, _ in curves], axis=0)
    ys = np.array([y[:length] for _, y in curves])
    mean, spread = ys.mean(0), ys.std(0)
    (line,) = ax.plot(xs, mean, marker="o", ms=3, label=label)
    ax.fill_between(xs, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0)


def plot_curves(results: dict[int, Result], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for batch_size, result in results.items():
        curves = result.curves()
        if not curves:
            continue
        name = f"batch {batch_size} (lr {result.arm.learning_rate:g})"
        band(ax_steps, [(steps, acc) for steps, _, acc in curves], name)
        band(ax_time, [(seconds, acc) for _, seconds, acc in curves], name)
    ax_steps.set_xscale("log")
    ax_steps.set_xlabel("step")
    ax_time.set_xlabel("training seconds (compilation and evaluation excluded)")
    ax_steps.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax_steps.xaxis.set_minor_formatter(NullFormatter())
    ax_steps.set_ylabel("test accuracy")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def findings(results: dict[int, Result], setup: Setup) -> list[str]:
    """The 'what we measured' sentences, each computed from the numbers."""
    lines = []
    reference = setup.reference_batch
    step = grid_step(setup.learning_rates)
    sizes = list(results)
    best = {b: r.arm.learning_rate for b, r in results.items()}
    if len(sizes) > 1:
        fit = np.polyfit(np.log(sizes), np.log([best[b] for b in sizes]), 1)
        slope = round(float(fit[0]), 2) + 0.0  # no "-0.00"
        lines.append(
            f"- A least-squares line through log(best rate) against log(batch size) has slope "
            f"{slope:.2f} (1: the linear rule; 0.5: the square-root rule; 0: one rate for all)."
        )
    holds, breaks = [], []
    for b in sizes:
        if b == reference:
            continue
        prediction = linear_prediction(results, reference, b)
        where = edge(results[b].arm)
        bound = {"top": " (at least: the top rate swept)", "bottom": " (at most: the lowest)"}
        text = (
            f"batch {b} (best {best[b]:g}{bound.get(where, '')}, predicted {prediction:g}, "
            f"{best[b] / prediction:.2g}x)"
        )
        (holds if within_one_step(best[b], prediction, step) else breaks).append(text)
    lines.append(
        f"- The linear rule through batch {reference}'s best rate ({best[reference]:g}) held "
        f"within one grid step (a factor {step:g}) for: {'; '.join(holds) or 'no other batch size'}"
        f". It did not for: {'; '.join(breaks) or 'none'}."
    )
    means = {b: common.mean_spread(r.test)[0] for b, r in results.items()}
    finite = {b: m for b, m in means.items() if math.isfinite(m)}
    if finite:
        top = max(finite, key=finite.get)
        behind = [
            f"batch {b}: {100 * (finite[top] - m):.1f} points lower ({results[b].steps} steps)"
            for b, m in finite.items()
            if b != top
        ]
        lines.append(
            f"- At a fixed budget of {budget(setup)}, each at its tuned rate, the best "
            f"test accuracy came from batch {top} ({pct(results[top].test)}, "
            f"{results[top].steps} steps); {'; '.join(behind) or 'no other batch size ran'}."
        )
        seconds = {b: common.mean_spread(results[b].seconds())[0] for b in finite}
        fastest = min(seconds, key=seconds.get)
        lines.append(
            f"- Training took {', '.join(f'{s:.3g} s at batch {b}' for b, s in seconds.items())}"
            f" (fastest: batch {fastest}); per step "
            f"{', '.join(f'{results[b].step_ms():.3g} ms' for b in seconds)}."
        )
        target = min(finite.values())
        reached = {}
        for b in finite:
            curves = results[b].curves()
            length = min(len(c[2]) for c in curves)
            mean_acc = np.mean([c[2][:length] for c in curves], axis=0)
            mean_s = np.mean([c[1][:length] for c in curves], axis=0)
            hit = np.nonzero(mean_acc >= target)[0]
            if hit.size:
                reached[b] = mean_s[hit[0]]
        if reached:
            first = min(reached, key=reached.get)
            lines.append(
                f"- To reach {target:.1%} test accuracy (the lowest final mean), batch {first} "
                f"was quickest on the wall clock ({reached[first]:.3g} s; "
                + ", ".join(f"batch {b}: {s:.3g} s" for b, s in reached.items() if b != first)
                + "), measured at the evaluations only."
            )
    return lines


def write_report(
    results: dict[int, Result],
    protocol: common.Protocol,
    setup: Setup,
    report_dir: Path,
    command: str,
    seconds: float,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_heatmap(results, setup, report_dir / "heatmap.png")
    plot_best_rate(results, setup, report_dir / "best_lr.png")
    plot_curves(results, report_dir / "accuracy_curves.png")

    config = json.loads(
        next(iter(results.values())).arm.runs[0].joinpath("config.json").read_text()
    )
    model = config["model"]
    fields = ", ".join(f"{key}={value}" for key, value in model.items() if key != "name")
    optimizer = (
        "SGD with Nesterov momentum 0.9" if setup.optimizer == "momentum" else setup.optimizer
    )
    lines = [
        "# Batch size and learning rate",
        "",
        f"Model `{model['name']}` ({fields}) from `{setup.config}` on `{setup.data}`, trained on `{setup.train_split}` "
        f"({examples(setup):,} images) for {budget(setup)} at every batch size: "
        f"{optimizer}, no weight decay, warmup over {WARMUP_FRACTION:.0%} of the steps then "
        f"cosine decay to 0, {setup.evals} evaluations per run. The grid (batch sizes "
        f"{list(setup.batch_sizes)} x peak rates {[float(f'{r:g}') for r in setup.learning_rates]}"
        f") is one seed ({setup.seeds[0]}) scored on `{setup.validation_split}`; the best rate of "
        f"each batch size was then trained from seeds {list(setup.seeds)} and scored on "
        f"`{setup.test_split}` (mean ± standard deviation over those seeds).",
        "",
        "| batch size | steps | best rate (grid) | linear rule's rate | validation accuracy "
        "| test accuracy | training seconds | ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, result in results.items():
        seconds_each = result.seconds()
        score = result.arm.sweep.get(result.arm.learning_rate)
        validation = "-" if score is None else f"{score:.2%}"
        lines.append(
            f"| {b} | {result.steps} | {result.arm.learning_rate:g}"
            f"{' (edge)' if edge(result.arm) else ''} | "
            f"{linear_prediction(results, setup.reference_batch, b):g} | "
            f"{validation} | "
            f"{pct(result.test)} | {common.format_mean_spread(seconds_each, digits=1)} | "
            f"{result.step_ms():.1f} |"
        )
    lines += [
        "",
        "The linear rule's rate: batch "
        f"{setup.reference_batch}'s best rate times batch / {setup.reference_batch}. Training "
        "seconds: the logged training windows, evaluation excluded, the first window (which "
        "holds the compilation) timed at the median rate of the others; ms/step: that median.",
        "",
        "![validation accuracy over the grid](heatmap.png)",
        "",
        "![best learning rate against batch size](best_lr.png)",
        "",
        "![test accuracy against steps and seconds](accuracy_curves.png)",
        "",
        f"The grid (accuracy on `{setup.validation_split}`, seed {setup.seeds[0]}; `diverged`: "
        "the loss became NaN; `-`: a rate past the grid's edge that this batch size's sweep did not "
        "need):",
        "",
        "| batch size | " + " | ".join(f"lr {r:g}" for r in swept_rates(results, setup)) + " |",
        "|---|" + "---|" * len(swept_rates(results, setup)),
    ]
    for b, result in results.items():
        cells = [
            "-" if c is None else "diverged" if math.isnan(c) else f"{c:.2%}"
            for c in (sweep_cell(result.arm, r) for r in swept_rates(results, setup))
        ]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", *common.grid_edge_note(r.arm for r in results.values())]
    lines += [
        "## What we expected, what we measured",
        "",
        "Expected: the best learning rate grows in proportion to the batch size (the linear "
        "scaling rule of SGD with momentum) over small and moderate batches, and the rule breaks "
        "at large batches, where the proportional rate is beyond the stable range and, at a fixed "
        "epoch budget, too few steps remain; larger batches finish the budget sooner on the wall "
        "clock while each step costs more.",
        "",
        "Measured:",
        "",
        *findings(results, setup),
        "",
        f"Training time: {common.training_minutes(r.arm for r in results.values()):.1f} min for "
        f"all the study's runs (grid and seeds, each run's own wall time); this invocation took "
        f"{seconds / 60:.1f} min (finished runs are skipped). The seconds and ms/step above "
        "compare batch sizes only if nothing else shared the cores while the runs trained.",
        "",
    ]
    return common.write_report(
        report_dir, lines, f"{protocol.out}/batch_<B>/<lr_RATE|seed_SEED>", command
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few steps: for the tests")
    parser.add_argument("--batch_sizes", nargs="*", type=int)
    parser.add_argument("--learning_rates", nargs="*", type=float)
    parser.add_argument("--optimizer", choices=list(GRIDS), help="default momentum")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--reference_batch", type=int, help="the linear rule's anchor")
    parser.add_argument("--out", help="the runs (default runs/experiments/batch_size[_quick])")
    parser.add_argument(
        "--report_dir",
        help="report.md and figures (default experiments/results/batch_size; with --quick, --out)",
    )
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    optimizer = args.optimizer or setup.optimizer
    batch_sizes = tuple(args.batch_sizes or setup.batch_sizes)
    setup = dataclasses.replace(
        setup,
        optimizer=optimizer,
        batch_sizes=batch_sizes,
        learning_rates=tuple(
            args.learning_rates
            or (setup.learning_rates if optimizer == setup.optimizer else GRIDS[optimizer])
        ),
        epochs=args.epochs or setup.epochs,
        seeds=tuple(args.seeds if args.seeds is not None else setup.seeds),
        reference_batch=args.reference_batch
        or (setup.reference_batch if setup.reference_batch in batch_sizes else batch_sizes[0]),
    )
    if setup.reference_batch not in setup.batch_sizes:
        parser.error(f"--reference_batch {setup.reference_batch} is not among --batch_sizes")
    out = Path(args.out or f"runs/experiments/batch_size{'_quick' if args.quick else ''}")
    report_dir = Path(args.report_dir or (out if args.quick else "experiments/results/batch_size"))
    started = time.perf_counter()
    common.use_compilation_cache(out)
    protocol = common.Protocol.from_setup(setup, out, base_overrides(setup))
    results = {}
    for b in setup.batch_sizes:
        arm = common.tune_and_repeat(
            protocol, f"batch_{b}", batch_overrides(setup, b), setup.learning_rates
        )
        results[b] = Result(b, arm, steps_for(setup, b))
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/batch_size.py", *given])
    report = write_report(
        results, protocol, setup, report_dir, command, time.perf_counter() - started
    )
    print(f"Report: {report}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
