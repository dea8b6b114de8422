"""Study: positional encodings (learned, sinusoidal, RoPE, none) in a small GPT-style decoder, on a
task where order matters, trained on strings of L tokens and scored on strings of 2L.

    python experiments/positions.py [--train_len 32] [--steps 500] [--seeds 0 1 2] \
        [--out runs/experiments/positions] [--report_dir experiments/results/positions]

The task is `token_lag` (dlx/tasks/token_lag.py, `configs/token_lag.py`): at every position,
predict the token `lag` positions back in a string of random tokens, drawn afresh every step.
The arms differ only in the model field `position`. Each arm's learning rate is the best of a
grid by the validation loss over the trained positions (validation strings of 2L tokens, seed 0);
then it trains from each seed and is scored on the test strings (experiments/common.py,
`tune_and_repeat`). The causal decoder's position t sees tokens 0..t only, so the first L
positions of a 2L string score what strings of at most L tokens would, and positions L..2L-1 are
the length generalisation. Learned positions get a table of 2L rows, of which rows L..2L-1 are
never trained (zero gradient, no weight decay: they keep their random initial values).

Figures: `similarity.png` (cosine similarity between the encodings of positions i and j for
sinusoidal and, after training, learned positions; RoPE's score of one fixed query/key pair
rotated to positions m and n, as a function of m - n) and `length_generalisation.png` (test
accuracy at each position, mean ± std over seeds, and the train loss). `--quick` is the test
suite's version (the `:test` config, strings of 8, 40 steps with one eval at the end, learned
positions only (`--only` adds arms), two rates, seed 0 only).
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

POSITIONS = ("learned", "sinusoidal", "rope", "none")
GRID = (3e-4, 1e-3, 3e-3)
QUICK_GRID = (1e-3, 3e-3)
QUICK_POSITIONS = ("learned",)  # the arm with a trained table to show
ROPE_STARTS = (0, 100)  # two absolute positions of the query: RoPE's score depends on m - n only


# ---------------------------------------------------------------------------------------------
# The encodings themselves (no training)
# ---------------------------------------------------------------------------------------------
def cosine_similarity(table: np.ndarray) -> np.ndarray:
    """[P, D] encodings -> [P, P] cosine similarity of every pair of positions."""
    table = np.asarray(table, np.float64)
    unit = table / np.maximum(np.linalg.norm(table, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T


def sinusoidal_table(length: int, features: int) -> np.ndarray:
    from dlx.layers.positional import sinusoidal

    return np.asarray(sinusoidal(np.arange(length)[None], features)[0])


def rope_scores(head_dim: int, offsets: np.ndarray, start: int, seed: int = 0) -> dict:
    """RoPE's q.k of a fixed query at position `start` + offset and a fixed key at `start`, for
    q = k = all ones (the pair whose score shows RoPE's decay with distance) and for a random
    Gaussian pair: {"ones": [len(offsets)], "random": [...]}."""
    import jax.numpy as jnp

    from dlx.layers.positional import rotary

    rng = np.random.default_rng(seed)
    pairs = {
        "ones": (np.ones(head_dim), np.ones(head_dim)),
        "random": (rng.normal(size=head_dim), rng.normal(size=head_dim)),
    }

    def rotated(vector: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """`vector` rotated to each of `positions`: [len(positions), head_dim]."""
        x = jnp.broadcast_to(jnp.asarray(vector, jnp.float32), (1, len(positions), 1, head_dim))
        return np.asarray(rotary(x, jnp.asarray(positions)[None]))[0, :, 0]

    return {
        name: (rotated(query, start + offsets) * rotated(key, np.full(len(offsets), start))).sum(-1)
        for name, (query, key) in pairs.items()
    }


def learned_table(workdir: Path) -> np.ndarray:
    """The trained position table [max_len, embed] of a run with position="learned"."""
    import jax

    from dlx import inference

    params = inference.load(str(workdir)).state.params
    return np.asarray(jax.device_get(params["wpe"]["embedding"]))


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
def protocol(args) -> common.Protocol:
    eval_len = 2 * args.train_len
    base = {
        "lag.train_len": args.train_len,
        "lag.eval_len": eval_len,
        "model.max_len": eval_len,
        "train_steps": args.steps,
        "num_epochs": 0.0,
        "eval_every_steps": args.steps if args.quick else max(1, args.steps // 2),
        "checkpoint_every_steps": args.steps,
        "log_every_steps": max(1, args.steps // 30),
        "progress_bar": False,
    }
    return common.Protocol.from_args(
        args,
        base,
        metric="loss",  # over the trained positions; accuracy saturates at 1.0 for most arms
        higher_is_better=False,
    )


def position_accuracy(workdir: Path) -> dict | None:
    path = workdir / "plots" / "position_accuracy.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def similarity_figure(args, config: dict, learned: np.ndarray | None, out: Path) -> dict:
    """similarity.png; returns the numbers the report quotes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = config["model"]
    train_len, eval_len = args.train_len, 2 * args.train_len
    head_dim = model["embed_dim"] // model["num_heads"]
    sinusoidal = cosine_similarity(sinusoidal_table(eval_len, model["embed_dim"]))
    offsets = np.arange(-eval_len + 1, eval_len)
    rope = [rope_scores(head_dim, offsets, start) for start in ROPE_STARTS]

    panels = 3 if learned is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.2), layout="constrained")
    image = axes[0].imshow(sinusoidal, cmap="RdBu_r", vmin=-1, vmax=1)
    axes[0].set_title(f"sinusoidal, d={model['embed_dim']}: cos(PE_i, PE_j)", fontsize=9)
    if learned is not None:
        similarity = cosine_similarity(learned[:eval_len])
        axes[1].imshow(similarity, cmap="RdBu_r", vmin=-1, vmax=1)
        axes[1].set_title("learned (seed 0, after training): cos(P_i, P_j)", fontsize=9)
        for line in (axes[1].axhline, axes[1].axvline):
            line(train_len - 0.5, color="k", lw=0.8, ls="--")
        axes[1].text(
            eval_len - 1, train_len + 1, f"rows >= {train_len}\nnever trained", fontsize=7,
            ha="right", va="top",
        )  # fmt: skip
    for ax in axes[: panels - 1]:
        ax.set_xlabel("position j")
        ax.set_ylabel("position i")
    fig.colorbar(image, ax=axes[panels - 2], fraction=0.046)
    ax = axes[-1]
    for start, scores in zip(ROPE_STARTS, rope):
        first = start == ROPE_STARTS[0]
        for name in scores:  # the second start drawn dotted over the first: the same curve
            ax.plot(
                offsets,
                scores[name],
                "-" if first else ":",
                lw=1.2 if first else 2.0,
                label=f"q, k = {name}, key at position {start}",
            )
    ax.set_xlabel("offset m - n (query at m, key at n)")
    ax.set_ylabel("RoPE score q_m . k_n")
    ax.set_title(f"RoPE, head_dim={head_dim}: a fixed pair vs offset", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(out / "similarity.png", dpi=110)
    plt.close(fig)

    numbers = {
        "sinusoidal_diagonal_is_max": bool(
            np.all(np.argmax(sinusoidal, axis=1) == np.arange(eval_len))
        ),
        "sinusoidal_offset_1": float(np.diagonal(sinusoidal, 1).mean()),
        "sinusoidal_offset_L": float(np.diagonal(sinusoidal, train_len).mean()),
        "rope_start_difference": float(
            max(np.abs(rope[0][k] - rope[1][k]).max() / np.abs(rope[0][k]).max() for k in rope[0])
        ),
        "rope_ones_at_0": float(rope[0]["ones"][eval_len - 1]),
        "rope_ones_at_L": float(rope[0]["ones"][eval_len - 1 + train_len]),
    }
    if learned is not None:
        similarity = cosine_similarity(learned[:eval_len])
        neighbours = np.diagonal(similarity, 1)
        numbers["learned_neighbours_trained"] = float(neighbours[: train_len - 1].mean())
        numbers["learned_neighbours_untrained"] = float(neighbours[train_len:].mean())
    return numbers


def generalisation_figure(arms: dict[str, common.Arm], args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_pos, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    chance = None
    for name, arm in arms.items():
        records = [r for r in map(position_accuracy, arm.runs) if r]
        if not records:
            continue
        chance = records[0]["chance"]
        positions = np.array(records[0]["positions"])
        curves = np.array([r["accuracy"] for r in records])
        mean, spread = curves.mean(0), curves.std(0)
        (line,) = ax_pos.plot(positions, mean, label=name)
        ax_pos.fill_between(
            positions, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0
        )
        common.plot_band(ax_loss, arm.runs, "train", "loss", name, lw=1)
    ax_pos.axvline(args.train_len - 0.5, color="k", ls="--", lw=0.8, label="trained length L")
    if chance is not None:
        ax_pos.axhline(chance, color="gray", ls=":", lw=1, label="chance")
    ax_pos.set_xlabel("position in a test string of 2L tokens")
    ax_pos.set_ylabel("test accuracy (mean ± std over seeds)")
    ax_pos.set_ylim(-0.02, 1.02)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss (mean ± std over seeds)")
    ax_loss.set_yscale("log")
    for ax in (ax_pos, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "length_generalisation.png", dpi=110)
    plt.close(fig)


def findings(arms: dict[str, common.Arm], chance: float, numbers: dict, train_len: int) -> list:
    """The expected/measured section, every sentence from the numbers."""
    inside = {n: common.mean_spread(a.final("accuracy")) for n, a in arms.items()}
    beyond = {n: common.mean_spread(a.final("accuracy_long")) for n, a in arms.items()}
    lines = [
        "## What we expected / what we measured",
        "",
        "Expected: every encoding but none solves the task on the trained length; beyond it, "
        "RoPE (which scores a query/key pair by their offset alone) keeps its accuracy, learned "
        "positions fail (their rows beyond L were never trained), sinusoidal lies in between "
        "(its encodings exist at every position, but the network never saw those beyond L), and "
        "without positions a causal decoder can at best count tokens through its mask, which "
        "does not single out the token exactly `lag` back.",
        "",
        "Measured:",
        "",
    ]

    def near_chance(mean: float, spread: float) -> bool:
        return mean - chance <= max(2 * spread, 0.05)

    for name in arms:
        (mean_in, spread_in), (mean_out, spread_out) = inside[name], beyond[name]
        if np.isnan(mean_in):
            lines.append(f"- {name}: every seed diverged.")
            continue
        kept = mean_out / mean_in if mean_in > 0 else float("nan")
        where = (
            "at chance"
            if near_chance(mean_out, spread_out)
            else f"{kept:.0%} of its in-range accuracy"
        )
        solved = (
            "solves the trained length"
            if mean_in >= 0.99
            else (
                "does not learn the task even on the trained length"
                if near_chance(mean_in, spread_in)
                else "learns the trained length only in part"
            )
        )
        lines.append(
            f"- {name} {solved} ({mean_in:.1%} ± {spread_in:.1%} on positions < {train_len}); "
            f"beyond it {mean_out:.1%} ± {spread_out:.1%}: {where} (chance {chance:.1%})."
        )
    ranked = sorted((n for n in arms if not np.isnan(beyond[n][0])), key=lambda n: -beyond[n][0])
    if ranked:
        lines += ["", f"Ranked by accuracy beyond L: {', '.join(ranked)}."]
    lines += [
        "",
        f"The encodings: sinusoidal similarity is largest on the diagonal "
        f"({'at every position' if numbers['sinusoidal_diagonal_is_max'] else 'NOT everywhere'}"
        f") and falls from {numbers['sinusoidal_offset_1']:.2f} at offset 1 to "
        f"{numbers['sinusoidal_offset_L']:.2f} at offset {train_len}. RoPE's score of a fixed "
        f"pair depends on the offset alone (the curves for keys at positions "
        f"{ROPE_STARTS[0]} and {ROPE_STARTS[1]} differ by "
        f"{numbers['rope_start_difference']:.1e} of their range); for q = k = ones it falls "
        f"from {numbers['rope_ones_at_0']:.1f} at offset 0 to {numbers['rope_ones_at_L']:.1f} "
        f"at offset {train_len}.",
    ]
    if "learned_neighbours_trained" in numbers:
        lines += [
            "",
            f"Learned rows: neighbouring trained rows have cosine similarity "
            f"{numbers['learned_neighbours_trained']:.2f} on average, neighbouring untrained rows "
            f"(beyond L) {numbers['learned_neighbours_untrained']:.2f}: the untrained ones are "
            "still their random initial values.",
        ]
    return lines + [""]


def report(arms: dict[str, common.Arm], args, command: str) -> Path:
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(arms.values())).runs[0]
    config = json.loads((first / "config.json").read_text())
    learned = None
    if "learned" in arms and (arms["learned"].runs[0] / "summary.json").exists():
        learned = learned_table(arms["learned"].runs[0])
    numbers = similarity_figure(args, config, learned, out)
    generalisation_figure(arms, args, out)
    lag, model = config["lag"], config["model"]
    chance = 1.0 / lag["symbols"]
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        "# Positional encodings: similarity and length generalisation",
        "",
        f"Task `token_lag` (`{args.config}`): strings of random tokens ({lag['symbols']} "
        f"symbols, chance {chance:.1%}); at every position t >= {lag['lag']} predict the token "
        f"{lag['lag']} positions back. Trained on fresh strings of L = {args.train_len} tokens "
        f"every step, scored on {lag['eval_examples']} fixed strings of 2L = "
        f"{2 * args.train_len}. Model: `transformer` decoder, {model['num_layers']} layers, "
        f"{model['embed_dim']} wide, {model['num_heads']} heads (causal), "
        f"{config['train_steps']} steps of batch {config['data']['batch_size']}, "
        f"{config['optimizer']['name']} with warm-up cosine, no weight decay. The arms differ "
        f"only in `model.position`. Each arm's learning rate is the best of its grid by the "
        f"validation loss on positions < L (seed {args.seeds[0]}); the table is the test split "
        f"over seeds {seeds} at that rate (mean ± sample std). Accuracy on positions < L of a "
        f"2L string equals the accuracy on strings of at most L (the decoder is causal). "
        f"Learned positions have {2 * args.train_len} rows; rows {args.train_len}.."
        f"{2 * args.train_len - 1} are never trained. Whole study: "
        f"{common.training_minutes(arms.values()):.1f} min of training (the runs' wall time) on "
        "this machine.",
        "",
        "| position | learning-rate grid (validation loss) | chosen | test accuracy, positions "
        "< L | test accuracy, positions L..2L-1 | whole 2L string |",
        "|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        grid = ", ".join(
            f"{rate:g} ({score:.4f})" if score is not None else f"{rate:g} (diverged)"
            for rate, score in arm.sweep.items()
        )
        lines.append(
            f"| {name} | {grid or '-'} | {arm.learning_rate:g} | "
            f"{common.format_mean_spread(arm.final('accuracy'), percent=True, digits=1)} | "
            f"{common.format_mean_spread(arm.final('accuracy_long'), percent=True, digits=1)} | "
            f"{common.format_mean_spread(arm.final('accuracy_all'), percent=True, digits=1)} |"
        )
    lines += sweep_beyond_l(arms, Path(args.out), args.seeds[0])
    lines += [
        "",
        "![similarity of positional encodings](similarity.png)",
        "",
        "![test accuracy by position and train loss](length_generalisation.png)",
        "",
    ]
    lines += findings(arms, chance, numbers, args.train_len)
    lines += common.grid_edge_note(arms.values())
    return common.write_report(out, lines, f"{args.out}/<position>/<lr_r|seed_s>", command)


