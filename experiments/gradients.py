"""Study: vanishing and exploding gradients, in deep MLPs and in recurrent language models.

    python experiments/gradients.py [--quick] [--parts depth explode sequence] \
        [--out runs/experiments/gradients] [--report_dir experiments/results/gradients]

Three parts, every run an ordinary `launch.py` run trained in this process (`experiments/common.py`):

- depth: a 20-layer MLP on Fashion-MNIST (`configs/fashion_mlp.py`) as sigmoid (Glorot init),
  ReLU with He init, and ReLU + He + residual connections + layer norm; per-layer gradient norms
  from the runner's per-layer statistics (`config.layer_stats_every_steps`) through training and
  at initialisation (the first train step's, computed as the runner computes them), training
  curves, test accuracy. Each arm takes its own learning rate from a grid (validation split).
- explode: the ReLU net under plain SGD at learning rates up to a too-large one, without and with
  gradient clipping (`optimizer.clip_global_norm`): which runs diverge (a NaN loss is a result),
  the gradient norm over steps, accuracy.
- sequence: ||d loss_t / d x_{t-k}||, the gradient of the loss at position t with respect to the
  input embedding k steps earlier, against k, for a simple tanh RNN, an LSTM and a GRU of one
  recurrent layer (`configs/shakespeare_{lstm,gru}.py:small` with `model.num_layers=1`; the RNN
  is the LSTM config with `model.cell=rnn`), at initialisation and after a short training.

`--quick` runs everything tiny for the tests (digits, `:test` Shakespeare models, one seed, fewer
arms; see `QUICK`).
Re-running skips finished runs and rewrites the report and figures in --report_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
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

DEPTH_ARMS = {
    "sigmoid": {"model.activation": "sigmoid", "model.kernel_init": "glorot_normal"},
    "relu_he": {"model.activation": "relu", "model.kernel_init": "he_normal"},
    "residual_layernorm": {
        "model.activation": "relu",
        "model.kernel_init": "he_normal",
        "model.residual": True,
        "model.norm": "layer",
    },
}
EXPLODE_ARMS = {"sgd": False, "sgd_clip": True}  # with gradient clipping?
CELLS = ("rnn", "lstm", "gru")
PARTS = ("depth", "explode", "sequence")
INIT_STATS_FILE = "init_layer_stats.json"  # the first train step's per-layer statistics
GRADIENTS_FILE = "input_gradients.json"  # ||d loss_t / d x_{t-k}|| at init and trained


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the study's size depends on: the full study or --quick."""

    mlp_config: str
    depth_arms: tuple[str, ...]  # of DEPTH_ARMS
    depth: int
    width: int
    depth_steps: int
    depth_rates: tuple[float, ...]
    explode_steps: int
    explode_rates: tuple[float, ...]  # the sweep; its largest is the "too large" rate
    explode_tuned: tuple[str, ...]  # the arms of part 2 tuned on that sweep (of EXPLODE_ARMS)
    clip: float
    seeds: tuple[int, ...]
    stats_every: int
    eval_every: int
    cells: tuple[str, ...]  # of CELLS
    rnn_config: str  # with {cell}
    rnn_steps: int
    rnn_rate: float
    rnn_splits: tuple[str, str]  # (train, evaluation)
    rnn_eval_batch_size: int
    windows: int  # evaluation windows the input gradients are averaged over
    positions: int  # loss positions t per window (the last ones)
    grid_extensions: int = common.MAX_GRID_EXTENSIONS  # rates a sweep may add past its grid


