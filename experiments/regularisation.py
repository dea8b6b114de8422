"""Study: regularisation where overfitting shows, an MLP trained on 1,000 Fashion-MNIST images.

    python experiments/regularisation.py [--arms none l1_1e-04 ...] [--seeds 0 1 2] \
        [--out runs/experiments/regularisation] [--report_dir experiments/results/regularisation]
    python experiments/regularisation.py --quick --out /tmp/reg   # digits, seconds: for the tests

The arms (`ARMS`): none, dropout at two rates, an L1 and an L2 penalty in the loss (`loss.l1`,
`loss.l2`, kernels only) and decoupled weight decay (`optimizer.weight_decay`), two strengths each,
batch norm, augmentation (random crops, flips and erasing, the recipe of configs/fashion_resnet.py),
and early stopping, which trains nothing of its own: it reads the `none` arm's runs at the epoch
where that arm's validation curve peaked. The strength is the arm; each arm's learning rate is the
best of a small grid on a validation slice held out of the training set
(`common.tune_and_repeat`), then every seed is trained at that rate and scored on the test split.

Train accuracy is measured after training, by scoring each seed's final checkpoint on the 1,000
training images in eval mode (no dropout, no augmentation, batch-norm running statistics;
`dlx.train.loop.evaluate`, recorded in the run's eval_results.jsonl); the gap is that minus the
test accuracy. The first-layer weight histograms read the final parameters from the checkpoint
(`dlx.inference.load`). Re-running skips finished runs and rewrites the report and figures.
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

# Each arm: its overrides on top of BASE. The penalties are sums over every kernel (biases and
# norm scales excluded), so their strengths are small numbers; with 500 Adam steps of ~1e-3, a
# decoupled decay needs a strength near 1 to shrink weights noticeably (optax scales it by the
# learning rate).
ARMS: dict[str, dict] = {
    "none": {},
    "dropout_0.2": {"model.dropout": 0.2},
    "dropout_0.5": {"model.dropout": 0.5},
    "l1_1e-05": {"loss.l1": 1e-5},
    "l1_1e-04": {"loss.l1": 1e-4},
    "l2_1e-04": {"loss.l2": 1e-4},
    "l2_1e-03": {"loss.l2": 1e-3},
    "weight_decay_0.3": {"optimizer.weight_decay": 0.3},
    "weight_decay_3": {"optimizer.weight_decay": 3.0},
    "batch_norm": {"model.batch_norm": True},
    "augment": {"augment.crop_padding": 2, "augment.flip": True, "augment.erasing": 0.25},
}
QUICK_ARMS = ("none", "l1_1e-04")
EARLY_STOPPING = "early stopping"  # derived from the `none` arm's runs
NEAR_ZERO = 1e-3  # |w| below this counts as (practically) zero in the weight statistics
PENALTY_ARMS = ("none", "l1_", "l2_", "weight_decay_")  # shown in the weight histograms


@dataclasses.dataclass(frozen=True)
class Setup:
    """The budget of one study invocation (the full one or `--quick`)."""

    config: str
    train_split: str
    validation_split: str
    test_split: str
    batch_size: int
    epochs: float
    eval_every_epochs: float
    warmup_steps: int
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...]
    tune_each_arm: bool = True  # False: only the first arm sweeps the rates, the rest take its rate
    grid_extensions: int = common.MAX_GRID_EXTENSIONS  # rates a sweep may add past its grid


FULL = Setup(
    config="configs/fashion_mlp.py",
    train_split="train[:1000]",
    validation_split="train[50000:52000]",
    test_split="test",
    batch_size=100,
    epochs=50.0,
    eval_every_epochs=5.0,
    warmup_steps=50,
    learning_rates=(3e-4, 1e-3, 3e-3),
    seeds=(0, 1, 2),
    arms=tuple(ARMS),
)
QUICK = Setup(
    config="configs/digits_mlp.py",
    train_split="train[:200]",
    validation_split="train[1000:]",
    test_split="test",
    batch_size=32,
    epochs=12.0,
    eval_every_epochs=6.0,
    warmup_steps=10,
    learning_rates=(3e-3, 1e-2),
    # Each learning rate and each seed compiles its own programs (seconds each): one seed, and one
    # swept arm (`none`, whose validation curve early stopping reads).
    seeds=(0,),
    arms=QUICK_ARMS,
    tune_each_arm=False,
    grid_extensions=0,
)


def label(arm: str) -> str:
    """ "l1_1e-04" -> "L1 1e-04"."""
    kind, _, strength = arm.rpartition("_") if arm[-1].isdigit() else (arm, "", "")
    names = {
        "l1": "L1",
        "l2": "L2",
        "weight_decay": "weight decay",
        "batch_norm": "batch norm",
        "augment": "augmentation",
    }
    return f"{names.get(kind, kind)} {strength}".strip().replace("_", " ")


def base_overrides(setup: Setup) -> dict:
    """Everything regularising off, so each arm switches on exactly one thing."""
    return {
        "model.dropout": 0.0,
        "model.batch_norm": False,
        "loss.l1": 0.0,
        "loss.l2": 0.0,
        "optimizer.name": "adamw",  # adam while weight_decay is 0
        "optimizer.weight_decay": 0.0,
        "optimizer.schedule": "warmup_cosine",
        "optimizer.warmup_steps": setup.warmup_steps,
        "augment.crop_padding": 0,
        "augment.flip": False,
        "augment.erasing": 0.0,
        "data.batch_size": setup.batch_size,
        "num_epochs": setup.epochs,
        "train_steps": 0,
        "eval_every_epochs": setup.eval_every_epochs,
        "checkpoint_every_epochs": 0.0,  # the final checkpoint is always written
        "log_every_steps": max(1, round(examples(setup) / setup.batch_size)),  # once an epoch
        "progress_bar": False,
    }


@functools.lru_cache
def examples(setup: Setup) -> int:
    """Images in the training split."""
    from dlx import data
    from dlx.train import config as config_lib

    name = config_lib.load(setup.config).data.name
    return len(data.source(name, setup.train_split, None))


def train_accuracy(workdir: Path, split: str) -> float:
    """Accuracy of the run's final checkpoint on `split` in eval mode; read back from its
    eval_results.jsonl when an earlier invocation already scored it. NaN for a diverged run."""
    from dlx.train import config as config_lib
    from dlx.train import loop

    if not common.final_eval(workdir):
        return math.nan
    summary = json.loads((workdir / "summary.json").read_text())
    results = workdir / loop.EVAL_RESULTS
    if results.exists():
        for line in results.read_text().splitlines():
            record = json.loads(line)
            if record["split"] == split and record["step"] == summary["steps"]:
                return record["accuracy"]
    config = config_lib.from_json(str(workdir / "config.json"))
    config.data.eval_split = split
    return loop.evaluate(config, str(workdir))["accuracy"]


def first_layer_weights(workdir: Path) -> np.ndarray:
    """The first dense layer's kernel of the run's final checkpoint, flattened (empty for a
    diverged run)."""
    from dlx import inference

    if not common.final_eval(workdir):
        return np.zeros(0)
    params = inference.load(str(workdir)).state.params
    if "Dense_0" not in params:
        raise SystemExit(f"{workdir}: the weight statistics read an MLP's Dense_0 layer")
    return np.asarray(params["Dense_0"]["kernel"], np.float64).ravel()


def value_at(workdir: Path, split: str, metric: str, step: int) -> float:
    """`metric` of the `split` record at `step` (the last logged at or before it), NaN if none."""
    steps, values = common.series(workdir, split, metric)
    before = np.nonzero(steps <= step)[0]
    return float(values[before[-1]]) if before.size else math.nan


@dataclasses.dataclass
class EarlyStop:
    """The `none` arm stopped at `step`, the peak of its validation curve (seed 0, its rate)."""

    step: int
    test: list[float]  # each seed's test accuracy at `step`
    train: list[float]  # each seed's training-batch accuracy over the epoch ending at `step`
    oracle: list[float]  # each seed's best test accuracy on its own curve (optimistic)


def early_stop(arm: common.Arm, protocol: common.Protocol) -> EarlyStop | None:
    if not arm.sweep:  # a single learning rate: no validation curve was trained
        return None
    validation_run = protocol.out / arm.name / f"lr_{arm.learning_rate:g}"
    steps, accuracy = common.series(validation_run, "eval", "accuracy")
    if not len(steps):
        return None
    step = int(steps[int(np.argmax(accuracy))])  # the first of equal peaks
    return EarlyStop(
        step,
        [value_at(run, "eval", "accuracy", step) for run in arm.runs],
        [value_at(run, "train", "accuracy", step) for run in arm.runs],
        [
            float(max(common.series(run, "eval", "accuracy")[1], default=math.nan))
            for run in arm.runs
        ],
    )


@dataclasses.dataclass
class Result:
    arm: common.Arm
    test: list[float]
    train: list[float]
    weights: list[np.ndarray]

    @property
    def gap(self) -> list[float]:
        return [a - b for a, b in zip(self.train, self.test)]


def near_zero(weights: np.ndarray) -> float:
    return float(np.mean(np.abs(weights) < NEAR_ZERO)) if weights.size else math.nan


def mean_abs(weights: np.ndarray) -> float:
    return float(np.mean(np.abs(weights))) if weights.size else math.nan


def clearly(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the means of a and b differ by more than their two spreads together."""
    (mean_a, spread_a), (mean_b, spread_b) = common.mean_spread(a), common.mean_spread(b)
    return abs(mean_a - mean_b) > spread_a + spread_b


