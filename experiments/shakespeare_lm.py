"""Study: character-level language models on Shakespeare: GPT, LSTM and GRU at equal steps.

    python experiments/shakespeare_lm.py [--variant small] [--out runs/experiments/shakespeare_lm]

Each model is one ordinary `launch.py` run of `configs/shakespeare_<model>.py:<variant>` (same
data, windows, batch, schedule and step budget; see configs/_shakespeare.py), so any of them can
be resumed, sampled or reproduced from its workdir. Re-running skips finished runs and rewrites
`report.md` and `validation_loss.png` in --out: validation loss (nats/char) against steps and
against training time, and the last text sample of each model.
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

MODELS = ("gpt", "lstm", "gru")
# What each variant's eval split holds (the works in record order).
VALIDATION_WORKS = {
    "validation": "Macbeth, King Richard II, the Sonnets and Twelfth Night",
    "validation[:1]": "Macbeth",
}
SAMPLE_CHARS = 400  # of each model's last sample shown in the report


def parameter_count(workdir: Path) -> int:
    """The run's parameters, from its saved config (and tokenizer) alone."""
    from dlx.train import config as config_lib
    from dlx.train import loop

    run = loop.prepare_run(config_lib.from_json(str(workdir / "config.json")), str(workdir))
    return run.task.num_params(run.abstract_state)


def last_sample(workdir: Path) -> str:
    samples = sorted((workdir / "samples").glob("step_*.txt"))
    if not samples:
        return ""
    text = samples[-1].read_text()
    first = text.split("=== sample 1")[0]  # the first of the samples written at that eval
    body = first.split("===\n", 1)[-1]
    return body[:SAMPLE_CHARS].rstrip()


def report(workdirs: dict[str, Path], args, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    rows, samples = [], {}
    for name, workdir in workdirs.items():
        records = read_metrics(str(workdir / "metrics.jsonl"))
        summary = json.loads((workdir / "summary.json").read_text())
        seconds = common.training_seconds(records)
        evals = [r for r in records if r["split"] == "eval"]
        steps = [r["step"] for r in evals]
        losses = [r["loss"] for r in evals]
        ax_steps.plot(steps, losses, marker="o", ms=3, label=name)
        ax_time.plot([seconds[s] / 60 for s in steps], losses, marker="o", ms=3, label=name)
        final = summary["final_eval"]
        rows.append(
            (
                name,
                parameter_count(workdir),
                summary["steps"],
                final["loss"],
                final["bits_per_char"],
                min(losses),
                seconds[steps[-1]],
                summary["train_steps_per_sec"],
            )
        )
        samples[name] = last_sample(workdir)
    for ax, xlabel in ((ax_steps, "step"), (ax_time, "training time (min, evals excluded)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "validation_loss.png", dpi=110)
    plt.close(fig)

    config = json.loads((next(iter(workdirs.values())) / "config.json").read_text())
    data = config["data"]
    lines = [
        f"# Character-level language models on Shakespeare (`:{args.variant}` configs)",
        "",
        f"Windows of {data['seq_len']} characters, global batch {data['batch_size']}, "
        f"{config['train_steps']} steps, AdamW with warmup and cosine decay "
        f"(`configs/_shakespeare.py`); validation = {VALIDATION_WORKS[data['eval_split']]}, "
        f"scored in non-overlapping windows.",
        "",
        "| model | parameters | steps | final val loss (nats/char) | bits/char | best val loss "
        "| training time (s) | steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, params, steps, loss, bpc, best, seconds, rate in rows:
        lines.append(
            f"| {name} | {params / 1e6:.2f} M | {steps} | {loss:.4f} | {bpc:.3f} | {best:.4f} | "
            f"{seconds:.0f} | {rate:.2f} |"
        )
    lines += [
        "",
        "![validation loss](validation_loss.png)",
        "",
        "Training time is the sum of the logged training windows (compilation included, "
        "evaluation and sampling excluded), on the machine and load the runs had.",
        "",
    ]
    for name, sample in samples.items():
        lines += [
            f"Last sample of `{name}` (temperature {config['decoding']['temperature']}):",
            "",
            "```",
            sample,
            "```",
            "",
        ]
    return common.write_report(out, lines, f"{args.out}/<model>", command)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant",
        default="small",
        help="config variant: small, test, or '' for the full (nanoGPT-sized) configs",
    )
    parser.add_argument("--out", default="runs/experiments/shakespeare_lm")
    parser.add_argument("--only", nargs="*", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    suffix = f":{args.variant}" if args.variant else ""
    workdirs = {
        name: common.launch_run(
            f"configs/shakespeare_{name}.py{suffix}",
            Path(args.out) / name,
            {"progress_bar": False},
            label=name,
        )
        for name in args.only
    }
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/shakespeare_lm.py", *given])
    print(f"Report: {report(workdirs, args, command)}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
