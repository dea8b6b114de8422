"""What every study shares: its runs are ordinary `launch.py` runs (resumable, reproducible from
their workdir like any other), trained one after another in the study's own process (one start-up
and one compilation cache for them all), and it reads them back from their metrics.jsonl.

The protocol a reviewer asks for (`tune_and_repeat`): each arm of a study gets its own learning
rate, the best of a stated grid on a validation split held out of the training set (seed 0), and
is then trained with that rate from several seeds and scored on the test split; tables give the
mean and spread over seeds (`mean_spread`), figures a band (`plot_band`)."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def use_compilation_cache(out: Path) -> None:
    """Keeps compiled programs in out/.jax_cache unless a cache is configured already (the test
    suite sets its own): a study's runs repeat the same programs (its seeds share the train
    step, every run of a model the eval step), and on these CPUs a compile takes seconds."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(out) / ".jax_cache"))


def launch_run(config: str, workdir: Path, overrides: dict, label: str) -> Path:
    """Runs (or resumes, or finds finished) `launch.py --config config --workdir workdir` with
    `--config.key=value` for each override, in this process; exits as launch.py does if the run
    fails (code 2 for bad input, 1 for a loss that became NaN)."""
    import launch

    argv = [
        "launch.py",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    print(f"[{label}] python {shlex.join(argv)}", flush=True)
    launch.main(argv)
    return workdir


DIVERGED = "diverged.txt"  # written in a run's workdir when its loss became NaN/Inf


def launch_or_diverge(config: str, workdir: Path, overrides: dict, label: str) -> bool:
    """`launch_run`, where a loss that becomes NaN/Inf is a result (a learning rate too high,
    an exploding network), not an error: returns False for such a run, also on a re-run."""
    if (workdir / DIVERGED).exists():
        return False
    try:
        launch_run(config, workdir, overrides, label)
    except SystemExit as e:
        if e.code != 1:
            raise
        (workdir / DIVERGED).write_text("the loss became NaN/Inf; see the run's log\n")
        print(f"[{label}] diverged", flush=True)
        return False
    return True


def final_eval(workdir: Path) -> dict[str, float]:
    """The last eval of a finished run (summary.json), {} for a run that diverged."""
    summary = workdir / "summary.json"
    if (workdir / DIVERGED).exists() or not summary.exists():
        return {}
    return json.loads(summary.read_text())["final_eval"]


# How many rates a sweep may add past the edge of its grid while its best rate sits there: one
# more factor of the grid's outer ratio each time, so a best rate at the edge is a finding
# ("still rising at 10x"), not a guess of where the grid should have ended.
MAX_GRID_EXTENSIONS = 2


@dataclasses.dataclass
class Protocol:
    """How a study trains its arms: `config` with `base` overrides; the learning-rate sweep
    trains on `train_split` and scores `metric` on `validation_split` (seed 0); the repeats train
    on `train_split` with seeds `seeds` and are scored on `test_split`."""

    config: str
    out: Path
    base: dict
    seeds: Sequence[int] = (0, 1, 2)
    metric: str = "accuracy"
    higher_is_better: bool = True
    train_split: str = "train[:90%]"
    validation_split: str = "train[90%:]"
    test_split: str = "test"
    # Rates a sweep may add past the edge of its grid while its best sits there (0: the grid
    # alone, as the `--quick` variants do to stay a few seconds long).
    grid_extensions: int = MAX_GRID_EXTENSIONS

    @classmethod
    def from_args(cls, args, base: dict, **fields) -> Protocol:
        """A study's protocol from its command line (--config, --out, --seeds; --quick sweeps
        its grid alone)."""
        return cls(
            args.config,
            Path(args.out),
            base,
            seeds=tuple(args.seeds),
            grid_extensions=0 if args.quick else MAX_GRID_EXTENSIONS,
            **fields,
        )

    @classmethod
    def from_setup(cls, setup, out: Path, base: dict) -> Protocol:
        """A study's protocol from its `Setup` (the full budget or `--quick`'s): the config,
        seeds, splits and grid extensions it names."""
        return cls(
            config=setup.config,
            out=out,
            base=base,
            seeds=setup.seeds,
            train_split=setup.train_split,
            validation_split=setup.validation_split,
            test_split=setup.test_split,
            grid_extensions=setup.grid_extensions,
        )


def fixed_steps(base: dict, steps: int, evals: int = 1) -> dict:
    """`base` overridden to train exactly `steps` steps instead of its epochs, evaluated `evals`
    times evenly along the way and checkpointed at the last step (`--train_steps` of the lessons:
    a budget in steps, not epochs)."""
    return {
        **base,
        "train_steps": steps,
        "num_epochs": 0.0,
        "eval_every_epochs": 0.0,
        "eval_every_steps": max(1, steps // evals),
        "checkpoint_every_epochs": 0.0,
        "checkpoint_every_steps": steps,
    }


@dataclasses.dataclass
class Arm:
    """One arm's result: its chosen learning rate, the sweep's validation scores (None: the run
    diverged; the grid and any rates `extended` past its edge) and the workdirs of its seeds."""

    name: str
    learning_rate: float
    sweep: dict[float, float | None]
    runs: list[Path]
    sweep_runs: list[Path] = dataclasses.field(default_factory=list)
    extended: tuple[float, ...] = ()

    def wall_seconds(self) -> float:
        """Training wall time of every finished run of this arm (sweep and seeds)."""
        total = 0.0
        for run in [*self.sweep_runs, *self.runs]:
            summary = run / "summary.json"
            if summary.exists():
                total += json.loads(summary.read_text()).get("wall_time_s", 0.0)
        return total

    def final(self, metric: str) -> list[float]:
        """`metric` of each seed's final eval (NaN for a run that diverged)."""
        return [final_eval(run).get(metric, math.nan) for run in self.runs]

    def at_grid_edge(self) -> bool:
        """Whether the sweep chose the smallest or largest rate it trained (a wider sweep might
        do better)."""
        return bool(self.sweep) and self.learning_rate in (min(self.sweep), max(self.sweep))


def training_minutes(arms: Iterable[Arm]) -> float:
    """The study's training time: every finished run's own wall time (sweeps and seeds), summed;
    what a re-run that skips finished runs took is not the study's budget."""
    return sum(arm.wall_seconds() for arm in arms) / 60


def swept_rates(arms: Iterable[Arm]) -> list[float]:
    """Every rate some arm's sweep trained, ascending: the grid and the rates past its edge."""
    return sorted({rate for arm in arms for rate in arm.sweep})


def grid_edge_note(arms: Iterable[Arm]) -> list[str]:
    """The report's sentences on the sweeps that went past their grid's edge, and on the arms
    whose chosen rate is still the smallest or largest rate trained."""
    arms = list(arms)
    lines = []
    extended = [arm for arm in arms if arm.extended]
    if extended:
        went = "; ".join(
            f"{arm.name} to {', '.join(f'{r:g}' for r in arm.extended)}" for arm in extended
        )
        lines += [
            f"Where an arm's best rate was the grid's smallest or largest, its sweep went on past "
            f"that edge by the grid's outer ratio, up to {MAX_GRID_EXTENSIONS} rates: {went}.",
            "",
        ]
    edge = sorted(arm.name for arm in arms if arm.at_grid_edge())
    if edge:
        lines += [
            f"The chosen rate is still the smallest or largest rate trained for {', '.join(edge)}: "
            "a wider sweep could still move those rows.",
            "",
        ]
    return lines


def set_aside_if_trained_at_another_rate(workdir: Path, rate: float) -> None:
    """A seed run from before the sweep chose another rate (a grid widened since) moves to
    superseded/<name>_lr_<its rate> next to it, kept but out of the study, so the seed trains
    again at `rate`."""
    config_file = workdir / "config.json"
    if not config_file.is_file():
        return
    trained_at = json.loads(config_file.read_text())["optimizer"]["learning_rate"]
    if trained_at != rate:
        aside = workdir.parent / "superseded" / f"{workdir.name}_lr_{trained_at:g}"
        while aside.exists():
            aside = aside.with_name(aside.name + "_")
        aside.parent.mkdir(exist_ok=True)
        print(
            f"{workdir} trained at {trained_at:g}, the sweep now chose {rate:g}: moved to {aside}"
        )
        workdir.rename(aside)


def tune_and_repeat(
    protocol: Protocol, name: str, overrides: dict, learning_rates: Sequence[float]
) -> Arm:
    """Trains arm `name` (its `overrides` on top of the protocol's): one run per learning rate
    on the validation split, then every seed at the best rate on the test split. Where the best
    rate is the grid's smallest or largest, the sweep goes on past that edge by the grid's outer
    ratio, up to protocol.grid_extensions more rates. A single learning rate skips the sweep.
    Workdirs: out/name/lr_<rate>, out/name/seed_<seed>."""
    arm_dir = protocol.out / name
    settings = {**protocol.base, **overrides, "data.train_split": protocol.train_split}
    sweep: dict[float, float | None] = {}
    sweep_runs: list[Path] = []

    def score(rate: float) -> None:
        workdir = arm_dir / f"lr_{rate:g}"
        sweep_runs.append(workdir)
        run = {
            **settings,
            "optimizer.learning_rate": rate,
            "seed": protocol.seeds[0],
            "data.eval_split": protocol.validation_split,
        }
        ok = launch_or_diverge(protocol.config, workdir, run, f"{name} lr={rate:g}")
        sweep[rate] = final_eval(workdir).get(protocol.metric) if ok else None

    if len(learning_rates) > 1:
        for rate in learning_rates:
            score(rate)
        for _ in range(protocol.grid_extensions):
            beyond = rate_beyond_the_edge(sweep, protocol.higher_is_better)
            if beyond is None:
                break
            score(beyond)
        best = best_rate(sweep, protocol.higher_is_better)
    else:
        best = learning_rates[0]
    runs = []
    for seed in protocol.seeds:
        workdir = arm_dir / f"seed_{seed}"
        set_aside_if_trained_at_another_rate(workdir, best)
        run = {
            **settings,
            "optimizer.learning_rate": best,
            "seed": seed,
            "data.eval_split": protocol.test_split,
        }
        launch_or_diverge(protocol.config, workdir, run, f"{name} seed={seed}")
        runs.append(workdir)
    extended = tuple(sorted(set(sweep) - set(learning_rates)))
    return Arm(name, best, dict(sorted(sweep.items())), runs, sweep_runs, extended)


def best_rate(sweep: dict[float, float | None], higher_is_better: bool) -> float:
    """The rate of the best validation score; the smallest rate if every run diverged. Ties go
    to the smaller rate."""
    scored = {rate: s for rate, s in sorted(sweep.items()) if s is not None}
    if not scored:
        return min(sweep)
    pick = max if higher_is_better else min
    return pick(scored, key=scored.get)


def rate_beyond_the_edge(sweep: dict[float, float | None], higher_is_better: bool) -> float | None:
    """The next rate past the edge where the sweep's best rate sits (the outer ratio of the grid
    once more, to 3 significant digits), or None if the best is inside the grid. A sweep where
    every rate diverged goes on downwards."""
    rates = sorted(sweep)
    best = best_rate(sweep, higher_is_better)
    if best == rates[-1]:
        beyond = rates[-1] * rates[-1] / rates[-2]
    elif best == rates[0]:
        beyond = rates[0] * rates[0] / rates[1]
    else:
        return None
    return float(f"{beyond:.3g}")


def first_step_layer_stats(workdir: Path) -> dict[str, float]:
    """The per-layer statistics of a run's first train step (its seed's initial state, its first
    batch), recomputed from its config.json: what the run logs at step 1 with
    `layer_stats_every_steps=1`."""
    import jax

    from dlx import data as data_lib
    from dlx.train import config as config_lib
    from dlx.train import loop

    config = config_lib.from_json(str(workdir / "config.json"))
    run = loop.prepare_run(config, str(workdir), data_spec=loop.read_data_spec(str(workdir)))
    batch = next(
        data_lib.train_iterator(
            run.task.source(config.data.train_split, train=True),
            global_batch_size=config.data.batch_size,
            seed=config.seed,
        )
    )
    with loop._tracing_context(run.mesh, config):
        state = loop.init_state(run)
        scalars, _ = loop.compile_layer_stats(run)(state, batch, np.int32(0))
    return {k: float(v) for k, v in jax.device_get(scalars).items()}


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) over the finite values; (NaN, NaN) if none."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if not finite.size:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def format_mean_spread(values: Sequence[float], percent: bool = False, digits: int = 2) -> str:
    """ "88.41 ± 0.12%" over the runs, with "(k of n diverged)" where some did."""
    mean, spread = mean_spread(values)
    failed = sum(not math.isfinite(v) for v in values)
    if math.isnan(mean):
        return "diverged"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{mean * scale:.{digits}f} ± {spread * scale:.{digits}f}{unit}"
    return text + (f" ({failed} of {len(values)} diverged)" if failed else "")


def series(workdir: Path, split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` in a run's `split` records."""
    records = [r for r in read_run_metrics(workdir) if r["split"] == split and metric in r]
    return np.array([r["step"] for r in records]), np.array([r[metric] for r in records])


def read_run_metrics(workdir: Path) -> list[dict]:
    from dlx.train.metrics import read_metrics

    return read_metrics(str(workdir / "metrics.jsonl"))


def plot_band(ax, runs: Sequence[Path], split: str, metric: str, label: str, **style) -> None:
    """The mean over `runs` of a metric against step, with a band of one standard deviation
    (runs that stopped early contribute up to their last step)."""
    curves = [series(run, split, metric) for run in runs]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return
    steps = max((c[0] for c in curves), key=len)
    stacked = np.full((len(curves), len(steps)), np.nan)
    for i, (_, v) in enumerate(curves):
        stacked[i, : len(v)] = v[: len(steps)]
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(stacked, axis=0)
        spread = np.nanstd(stacked, axis=0)
    (line,) = ax.plot(steps, mean, label=label, **style)
    ax.fill_between(steps, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0)


def training_seconds(records: list[dict]) -> dict[int, float]:
    """Seconds of training (evals excluded, compilation included) up to each logged train step,
    from the steps/s of each logging window in a run's metrics.jsonl."""
    seconds, elapsed, previous_step = {}, 0.0, 0
    for record in records:
        if record["split"] != "train":
            continue
        elapsed += (record["step"] - previous_step) / record["steps_per_sec"]
        previous_step = seconds_step = record["step"]
        seconds[seconds_step] = elapsed
    return seconds


def write_report(out: Path, lines: list[str], workdir_pattern: str, command: str) -> Path:
    """Writes `lines` as out/report.md, ending with where the runs are and the command that
    regenerates the report."""
    lines = lines + [
        f"Each run's workdir is `{workdir_pattern}`. Regenerate with:",
        "",
        f"    {command}",
        "",
    ]
    report = Path(out) / "report.md"
    report.write_text("\n".join(lines))
    return report