def pct(values: Sequence[float]) -> str:
    return common.format_mean_spread(values, percent=True, digits=1)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def plot_curves(results: dict[str, Result], stop: EarlyStop | None, path: Path) -> None:
    """One panel per arm: training-batch and test accuracy against step, bands over seeds."""
    import matplotlib.pyplot as plt

    columns = 4
    rows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.6 * columns, 2.8 * rows), sharex=True, sharey=True, squeeze=False
    )
    for ax, (name, result) in zip(axes.flat, results.items()):
        common.plot_band(ax, result.arm.runs, "train", "accuracy", "train (batches)", ls="--")
        common.plot_band(ax, result.arm.runs, "eval", "accuracy", "test")
        if name == "none" and stop is not None:
            ax.axvline(stop.step, color="grey", lw=1, ls=":", label="early stop")
        ax.set_title(f"{label(name)} (lr {result.arm.learning_rate:g})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_test_loss(results: dict[str, Result], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.get_cmap("tab20")
    for i, (name, result) in enumerate(results.items()):
        style = {"lw": 2.5, "color": "black"} if name == "none" else {"color": colours(i)}
        common.plot_band(ax, result.arm.runs, "eval", "loss", label(name), **style)
    ax.set_xlabel("step")
    ax.set_ylabel("test loss (cross-entropy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap(results: dict[str, Result], stop: EarlyStop | None, path: Path) -> None:
    """Train and test accuracy per arm, with one standard deviation over seeds."""
    import matplotlib.pyplot as plt

    names = [label(name) for name in results]
    train = [common.mean_spread(r.train) for r in results.values()]
    test = [common.mean_spread(r.test) for r in results.values()]
    if stop is not None:
        names.append(EARLY_STOPPING)
        train.append(common.mean_spread(stop.train))
        test.append(common.mean_spread(stop.test))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 4.5))
    for offset, values, name in ((-0.2, train, "train"), (0.2, test, "test")):
        means, spreads = zip(*values)
        ax.bar(x + offset, means, 0.4, yerr=spreads, capsize=2, label=name)
    ax.set_xticks(x, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    finite = [m for m, _ in test if math.isfinite(m)]
    ax.set_ylim(max(0.0, min(finite, default=0.0) - 0.1), 1.01)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(results: dict[str, Result], path: Path) -> None:
    """Histograms of the first layer's weights (all seeds pooled) and the distribution of |w|."""
    import matplotlib.pyplot as plt

    shown = {n: r for n, r in results.items() if n.startswith(PENALTY_ARMS)}
    fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    pooled = {n: np.concatenate(r.weights) for n, r in shown.items()}
    pooled = {n: w for n, w in pooled.items() if w.size}
    limit = max((np.percentile(np.abs(w), 99.9) for w in pooled.values()), default=1.0)
    bins = np.linspace(-limit, limit, 121)
    for name, weights in pooled.items():
        style = {"lw": 2.5, "color": "black"} if name == "none" else {}
        ax_hist.hist(weights, bins=bins, histtype="step", label=label(name), **style)
        magnitudes = np.sort(np.maximum(np.abs(weights), 1e-8))
        ax_cdf.plot(magnitudes, np.arange(1, magnitudes.size + 1) / magnitudes.size, **style)
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("first-layer weight")
    ax_hist.set_ylabel("count (all seeds)")
    ax_hist.legend(fontsize=8)
    ax_cdf.set_xscale("log")
    ax_cdf.axvline(NEAR_ZERO, color="grey", ls=":", lw=1)
    ax_cdf.set_xlabel("|first-layer weight|")
    ax_cdf.set_ylabel(f"fraction below (dotted: {NEAR_ZERO:g})")
    for ax in (ax_hist, ax_cdf):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def findings(results: dict[str, Result], stop: EarlyStop | None, seed: int) -> list[str]:
    """The 'what we measured' sentences, each computed from the numbers; `seed`: the first."""
    none = results.get("none")
    lines = []
    if none is not None:
        gap, _ = common.mean_spread(none.gap)
        steps, loss = common.series(none.arm.runs[0], "eval", "loss")
        rise = ""
        if len(loss) > 1:
            low = int(np.argmin(loss))
            rise = (
                f"; seed {seed}'s test loss was lowest at step {steps[low]} "
                f"({loss[low]:.3f}) and ended at {loss[-1]:.3f}"
                f"{' (it rose: overfitting)' if loss[-1] > loss[low] * 1.02 else ''}"
            )
        lines.append(
            f"- Without regularisation the network reached {pct(none.train)} on its training "
            f"images and {pct(none.test)} on the test split, a gap of {100 * gap:.1f} points{rise}."
        )
        others = {n: r for n, r in results.items() if n != "none"}

        def beyond_spread(values: str, sign: int) -> str:
            """The arms whose `values` differ from none's by more than the seed spreads, in the
            direction `sign`."""
            ours = getattr(none, values)
            names = [
                label(n)
                for n, r in others.items()
                if clearly(getattr(r, values), ours)
                and sign * (np.nanmean(getattr(r, values)) - np.nanmean(ours)) > 0
            ]
            return ", ".join(names) or "none of the arms"

        if others and len(none.test) < 2:
            lines.append("- One seed: no spread to tell the arms' differences from seed noise.")
        elif others:
            lines.append(
                "- Beyond the seed spread (means apart by more than both spreads together), the "
                f"gap narrowed with: {beyond_spread('gap', -1)}; test accuracy rose with: "
                f"{beyond_spread('test', 1)}; it fell with: {beyond_spread('test', -1)}."
            )
    best = max(results, key=lambda n: np.nan_to_num(common.mean_spread(results[n].test)[0], nan=-1))
    lines.append(f"- The best arm on test accuracy: {label(best)}, {pct(results[best].test)}.")
    if stop is not None and none is not None:
        final, final_spread = common.mean_spread(none.test)
        stopped, stopped_spread = common.mean_spread(stop.test)
        oracle, _ = common.mean_spread(stop.oracle)
        difference = stopped - final
        verdict = (
            "the same within the seed spread"
            if abs(difference) <= final_spread + stopped_spread
            else f"{'better' if difference > 0 else 'worse'} by {100 * abs(difference):.1f} points"
        )
        lines.append(
            f"- Early stopping (at step {stop.step}, the peak of the validation curve) scored "
            f"{pct(stop.test)} against {pct(none.test)} trained to the end ({verdict}); "
            f"picking each seed's step on the test curve itself would have reported "
            f"{oracle:.1%}, an optimistic number."
        )
    if none is not None:
        sparsity = {n: [near_zero(w) for w in r.weights] for n, r in results.items()}
        size = {n: [mean_abs(w) for w in r.weights] for n, r in results.items()}
        base_zero, base_size = np.nanmean(sparsity["none"]), np.nanmean(size["none"])
        for name in (n for n in results if n.startswith(("l1_", "l2_", "weight_decay_"))):
            zero, magnitude = np.nanmean(sparsity[name]), np.nanmean(size[name])
            lines.append(
                f"- {label(name)}: {zero:.1%} of the first layer's weights below {NEAR_ZERO:g} "
                f"(none: {base_zero:.1%}), mean |w| {magnitude:.4f} "
                f"({magnitude / base_size:.2f}x none's)."
            )
        lines += l1_against_shrinkers(
            {n: float(np.nanmean(v)) for n, v in sparsity.items()},
            {n: float(np.nanmean(v)) for n, v in size.items()},
        )
    return lines


def l1_against_shrinkers(near_zero: dict[str, float], size: dict[str, float]) -> list[str]:
    """The textbook's claim (L1 zeroes weights, L2 and weight decay shrink them all) tested at
    equal shrinkage: each L1 arm against the L2 and decay arms whose mean |w| is at most its own,
    which shrank the weights at least as far; L1 is sparser if it has more weights near zero
    than every one of them."""
    shrinkers = [n for n in near_zero if n.startswith(("l2_", "weight_decay_"))]
    lines = []
    for name in (n for n in near_zero if n.startswith("l1_")):
        rivals = [n for n in shrinkers if size[n] <= size[name]]
        head = (
            f"- {label(name)} against the L2 and decay arms that shrank the first layer at least "
            f"as far (mean |w| at most its {size[name]:.4f}): "
        )
        if not rivals:
            lines.append(head + "none did, so this strength has no comparison at equal shrinkage.")
            continue
        sparsest = max(rivals, key=near_zero.get)
        rival = f"{label(sparsest)}, {near_zero[sparsest]:.1%} at mean |w| {size[sparsest]:.4f}"
        if near_zero[name] > near_zero[sparsest]:
            lines.append(
                head + f"it has more weights near zero ({near_zero[name]:.1%}) than the sparsest "
                f"of them ({rival}): L1 zeroes weights where the others shrink them, as the "
                "textbook has it."
            )
        else:
            lines.append(
                head + f"it has no more weights near zero ({near_zero[name]:.1%}) than {rival}: "
                "at this strength L1's sparsity does not show."
            )
    return lines


def write_report(
    results: dict[str, Result],
    stop: EarlyStop | None,
    protocol: common.Protocol,
    setup: Setup,
    report_dir: Path,
    command: str,
    seconds: float,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(results, stop, report_dir / "curves.png")
    plot_test_loss(results, report_dir / "test_loss.png")
    plot_gap(results, stop, report_dir / "gap.png")
    plot_weights(results, report_dir / "first_layer_weights.png")

    config = json.loads((next(iter(results.values())).arm.runs[0] / "config.json").read_text())
    model = config["model"]
    images = examples(setup)
    tuning = (
        f"rate is the best of {list(setup.learning_rates)} on `{setup.validation_split}` (seed "
        f"{setup.seeds[0]}), then seeds {list(setup.seeds)} train at that rate"
        if len(setup.learning_rates) > 1
        else f"rate is {setup.learning_rates[0]:g} (no sweep), and seeds {list(setup.seeds)} train"
    )
    if len(setup.learning_rates) > 1 and not setup.tune_each_arm:
        tuning = tuning.replace("rate is", f"rate is `{setup.arms[0]}`'s,", 1)
    lines = [
        "# Regularisation on a small training set",
        "",
        f"Model `{model['name']}` {tuple(model.get('hidden', ()))} from `{setup.config}` on "
        f"`{config['data']['name']}`, trained on `{setup.train_split}` "
        f"({images:,} images) for {setup.epochs:g} epochs of batch {setup.batch_size} "
        f"({round(setup.epochs * images / setup.batch_size)} steps), AdamW (Adam where weight decay is 0), "
        f"warmup {setup.warmup_steps} steps then cosine decay; evaluated every "
        f"{setup.eval_every_epochs:g} epochs. Each arm switches on one regulariser; its learning "
        f"{tuning} and are scored on `{setup.test_split}`. Tables give mean ± standard deviation over the seeds.",
        "",
        "Train accuracy: each seed's final checkpoint scored on the training images in eval mode "
        "(no dropout or augmentation; `dlx.train.loop.evaluate` with the training split as "
        "eval split). Gap = train accuracy - test accuracy. Early stopping trains nothing of its "
        "own: it is the `none` arm stopped at the evaluation where its validation curve (seed "
        f"{setup.seeds[0]}, at its chosen rate) peaked, scored from the test curves of its seeds "
        "at that step; its train accuracy is the training batches' over the epoch ending there "
        "(the `none` arm has no dropout or augmentation, so these are eval-mode numbers too).",
        "",
        "| arm | setting | learning rate | test accuracy | train accuracy | gap | test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        setting = ", ".join(f"`{k}={v}`" for k, v in ARMS[name].items()) or "-"
        loss = [common.final_eval(run).get("loss", math.nan) for run in result.arm.runs]
        lines.append(
            f"| {label(name)} | {setting} | {result.arm.learning_rate:g} | {pct(result.test)} | "
            f"{pct(result.train)} | {pct(result.gap)} | "
            f"{common.format_mean_spread(loss, digits=3)} |"
        )
    if stop is not None:
        gap = [a - b for a, b in zip(stop.train, stop.test)]
        lines.append(
            f"| {EARLY_STOPPING} | none, stopped at step {stop.step} | "
            f"{results['none'].arm.learning_rate:g} | {pct(stop.test)} | {pct(stop.train)} | "
            f"{pct(gap)} | - |"
        )
    lines += [
        "",
        "![train and test accuracy per arm](curves.png)",
        "",
        "![test loss](test_loss.png)",
        "",
        "![train and test accuracy](gap.png)",
        "",
        f"First-layer weights (`Dense_0/kernel`, {next(iter(results.values())).weights[0].size:,}"
        f" weights) of the final checkpoints: the fraction below {NEAR_ZERO:g} in magnitude and "
        "the mean magnitude.",
        "",
        f"| arm | fraction \\|w\\| < {NEAR_ZERO:g} | mean \\|w\\| |",
        "|---|---|---|",
    ]
    for name, result in results.items():
        zero = [near_zero(w) for w in result.weights]
        size = [mean_abs(w) for w in result.weights]
        lines.append(
            f"| {label(name)} | {pct(zero)} | {common.format_mean_spread(size, digits=4)} |"
        )
    lines += [
        "",
        "![first-layer weights](first_layer_weights.png)",
        "",
    ]
    if len(setup.learning_rates) > 1:
        arms = [result.arm for result in results.values()]
        rates = common.swept_rates(arms)
        lines += [
            f"Learning-rate sweep (accuracy on `{setup.validation_split}`, seed {setup.seeds[0]}; "
            "`diverged`: the loss became NaN; `-`: not trained for this arm):",
            "",
            "| arm | " + " | ".join(f"lr {r:g}" for r in rates) + " |",
            "|---|" + "---|" * len(rates),
        ]
        for name, result in results.items():
            cells = [
                "-"  # trained at another arm's rate, or past the grid's edge for another arm
                if rate not in result.arm.sweep
                else "diverged"
                if result.arm.sweep[rate] is None
                else f"{result.arm.sweep[rate]:.2%}"
                for rate in rates
            ]
            lines.append(f"| {label(name)} | " + " | ".join(cells) + " |")
        lines += ["", *common.grid_edge_note(arms)]
    lines += [
        "",
        "## What we expected, what we measured",
        "",
        f"Expected: on {images:,} images the unregularised network memorises the training set (train "
        "accuracy near 100%) while its test loss climbs after an early minimum; each regulariser "
        "narrows the gap between train and test accuracy; L1 drives first-layer weights to zero "
        "(sparsity) where L2 and weight decay shrink all of them; early stopping recovers the "
        "test accuracy of the epoch before overfitting set in.",
        "",
        "Measured:",
        "",
        *findings(results, stop, setup.seeds[0]),
        "",
        f"Training time: {common.training_minutes(r.arm for r in results.values()):.1f} min for all the study's runs (sweeps and seeds, each "
        f"run's own wall time); this invocation took {seconds / 60:.1f} min (finished runs are "
        "skipped). Times grow when other work shares the cores.",
        "",
    ]
    return common.write_report(
        report_dir, lines, f"{protocol.out}/<arm>/<lr_RATE|seed_SEED>", command
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, a few steps: for the tests")
    parser.add_argument("--arms", nargs="*", choices=list(ARMS), help="default: every arm")
    parser.add_argument("--learning_rates", nargs="*", type=float)
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--out", help="the runs (default runs/experiments/regularisation[_quick])")
    parser.add_argument(
        "--report_dir",
        help="report.md and figures (default experiments/results/regularisation; with --quick, "
        "--out)",
    )
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    setup = dataclasses.replace(
        setup,
        arms=tuple(args.arms or setup.arms),
        learning_rates=tuple(args.learning_rates or setup.learning_rates),
        seeds=tuple(args.seeds if args.seeds is not None else setup.seeds),
    )
    out = Path(args.out or f"runs/experiments/regularisation{'_quick' if args.quick else ''}")
    report_dir = Path(
        args.report_dir or (out if args.quick else "experiments/results/regularisation")
    )
    started = time.perf_counter()
    common.use_compilation_cache(out)
    protocol = common.Protocol.from_setup(setup, out, base_overrides(setup))
    results = {}
    for name in setup.arms:
        rates = setup.learning_rates
        if results and not setup.tune_each_arm:
            rates = (next(iter(results.values())).arm.learning_rate,)
        arm = common.tune_and_repeat(protocol, name, ARMS[name], rates)
        results[name] = Result(
            arm,
            test=arm.final("accuracy"),
            train=[train_accuracy(run, setup.train_split) for run in arm.runs],
            weights=[first_layer_weights(run) for run in arm.runs],
        )
    stop = early_stop(results["none"].arm, protocol) if "none" in results else None
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/regularisation.py", *given])
    report = write_report(
        results, stop, protocol, setup, report_dir, command, time.perf_counter() - started
    )
    print(f"Report: {report}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