FULL = Settings(
    mlp_config="configs/fashion_mlp.py",
    depth_arms=tuple(DEPTH_ARMS),
    depth=20,
    width=128,
    depth_steps=600,
    depth_rates=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
    explode_steps=400,
    explode_rates=(0.01, 0.03, 0.1, 0.3, 1.0),
    explode_tuned=tuple(EXPLODE_ARMS),
    clip=1.0,
    seeds=(0, 1, 2),
    stats_every=50,
    eval_every=200,
    cells=CELLS,
    rnn_config="configs/shakespeare_{cell}.py:small",
    rnn_steps=150,
    rnn_rate=2e-3,
    rnn_splits=("train", "validation"),
    rnn_eval_batch_size=64,
    windows=16,
    positions=8,
)
# The tests' variant: each distinct program (a model, an optimizer, a learning rate, a seed's
# initialisation) costs seconds of compilation, so it keeps the fewest runs that still take every
# code path: two depth arms at one rate, one arm swept over two rates (part 2's plain SGD, whose
# too-large rate diverges within steps), one seed, and the simple RNN (the LSTM config with
# model.cell=rnn) next to the GRU (its own config).
QUICK = Settings(
    mlp_config="configs/digits_mlp.py",
    depth_arms=("sigmoid", "residual_layernorm"),
    depth=8,
    width=32,
    depth_steps=5,
    depth_rates=(0.1,),
    explode_steps=10,
    explode_rates=(0.1, 10.0),  # plain SGD at 10 is NaN by step 4 from seeds 0-2
    explode_tuned=("sgd",),
    clip=1.0,
    seeds=(0,),
    stats_every=1,
    eval_every=5,
    cells=("rnn", "gru"),
    rnn_config="configs/shakespeare_{cell}.py:test",
    rnn_steps=6,
    rnn_rate=2e-3,
    rnn_splits=("train[:2]", "validation[:1]"),
    rnn_eval_batch_size=256,
    windows=4,
    positions=4,
    grid_extensions=0,
)


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------
def mlp_protocol(settings: Settings, out: Path, part: str, base: dict) -> common.Protocol:
    return common.Protocol(
        config=settings.mlp_config,
        out=out / part,
        seeds=settings.seeds,
        base={
            "model.hidden": (settings.width,) * settings.depth,
            "model.dropout": 0.0,
            "optimizer.weight_decay": 0.0,
            "num_epochs": 0.0,
            "eval_every_epochs": 0.0,
            "checkpoint_every_epochs": 0.0,
            "log_every_steps": max(1, settings.stats_every // 5),
            "progress_bar": False,
            **base,
        },
        grid_extensions=settings.grid_extensions,
    )


def run_depth(settings: Settings, out: Path) -> dict[str, common.Arm]:
    """Momentum SGD with a short warmup and cosine decay, each arm at its best rate."""
    protocol = mlp_protocol(
        settings,
        out,
        "depth",
        {
            "train_steps": settings.depth_steps,
            "eval_every_steps": settings.eval_every,
            "checkpoint_every_steps": settings.depth_steps,
            "layer_stats_every_steps": settings.stats_every,
            "optimizer.name": "momentum",
            "optimizer.schedule": "warmup_cosine",
            "optimizer.warmup_steps": max(1, settings.depth_steps // 10),
        },
    )
    arms = {
        name: common.tune_and_repeat(protocol, name, DEPTH_ARMS[name], settings.depth_rates)
        for name in settings.depth_arms
    }
    for arm in arms.values():
        for run in arm.runs:
            init_layer_stats(run)
    return arms


def run_explode(settings: Settings, out: Path) -> tuple[dict[str, common.Arm], dict]:
    """Plain SGD at a constant rate, no warmup: each arm of `settings.explode_tuned` tuned on the
    grid, and both arms at the grid's largest rate from every seed."""
    protocol = mlp_protocol(
        settings,
        out,
        "explode",
        {
            "train_steps": settings.explode_steps,
            "eval_every_steps": settings.explode_steps,
            "checkpoint_every_steps": settings.explode_steps,
            "optimizer.name": "sgd",
            "optimizer.schedule": "constant",
            "optimizer.warmup_steps": 0,
        },
    )
    tuned, too_large = {}, {}
    for name, clipped in EXPLODE_ARMS.items():
        overrides = {"optimizer.clip_global_norm": settings.clip if clipped else 0.0}
        if name in settings.explode_tuned:
            tuned[name] = common.tune_and_repeat(protocol, name, overrides, settings.explode_rates)
        too_large[name] = common.tune_and_repeat(
            protocol, f"{name}_at_{max(settings.explode_rates):g}", overrides,
            [max(settings.explode_rates)],
        )  # fmt: skip
    return tuned, too_large


def run_sequence(settings: Settings, out: Path) -> dict[str, common.Arm]:
    train_split, eval_split = settings.rnn_splits
    protocol = common.Protocol(
        config="",  # per cell, below
        out=out / "sequence",
        seeds=settings.seeds,
        base={
            "model.num_layers": 1,  # x_{t-k} reaches loss_t through one recurrence
            "train_steps": settings.rnn_steps,
            "optimizer.warmup_steps": max(1, settings.rnn_steps // 10),
            "eval_every_steps": settings.rnn_steps,
            "checkpoint_every_steps": settings.rnn_steps,
            "decoding.num_samples": 0,
            "data.eval_batch_size": settings.rnn_eval_batch_size,
            "progress_bar": False,
        },
        metric="loss",
        higher_is_better=False,
        train_split=train_split,
        test_split=eval_split,
    )
    arms = {}
    for cell in settings.cells:
        config = settings.rnn_config.format(cell="lstm" if cell == "rnn" else cell)
        cell_protocol = dataclasses.replace(protocol, config=config)
        overrides = {"model.cell": cell} if cell == "rnn" else {}
        arms[cell] = common.tune_and_repeat(cell_protocol, cell, overrides, [settings.rnn_rate])
        for run in arms[cell].runs:
            input_gradients(run, settings.windows, settings.positions)
    return arms


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------
def _prepare(workdir: Path):
    from dlx.train import config as config_lib
    from dlx.train import loop

    config = config_lib.from_json(str(workdir / "config.json"))
    return config, loop.prepare_run(config, str(workdir), data_spec=loop.read_data_spec(workdir))


def init_layer_stats(workdir: Path) -> dict[str, float]:
    """The per-layer statistics of a run's first train step (its initial parameters and first
    batch): the run's own record when it logged every step, else computed as the runner computes
    them; cached in the workdir."""
    cached = workdir / INIT_STATS_FILE
    if cached.exists():
        return json.loads(cached.read_text())
    config = json.loads((workdir / "config.json").read_text())
    records = [r for r in common.read_run_metrics(workdir) if r["split"] == "layers"]
    if config["layer_stats_every_steps"] == 1 and records and records[0]["step"] == 1:
        stats = {k: v for k, v in records[0].items() if k not in ("step", "split")}
    else:
        stats = common.first_step_layer_stats(workdir)
    cached.write_text(json.dumps(stats))
    return stats


def logits_from_embeddings(model, params, tokens, embedded):
    """The language model's logits with its embedding layer's output replaced by `embedded`
    [B, T, E] (so that it can be differentiated), the rest of the model unchanged."""
    import flax.linen as nn

    def swap(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
            return embedded
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(swap):
        return model.apply({"params": params}, tokens)


def gradient_by_distance(model, tokens: np.ndarray, positions: int):
    """A function of the language model's params (compiled once for all the params it is given)
    that returns (g, leak): g[k] is the mean over windows and over the last `positions`
    positions t of ||d loss_t / d x_{t-k}||, k = 0 .. T - positions, where loss_t is the
    cross-entropy of the prediction at t and x_s the input embedding at s; tokens are [B, T + 1]
    windows. `leak` is the largest gradient with respect to any input after t: zero for a
    causal model."""
    import jax
    import jax.numpy as jnp
    import optax

    inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
    length = inputs.shape[1]
    times = jnp.arange(length - positions, length)

    @jax.jit
    def measure(params):
        embedded = params["embed"]["embedding"][inputs]
        logits, pullback = jax.vjp(
            lambda x: logits_from_embeddings(model, params, inputs, x), embedded
        )

        def grad_at(t):  # the loss at t summed over windows, which do not interact
            def loss_at_t(z):
                return optax.softmax_cross_entropy_with_integer_labels(z[:, t], targets[:, t]).sum()

            return pullback(jax.grad(loss_at_t)(logits))[0]

        norms = jnp.linalg.norm(jax.lax.map(grad_at, times), axis=-1)  # [P, B, T]
        distance = jnp.arange(length - positions + 1)
        source = times[:, None] - distance[None, :]  # [P, K]
        by_k = jnp.take_along_axis(norms, source[:, None, :], axis=2)  # [P, B, K]
        future = jnp.arange(length)[None, None, :] > times[:, None, None]
        return by_k.mean(axis=(0, 1)), jnp.max(jnp.where(future, norms, 0.0))

    def gradients(params) -> tuple[np.ndarray, float]:
        by_k, leak = measure(params)
        return np.asarray(by_k), float(leak)

    return gradients


def input_gradients(workdir: Path, windows: int, positions: int) -> dict:
    """{"init": [...], "trained": [...], "future": ...}: `gradient_by_distance` of the run's
    initial parameters (its seed's) and of its last checkpoint, on `windows` evaluation windows
    spread evenly over the evaluation split; cached in the workdir."""
    cached = workdir / GRADIENTS_FILE
    if cached.exists():
        return json.loads(cached.read_text())
    import jax

    from dlx.train import loop

    config, run = _prepare(workdir)
    source = run.task.source(config.data.eval_split, train=False)
    picks = np.linspace(0, len(source) - 1, windows).astype(int)
    tokens = np.stack([source[int(i)]["tokens"] for i in picks])
    result, measure = {}, gradient_by_distance(run.task.model, tokens, positions)
    states = {
        "init": lambda: loop.init_state(run),
        "trained": lambda: loop.restore_latest(run, str(workdir))[0],
    }
    for name, make_state in states.items():
        params = jax.device_get(make_state().params)
        by_k, leak = measure(params)
        result[name] = by_k.tolist()
        result[f"{name}_future"] = leak
    cached.write_text(json.dumps(result))
    return result


# ------------------------------------------------------------------------------------------------
# Reading and plotting
# ------------------------------------------------------------------------------------------------
def diverged(run: Path) -> bool:
    return (run / common.DIVERGED).exists()


def layer_norms(stats: dict, depth: int) -> np.ndarray:
    """The gradient norm of each hidden layer's kernel, first to last."""
    return np.array([stats.get(f"grad_norm/Dense_{i}/kernel", math.nan) for i in range(depth)])


def first_over_last(stats: dict, depth: int) -> float:
    """The first hidden layer's kernel gradient norm over the last one's (NaN if undefined)."""
    norms = layer_norms(stats, depth)
    return float(norms[0] / norms[-1]) if norms[-1] > 0 else math.nan


def last_layer_stats(run: Path) -> dict:
    layers = [r for r in common.read_run_metrics(run) if r["split"] == "layers"]
    return layers[-1] if layers else {}


def geometric(values: Sequence[float]) -> tuple[float, float]:
    """(geometric mean, geometric standard deviation factor) of the positive finite values."""
    logs = np.log10([v for v in values if math.isfinite(v) and v > 0])
    if not logs.size:
        return math.nan, math.nan
    return float(10 ** logs.mean()), float(10 ** (logs.std(ddof=1) if logs.size > 1 else 0.0))


def format_geometric(values: Sequence[float]) -> str:
    """ "3.1e-02 ×/÷ 1.4": geometric mean and spread factor over seeds."""
    mean, factor = geometric(values)
    return "—" if math.isnan(mean) else f"{mean:.1e} ×/÷ {factor:.2g}"


def format_distance(values: np.ndarray) -> str:
    """A gradient norm at one distance over seeds; exact zeros are float32 underflow (the norm
    fell below its smallest normal number, 1.2e-38, which XLA:CPU flushes to zero)."""
    zeros = int((values == 0).sum())
    if zeros == len(values):
        return "0 (underflow)"
    text = format_geometric(values)
    return text + (f" ({zeros} of {len(values)} underflow)" if zeros else "")


def log_band(ax, x, curves, label: str, **style) -> None:
    """The geometric mean of `curves` (one row per run, NaN where a run has no value) with a
    band of one standard deviation of log10: for quantities plotted on a log axis."""
    import warnings

    values = np.asarray(curves, dtype=float)
    logs = np.log10(np.where(values > 0, values, np.nan))  # a dead layer's 0 is left out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # steps no run reached
        mean, spread = np.nanmean(logs, axis=0), np.nanstd(logs, axis=0)
    (line,) = ax.plot(x, 10**mean, label=label, **style)
    ax.fill_between(
        x, 10 ** (mean - spread), 10 ** (mean + spread), color=line.get_color(), alpha=0.2, lw=0
    )


def stacked_series(runs: Sequence[Path], split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, [runs, steps] values) of `metric`; NaN after a run's last record."""
    curves = [common.series(run, split, metric) for run in runs]
    steps = max((c[0] for c in curves), key=len)
    values = np.full((len(curves), len(steps)), np.nan)
    for i, (_, v) in enumerate(curves):
        values[i, : len(v)] = v[: len(steps)]
    return steps, values


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def protocol_sentence(rates: Sequence[float], seeds: Sequence[int]) -> str:
    seeds_text = ", ".join(map(str, seeds))
    if len(rates) < 2:
        return f"Every arm at rate {rates[0]:g} (no sweep), seeds {seeds_text}, on the test split."
    return (
        f"Each arm takes the rate with the best validation accuracy among "
        f"{', '.join(f'{r:g}' for r in rates)} (trained on train[:90%], scored on train[90%:], "
        f"seed 0; a diverged run scores nothing), then trains from seeds {seeds_text} at that "
        f"rate, scored on the test split."
    )


def sweep_columns(rates: Sequence[float]) -> tuple[str, str]:
    """The validation-accuracy columns of a sweep (none for a single rate): (header, rule)."""
    if len(rates) < 2:
        return "", ""
    return "".join(f" val. acc. at {r:g} |" for r in rates), "---|" * len(rates)


def sweep_cells(arm: common.Arm, rates: Sequence[float]) -> str:
    if len(rates) < 2:
        return ""
    cells = ("-" if r not in arm.sweep else arm.sweep[r] for r in rates)
    return "".join(
        " diverged |" if s is None else f" {s} |" if s == "-" else f" {s:.2%} |" for s in cells
    )


# ------------------------------------------------------------------------------------------------
# Part reports: (lines, facts) with the facts the closing section states
# ------------------------------------------------------------------------------------------------
def report_depth(
    arms: dict[str, common.Arm], settings: Settings, report_dir: Path
) -> tuple[list[str], dict]:
    plt = _pyplot()
    depth = settings.depth
    first, last = "grad_norm/Dense_0/kernel", f"grad_norm/Dense_{depth - 1}/kernel"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    layers = np.arange(depth)
    ratios_init, ratios_end = {}, {}
    for color, (name, arm) in enumerate(arms.items()):
        style = dict(color=f"C{color}", marker="o", ms=3)
        init = [init_layer_stats(run) for run in arm.runs]
        end = [last_layer_stats(run) for run in arm.runs]
        log_band(axes[0], layers, [layer_norms(s, depth) for s in init], name, **style)
        log_band(axes[1], layers, [layer_norms(s, depth) for s in end], name, **style)
        ratios_init[name] = [first_over_last(s, depth) for s in init]
        ratios_end[name] = [first_over_last(s, depth) for s in end]
        for key, line in ((first, "-"), (last, "--")):
            steps, values = stacked_series(arm.runs, "layers", key)
            if not len(steps) or steps[0] != 1:  # the first step's record: the initial values
                steps = np.r_[1, steps]
                values = np.hstack([np.array([[s[key]] for s in init]), values])
            label = f"{name}, {'first' if key == first else 'last'} hidden layer"
            log_band(axes[2], steps, values, label, color=f"C{color}", ls=line)
    for ax, title in (
        (axes[0], "at initialisation (first train step)"),
        (axes[1], f"at the end ({settings.depth_steps} steps)"),
    ):
        ax.set(xlabel="hidden layer (0 = nearest the input)", ylabel="||dL/dW|| of the kernel")
        ax.set_title(title)
    axes[2].set(xlabel="step", ylabel="||dL/dW||", title="first and last hidden layer")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report_dir / "depth_gradients.png", dpi=110)
    plt.close(fig)

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, arm in arms.items():
        common.plot_band(ax_loss, arm.runs, "train", "loss", name)
        common.plot_band(ax_acc, arm.runs, "eval", "accuracy", name, marker="o", ms=3)
    ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
    ax_acc.set(xlabel="step", ylabel="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(report_dir / "depth_training.png", dpi=110)
    plt.close(fig)

    rates = common.swept_rates(arms.values()) or settings.depth_rates
    header, rule = sweep_columns(rates)
    batch = json.loads((arms["sigmoid"].runs[0] / "config.json").read_text())["data"]["batch_size"]
    lines = [
        "## 1. Vanishing gradients with depth",
        "",
        f"`{settings.mlp_config}` with {depth} hidden layers of {settings.width} units, no "
        f"dropout or weight decay; momentum SGD (0.9), warmup over the first "
        f"{max(1, settings.depth_steps // 10)} steps then cosine decay, "
        f"{settings.depth_steps} steps of batch {batch} for every run. "
        f"{protocol_sentence(rates, settings.seeds)} Gradient "
        f"norms are the runner's per-layer statistics (`layer_stats_every_steps="
        f"{settings.stats_every}`, `grad_norm/Dense_<i>/kernel`); those at initialisation are "
        f"the first train step's, computed the same way. Norms: geometric mean ×/÷ geometric "
        f"standard deviation over seeds.",
        "",
        f"| arm |{header} chosen rate | test accuracy | first / last layer ‖g‖ at init "
        f"| at the end |",
        f"|---|{rule}---|---|---|---|",
    ]
    for name, arm in arms.items():
        lines.append(
            f"| {name} |{sweep_cells(arm, rates)} {arm.learning_rate:g} | "
            f"{common.format_mean_spread(arm.final('accuracy'), True)} | "
            f"{format_geometric(ratios_init[name])} | {format_geometric(ratios_end[name])} |"
        )
    lines += [
        "",
        *common.grid_edge_note(arms.values()),
        "![per-layer gradient norms](depth_gradients.png)",
        "",
        "![training curves](depth_training.png)",
        "",
    ]
    return lines, {
        "ratios_init": ratios_init,
        "ratios_end": ratios_end,
        "accuracy": {name: arm.final("accuracy") for name, arm in arms.items()},
        "depth": depth,
    }


def first_nonfinite_step(run: Path) -> int | None:
    """For a diverged run, the first logged step after its last finite one (None otherwise)."""
    if not diverged(run):
        return None
    steps, _ = common.series(run, "train", "loss")
    config = json.loads((run / "config.json").read_text())
    return int(steps[-1] if len(steps) else 0) + config["log_every_steps"]


def report_explode(
    tuned: dict[str, common.Arm],
    too_large: dict[str, common.Arm],
    settings: Settings,
    report_dir: Path,
) -> tuple[list[str], dict]:
    plt = _pyplot()
    big = max(settings.explode_rates)
    fig, (ax_grad, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, arm in too_large.items():
        steps, norms = stacked_series(arm.runs, "train", "grad_norm")
        log_band(ax_grad, steps, norms, f"{name} (lr {big:g})")
        steps, loss = stacked_series(arm.runs, "train", "loss")
        log_band(ax_loss, steps, loss, f"{name} (lr {big:g})")
        for run in arm.runs:
            s, v = common.series(run, "train", "grad_norm")
            if diverged(run) and len(s):
                ax_grad.plot(s[-1], v[-1], "kx", ms=8)
    ax_grad.plot([], [], "kx", label="last log before NaN")
    ax_grad.set(xlabel="step", ylabel="global gradient norm (before clipping)", yscale="log")
    ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
    for ax in (ax_grad, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(report_dir / "explode_gradients.png", dpi=110)
    plt.close(fig)

    rates = common.swept_rates(tuned.values()) or settings.explode_rates
    header, rule = sweep_columns(rates)
    lines = [
        "## 2. Exploding updates and gradient clipping",
        "",
        f"The ReLU + He net of part 1 ({settings.depth} × {settings.width}) under plain SGD at a "
        f"constant rate, no warmup, {settings.explode_steps} steps; `sgd_clip` rescales the "
        f"gradient to global norm ≤ {settings.clip:g} (`optimizer.clip_global_norm`). A run "
        f"whose loss becomes NaN/Inf stops and is reported as diverged. "
        f"{protocol_sentence(rates, settings.seeds)}"
        + ("" if len(tuned) == len(EXPLODE_ARMS) else f" Tuned here: {', '.join(tuned)} only."),
        "",
        f"| arm |{header} chosen rate | test accuracy |",
        f"|---|{rule}---|---|",
    ]
    for name, arm in tuned.items():
        lines.append(
            f"| {name} |{sweep_cells(arm, rates)} {arm.learning_rate:g} | "
            f"{common.format_mean_spread(arm.final('accuracy'), True)} |"
        )
    lines += [
        "",
        *common.grid_edge_note(tuned.values()),
        f"Both at the grid's largest rate, {big:g}, from every seed (test split):",
        "",
        "| arm | diverged | NaN by step | largest logged ‖g‖ | test accuracy |",
        "|---|---|---|---|---|",
    ]
    facts = {"too_large": {}, "largest_stable": {}, "tuned": {}}
    for name, arm in too_large.items():
        failed = [first_nonfinite_step(run) for run in arm.runs if diverged(run)]
        peaks = [float(np.max(common.series(run, "train", "grad_norm")[1], initial=0.0))
                 for run in arm.runs]  # fmt: skip
        accuracy = arm.final("accuracy")
        lines.append(
            f"| {name} | {len(failed)} of {len(arm.runs)} | "
            f"{', '.join(map(str, failed)) or '—'} | {max(peaks):.3g} | "
            f"{common.format_mean_spread(accuracy, True)} |"
        )
        facts["too_large"][name] = {"diverged": len(failed), "runs": len(arm.runs),
                                    "accuracy": accuracy, "steps": failed}  # fmt: skip
    for name, arm in tuned.items():
        stable = [r for r in rates if arm.sweep.get(r) is not None]
        facts["largest_stable"][name] = max(stable) if stable else None
        facts["tuned"][name] = (arm.learning_rate, arm.final("accuracy"))
    lines += ["", "![gradient norms with and without clipping](explode_gradients.png)", ""]
    facts["rate"] = big
    return lines, facts


def report_sequence(
    arms: dict[str, common.Arm], settings: Settings, report_dir: Path
) -> tuple[list[str], dict]:
    plt = _pyplot()
    measured = {cell: [input_gradients(run, settings.windows, settings.positions)
                       for run in arm.runs] for cell, arm in arms.items()}  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, state in zip(axes, ("init", "trained")):
        for cell, results in measured.items():
            curves = [r[state] for r in results]
            log_band(ax, np.arange(len(curves[0])), curves, cell)
        title = "at initialisation" if state == "init" else f"after {settings.rnn_steps} steps"
        ax.set(xlabel="distance k (steps back)", title=title, yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("mean ‖d loss_t / d x_(t-k)‖")
    fig.tight_layout()
    fig.savefig(report_dir / "sequence_gradients.png", dpi=110)
    plt.close(fig)

    first = next(iter(measured.values()))[0]["init"]
    far = len(first) - 1
    distances = sorted({k for k in (0, 1, 2, 4, 8, 16, 32, 64) if k < far} | {far})
    config = json.loads((next(iter(arms.values())).runs[0] / "config.json").read_text())
    model, data = config["model"], config["data"]
    lines = [
        "## 3. Gradients through time: RNN, LSTM, GRU",
        "",
        f"`{settings.rnn_config.format(cell='lstm|gru')}` (the simple tanh RNN: the LSTM config "
        f"with `model.cell=rnn`) with one recurrent layer (`model.num_layers=1`) of "
        f"{model['hidden_dim']}, "
        f"embeddings of {model['embed_dim']}, windows of {data['seq_len']} characters, batch "
        f"{data['batch_size']}; AdamW at {settings.rnn_rate:g} with the config's clipping "
        f"(global norm {config['optimizer']['clip_global_norm']:g}), warmup "
        f"{max(1, settings.rnn_steps // 10)} steps then cosine decay, {settings.rnn_steps} steps "
        f"(one stated rate for every cell, not tuned), seeds {', '.join(map(str, settings.seeds))}. "
        f"On {settings.windows} windows spread over `{settings.rnn_splits[1]}`, the gradient of "
        f"the cross-entropy at each of the last {settings.positions} positions t with respect to "
        f"the input embedding at t − k (the model with its embedding output as the variable, "
        f"`jax.vjp`), its norm averaged over windows and positions; geometric mean ×/÷ "
        f"geometric standard deviation over seeds. Dropout off.",
        "",
        "| cell | parameters | val. loss after training | "
        + " | ".join(f"k = {k}" for k in distances)
        + f" | ‖g(k={far})‖ / ‖g(k=1)‖ |",
        "|---|---|---|" + "---|" * (len(distances) + 1),
    ]
    facts = {"far": far, "reach": {}, "per_step": {}, "underflow": {}, "cells": tuple(arms)}
    for cell, results in measured.items():
        for state in ("init", "trained"):
            curves = np.array([r[state] for r in results])
            reach = curves[:, far] / curves[:, 1]
            facts["reach"][(cell, state)] = geometric(reach)[0]  # read only without underflow
            # The mean decay per step: a log-linear fit over k = 1 .. the last distance at which
            # no seed's gradient has underflowed to 0.
            underflowed = np.flatnonzero(~(curves[:, 1:] > 0).all(0))
            last = far if not underflowed.size else int(underflowed[0])
            ks = np.arange(1, last + 1)
            slope = np.polyfit(ks, np.log10(curves[:, ks]).mean(0), 1)[0]
            facts["per_step"][(cell, state)] = 10**slope
            facts["underflow"][(cell, state)] = None if last == far else last + 1
            lines.append(
                f"| {cell} ({'init' if state == 'init' else 'trained'}) | "
                f"{parameter_count(arms[cell].runs[0]) / 1e6:.2f} M | "
                + (
                    common.format_mean_spread(arms[cell].final("loss"), digits=3)
                    if state == "trained"
                    else "—"
                )
                + " | "
                + " | ".join(format_distance(curves[:, k]) for k in distances)
                + f" | {format_distance(reach)} |"
            )
    leak = max(
        r[f"{s}_future"] for rs in measured.values() for r in rs for s in ("init", "trained")
    )
    lines += [
        "",
        f"Check: the largest gradient of any loss_t with respect to an input after t is {leak:.1e} "
        f"(the models are causal).",
        "",
        "![gradient norm against distance](sequence_gradients.png)",
        "",
    ]
    facts["leak"] = leak
    return lines, facts


def parameter_count(workdir: Path) -> int:
    summary = workdir / "summary.json"
    return json.loads(summary.read_text())["num_params"] if summary.exists() else 0


# ------------------------------------------------------------------------------------------------
# What we expected / what we measured
# ------------------------------------------------------------------------------------------------
def _orders(ratio: float) -> str:
    """ "2.1e-06 (5.7 orders of magnitude below)"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return "not measured"
    decades = math.log10(ratio)
    side = "below" if decades < 0 else "above"
    return f"{ratio:.2g} ({abs(decades):.1f} orders of magnitude {side})"


def conclude_depth(facts: dict) -> list[str]:
    ratio = {name: geometric(v)[0] for name, v in facts["ratios_init"].items()}
    ratio_end = {name: geometric(v)[0] for name, v in facts["ratios_end"].items()}
    sigmoid, others = ratio["sigmoid"], [n for n in ratio if n != "sigmoid"]
    per_layer = sigmoid ** (1 / (facts["depth"] - 1)) if sigmoid > 0 else math.nan
    level = [n for n in others if 0.1 <= ratio[n] <= 10]
    accuracy = {n: common.mean_spread(v)[0] for n, v in facts["accuracy"].items()}
    ranked = sorted(accuracy, key=lambda n: -accuracy[n] if math.isfinite(accuracy[n]) else 1)
    expected_order = [n for n in ("residual_layernorm", "relu_he", "sigmoid") if n in accuracy]
    lines = [
        "**Depth.** Expected: the sigmoid net's gradient shrinks layer by layer toward the input "
        "(σ′ ≤ 1/4 at every layer), so its first layer's gradient is orders of magnitude below its "
        "last layer's; He-initialised ReLU layers keep the gradient roughly level, and residual "
        "connections with normalisation keep it level; the sigmoid net trains worst.",
        "",
        f"Measured, first over last hidden layer's gradient norm at initialisation: sigmoid "
        f"{_orders(sigmoid)}, a factor {per_layer:.2f} per layer; "
        + "; ".join(f"{n} {_orders(ratio[n])}" for n in others)
        + ". "
        + (
            "The sigmoid net's gradient vanishes toward the input, as expected"
            if sigmoid < 1e-2
            else "The sigmoid net's gradient does not vanish by even two orders of magnitude, "
            "unlike the textbook picture"
        )
        + (
            f"; {' and '.join(level)} stay within one order of magnitude."
            if len(level) == len(others)
            else f"; {', '.join(n for n in others if n not in level)} do(es) not stay within one "
            f"order of magnitude."
        )
        + f" At the end of training the sigmoid net's ratio is {_orders(ratio_end['sigmoid'])}.",
        "",
        "Test accuracy ranks "
        + " > ".join(
            f"{n} ({common.format_mean_spread(facts['accuracy'][n], True, 1)})" for n in ranked
        )
        + (
            ", the expected order."
            if ranked == expected_order
            else f", not the expected order ({' > '.join(expected_order)})."
        ),
        "",
    ]
    return lines


def conclude_explode(facts: dict) -> list[str]:
    rate = facts["rate"]
    big = facts["too_large"]
    plain, clipped = big["sgd"], big["sgd_clip"]
    mean_clipped = common.mean_spread(clipped["accuracy"])[0]
    stable = facts["largest_stable"]
    rescued = plain["diverged"] > clipped["diverged"]
    tuned = facts["tuned"]
    return [
        "**Exploding updates.** Expected: at too large a rate each SGD step overshoots into a "
        "region of larger gradients, which make the next step larger still, until the loss is "
        "NaN; clipping caps every step (‖Δθ‖ ≤ rate × threshold), so the same rate stays finite, "
        "though it need not train as well as a well-chosen rate.",
        "",
        f"Measured at rate {rate:g}: without clipping {plain['diverged']} of {plain['runs']} runs "
        f"diverged"
        + (f" (NaN by step {', '.join(map(str, plain['steps']))})" if plain["steps"] else "")
        + f"; with clipping {clipped['diverged']} of {clipped['runs']}"
        + (f", reaching {mean_clipped:.1%} test accuracy" if math.isfinite(mean_clipped) else "")
        + ". "
        + (
            "Clipping rescued the too-large rate."
            if rescued
            else "Clipping did not change whether runs diverged at this rate."
        )
        + " In the sweep the largest rate that stayed finite was "
        + ", ".join(f"{n}: {stable[n]:g}" if stable[n] else f"{n}: none" for n in stable)
        + "; at their own best rates "
        + ", ".join(
            f"{n} ({r:g}) reached {common.format_mean_spread(acc, True)}"
            for n, (r, acc) in tuned.items()
        )
        + ".",
        "",
    ]


def conclude_sequence(facts: dict) -> list[str]:
    far, reach, per_step, cells = facts["far"], facts["reach"], facts["per_step"], facts["cells"]
    lines = [
        "**Through time.** Expected: a simple RNN's gradient is a product of one Jacobian "
        "(W_hhᵀ diag(1 − h²)) per step, so it decays geometrically with the distance k and "
        "vanishes fastest; the LSTM's and GRU's gated, additive state updates carry more of it "
        "over long distances, particularly once trained.",
        "",
    ]

    def reached(cell: str, state: str) -> str:
        underflow = facts["underflow"][(cell, state)]
        if underflow is not None:
            return f"below float32's range (0) from k = {underflow}"
        return f"‖g(k={far})‖ / ‖g(k=1)‖ = {reach[(cell, state)]:.1e}"

    # Ranked by the fitted decay per step: a gradient that underflowed to 0 has no ratio to rank.
    for state, when in (("init", "At initialisation"), ("trained", "After training")):
        order = sorted(cells, key=lambda c: per_step[(c, state)])
        lines.append(
            f"{when} the gradient shrinks per step of distance by "
            + ", ".join(
                f"×{per_step[(c, state)]:.3f} for the {c} ({reached(c, state)})" for c in cells
            )
            + f": the {order[0]}'s fades fastest"
            + (
                ", as expected."
                if order[0] == "rnn"
                else f", not the simple RNN's (the {order[-1]}'s carries furthest)."
            )
        )
        lines.append("")
    return lines


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def runs_wall_time(out: Path) -> float:
    """The training wall time of every finished run of the study (diverged runs excluded)."""
    return sum(
        json.loads(path.read_text()).get("wall_time_s", 0.0)
        for path in out.glob("*/*/*/summary.json")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny runs, for the tests")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", default="runs/experiments/gradients")
    parser.add_argument("--report_dir", default="experiments/results/gradients")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    out, report_dir = Path(args.out), Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    common.use_compilation_cache(out)

    sections, conclusions = [], []
    if "depth" in args.parts:
        part_lines, facts = report_depth(run_depth(settings, out), settings, report_dir)
        sections += part_lines
        conclusions += conclude_depth(facts)
    if "explode" in args.parts:
        part_lines, facts = report_explode(*run_explode(settings, out), settings, report_dir)
        sections += part_lines
        conclusions += conclude_explode(facts)
    if "sequence" in args.parts:
        part_lines, facts = report_sequence(run_sequence(settings, out), settings, report_dir)
        sections += part_lines
        conclusions += conclude_sequence(facts)

    elapsed = time.time() - started
    lines = [
        "# Vanishing and exploding gradients" + (" (--quick: tiny runs)" if args.quick else ""),
        "",
        "Every run is an ordinary `launch.py` run (its workdir reproduces and resumes it); "
        "diverged runs (a NaN/Inf loss) are results, not errors. Tables give the mean ± "
        "standard deviation over seeds, figures a band of one standard deviation (for quantities "
        "on a log axis, of log10).",
        "",
        *sections,
        "## What we expected / what we measured",
        "",
        *conclusions,
        "## Budget",
        "",
        f"The study's finished runs trained for {runs_wall_time(out) / 60:.1f} min in all (their "
        f"own wall times; start-up, runs that diverged and the measurements come on top), on "
        f"{_machine()}. This invocation took {elapsed / 60:.1f} min (a re-run skips finished "
        f"runs).",
        "",
    ]
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/gradients.py", *given])
    report = common.write_report(report_dir, lines, f"{args.out}/<part>/<arm>/<run>", command)
    print(f"Report: {report}")


def _machine() -> str:
    import os

    return f"{os.cpu_count()} CPU cores"


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