def sweep_beyond_l(arms: dict[str, common.Arm], out: Path, seed: int) -> list[str]:
    """The accuracy beyond L of every sweep run: the sweep chooses by the loss on positions < L,
    which keeps falling with the rate once an encoding solves the task, so this table shows how
    much the length generalisation depends on the rate the sweep could not tell apart."""
    rates = common.swept_rates(arms.values())
    if len(rates) < 2:
        return []
    lines = [
        "",
        f"Accuracy on positions L..2L-1 at every rate of the sweep (seed {seed}, the validation "
        "strings; `-`: not trained): the sweep chooses by the loss on positions < L, which keeps "
        "falling as the rate grows once an encoding solves the task, while the accuracy beyond L "
        "moves with the rate.",
        "",
        "| position | " + " | ".join(f"lr {r:g}" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for name, arm in arms.items():
        cells = []
        for rate in rates:
            beyond = common.final_eval(out / name / f"lr_{rate:g}").get("accuracy_long")
            cells.append(
                "-" if rate not in arm.sweep else "diverged" if beyond is None else f"{beyond:.1%}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/token_lag.py")
    parser.add_argument("--train_len", type=int, default=32, help="L; scored at 2L")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", choices=POSITIONS, help="arms (default: all)")
    parser.add_argument("--out", default="runs/experiments/positions")
    parser.add_argument("--report_dir", default="experiments/results/positions")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the :test config, L=8, 40 steps, learned positions, two rates, seed 0",
    )
    args = parser.parse_args(argv)
    grid = GRID
    if args.quick:
        args.config, args.train_len, args.steps = "configs/token_lag.py:test", 8, 40
        # One seed: the runs differ from the sweep's best only in the eval split, so the
        # seed-0 run compiles nothing new (a second seed would compile its own init).
        args.seeds, args.only = [0], args.only or list(QUICK_POSITIONS)
        grid = QUICK_GRID
    args.only = args.only or list(POSITIONS)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    common.use_compilation_cache(Path(args.out))
    arms = {
        name: common.tune_and_repeat(protocol(args), name, {"model.position": name}, grid)
        for name in args.only
    }
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/positions.py", *given])
    path = report(arms, args, command)
    print(f"Report: {path}")
    return path


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
