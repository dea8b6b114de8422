"""dlx vs PyTorch on this machine's CPU: matmul peak, MLP and CNN train steps, input-pipeline stall.

    .venv/bin/python bench/run.py                     # everything (~1 min on an idle 2-core box)
    .venv/bin/python bench/run.py --only mlp,peak     # sections: peak, mlp, cnn, cnn_bn, pipeline
    .venv/bin/python bench/run.py --steps 20 --rounds 3

Prints a markdown table and writes bench/results.json. dlx runs exactly as the runner runs it
(`loop.prepare_run` -> `init_state` -> `compile_steps`, 1-device mesh); dlx and PyTorch are timed in
the same process, alternating in rounds (each side timed after one untimed step), and the median
round is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # the repo root, for `configs`

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import flops, torch_models  # noqa: E402
from configs import fashion_cnn, fashion_mlp  # noqa: E402
from dlx import data, runtime  # noqa: E402
from dlx.train import loop, sharding  # noqa: E402

TORCH_THREADS = 2


def cnn_with_batch_norm():
    """The CNN as first specified, conv -> batch norm -> ReLU -> pool; configs/fashion_cnn.py
    has since dropped batch norm (faster, and as accurate)."""
    config = fashion_cnn.get_config()
    config.model.batch_norm = True
    return config


MODELS = {
    "mlp": fashion_mlp.get_config,
    "cnn": fashion_cnn.get_config,
    "cnn_bn": cnn_with_batch_norm,
}
PIPELINE_MODELS = ("mlp", "cnn")
SECTIONS = ("peak", *MODELS, "pipeline")
GOAL_RATIO = {"mlp": 0.6, "cnn": 1.0, "cnn_bn": 1.0}
GOAL_STALL = 0.05
MAX_OTHER_LOAD = 0.10  # share of the CPU other processes may use during a kept round
# Steps per timed round when --steps is not given: about 0.3-1 s of work per round.
DEFAULT_STEPS = {"mlp": 100, "cnn": 20, "cnn_bn": 20}
DEFAULT_PIPELINE_STEPS = {"mlp": 100, "cnn": 20}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train steps per timed round (default: mlp 100, cnns 20)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is kept")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps after compiling")
    parser.add_argument(
        "--pipeline-steps",
        type=int,
        default=None,
        help="steps per pipeline-stall round (default: mlp 100, cnn 20)",
    )
    parser.add_argument(
        "--pipeline-rounds",
        type=int,
        default=15,
        help="pipeline-stall rounds, each a loop and a step timing back to back; "
        "the median of the rounds' stalls is kept",
    )
    args = parse_with_sections(parser, argv, SECTIONS, os.path.join(BENCH_DIR, "results.json"))
    if min(args.rounds, args.pipeline_rounds) < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--rounds, --pipeline-rounds and --steps must be >= 1")
    return args


def parse_with_sections(
    parser: argparse.ArgumentParser, argv: list[str] | None, sections: tuple[str, ...], out: str
) -> argparse.Namespace:
    """Adds --only (comma-separated sections, checked against `sections`) and --out, parses."""
    parser.add_argument(
        "--only",
        default=",".join(sections),
        help=f"comma-separated sections to run: {', '.join(sections)}",
    )
    parser.add_argument("--out", default=out)
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(sections)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(sections)}")
    return args


# ------------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """/proc/cpuinfo's model name, with the vector extensions that matter for f32 matmuls."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    extensions = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if x in flags]
    return f"{fields.get('model name', 'unknown')} ({', '.join(extensions)})"


def machine_info() -> dict[str, Any]:
    import flax
    import optax

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "jax_devices": str(jax.devices()),
        "torch_threads": TORCH_THREADS,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),  # the DLX_MALLOC policy
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }


WORKER_PIDS: set[int] = set()  # this benchmark's worker processes (bench/sequence.py's GPT sides)


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:  # utime and stime: fields 14 and 15, after "(comm)"
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_results() -> tuple[dict[str, Any], float, OtherLoad]:
    """What every bench starts with: its results (the machine, the command, the load average),
    the start time, and the probe of other processes' CPU use during the run."""
    started, other_load = time.perf_counter(), OtherLoad()
    results = {
        "machine": machine_info(),
        "command": " ".join(sys.argv),
        "load_average_at_start": os.getloadavg(),
    }
    return results, started, other_load


class OtherLoad:
    """Share of the machine's CPU time other processes used since this object was made (this
    process and its `WORKER_PIDS` are not "other")."""

    def __init__(self):
        self._start = (self._busy_seconds(), self._own_seconds(), time.perf_counter())

    @staticmethod
    def _busy_seconds() -> float:
        with open("/proc/stat") as f:  # "cpu user nice system idle iowait irq softirq ..."
            user, nice, system, _, _, irq, softirq = map(int, f.readline().split()[1:8])
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system + sum(_process_cpu_seconds(p) for p in WORKER_PIDS)

    def fraction(self) -> float | None:
        try:
            busy, own, wall = (
                now - then
                for now, then in zip(
                    (self._busy_seconds(), self._own_seconds(), time.perf_counter()), self._start
                )
            )
        except OSError:  # no /proc/stat: not Linux
            return None
        if wall < 0.2:  # /proc/stat counts in 10 ms ticks: too coarse to judge
            return None
        return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def seconds_per_call(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn()` (which must finish its work before returning)."""
    fn()  # warm-up (compiles, allocates)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


T = TypeVar("T")


@dataclasses.dataclass
class Rounds(Generic[T]):
    kept: list[T]
    dropped: int  # rounds thrown away because another process was busy during them
    contended: bool  # too few quiet rounds: `kept` holds busy ones too


def alternating_round(runners: dict[str, StepRunner], steps: int) -> dict[str, float]:
    """ms per step of every contender in turn, so drifts hit them all alike. Each is timed after
    one untimed step: the steady state of a training loop, with the memory the other contender
    used and freed faulted back in (a nanoGPT step's kernel time grows ~3x right after the other
    framework ran; BENCHMARKS.md)."""
    ms = {}
    for name, run_steps in runners.items():
        run_steps(1)
        ms[name] = 1e3 * run_steps(steps) / steps
    return ms


def quiet_rounds(run_round: Callable[[], T], wanted: int) -> Rounds[T]:
    """Runs `run_round` until `wanted` rounds ran while other processes used under
    MAX_OTHER_LOAD of the CPU, or 3x `wanted` attempts. On a shared machine a busy neighbour
    slowed PyTorch's OpenMP threads up to ~10x and XLA's ~1.5x, so busy rounds are dropped."""
    quiet, busy = [], []
    while len(quiet) < wanted and len(quiet) + len(busy) < 3 * wanted:
        load = OtherLoad()
        result = run_round()
        other = load.fraction()
        (busy if other is not None and other > MAX_OTHER_LOAD else quiet).append((other, result))
    if len(quiet) >= wanted:
        return Rounds([r for _, r in quiet], len(busy), contended=False)
    least_busy = sorted(quiet + busy, key=lambda pair: pair[0] or 0.0)[:wanted]
    return Rounds([r for _, r in least_busy], len(quiet) + len(busy) - wanted, contended=True)


# ------------------------------------------------------------------------------------------------
# Matmul peak
# ------------------------------------------------------------------------------------------------
def matmul_peak(sizes: tuple[int, ...] = (2048, 4096)) -> dict[str, Any]:
    matmul = jax.jit(lambda a, b: a @ b)
    measured: dict[str, float] = {}
    for n in sizes:
        repeats = 7 if n <= 2048 else 3
        flop = 2 * n**3
        a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in (0, 1))
        measured[f"jax_{n}"] = (
            flop / seconds_per_call(lambda: matmul(a, b).block_until_ready(), repeats) / 1e9  # noqa: B023
        )
        ta, tb = torch.randn(n, n), torch.randn(n, n)
        measured[f"torch_{n}"] = flop / seconds_per_call(lambda: torch.mm(ta, tb), repeats) / 1e9  # noqa: B023
    return {
        "gflops": measured,
        "peak_gflops": max(measured.values()),
        "peak_from": max(measured, key=measured.get),
    }


# ------------------------------------------------------------------------------------------------
# dlx side: the runner's own objects
# ------------------------------------------------------------------------------------------------
StepRunner = Callable[[int], float]  # run_steps(n) -> seconds for n train steps, all finished


@dataclasses.dataclass
class DlxModel:
    run: loop.Run
    state: Any
    train_step: Callable
    batch: dict[str, jax.Array]  # one sharded batch, reused by the step-only timings
    numpy_batch: dict[str, np.ndarray]
    steps: int = 0  # updates made so far (the runner's step index)

    def step(self, batch: dict[str, jax.Array]) -> dict:
        with loop._tracing_context(self.run.mesh, self.run.config):
            self.state, metrics = self.train_step(self.state, batch, np.int32(self.steps))
        self.steps += 1
        return metrics

    def run_steps(self, num_steps: int) -> float:
        """Seconds for `num_steps` steps on the pre-made batch, dispatched as the runner does
        (asynchronously, metrics pulled every log_every_steps), finished before returning."""
        log_every = self.run.config.log_every_steps
        pending = []
        start = time.perf_counter()
        for i in range(1, num_steps + 1):
            pending.append(self.step(self.batch))
            if i % log_every == 0:
                jax.device_get(pending)
                pending = []
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def run_loop(self, iterator, num_steps: int) -> float:
        """Like `run_steps`, with each batch read and placed as in `loop.train_and_evaluate`."""
        log_every = self.run.config.log_every_steps
        pending = []
        start = time.perf_counter()
        for i in range(1, num_steps + 1):
            batch = next(iterator)
            if jax.process_count() > 1:  # one process: the jitted step places the numpy batch
                batch = sharding.shard_batch(batch, self.run.mesh)
            pending.append(self.step(batch))
            if i % log_every == 0:
                jax.device_get(pending)
                pending = []
        jax.block_until_ready(self.state)
        return time.perf_counter() - start


def build_dlx(config) -> DlxModel:
    run = loop.prepare_run(config)
    state = loop.init_state(run)
    train_step = loop.compile_steps(run)
    source = data.source(config.data.name, config.data.train_split, run.data_dir)
    rows = np.arange(config.data.batch_size)
    numpy_batch = data.read_rows(source, rows)
    return DlxModel(
        run, state, train_step, sharding.shard_batch(numpy_batch, run.mesh), numpy_batch
    )


def xla_flops(model: DlxModel) -> dict[str, float]:
    """XLA's own count (cost_analysis of the compiled executables) for the forward+loss and the
    whole train step. It counts every op (elementwise, optimizer), and skips work XLA removed."""

    def flops_of(compiled) -> float:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", float("nan")))

    run, state = model.run, model.state
    with loop._tracing_context(run.mesh, run.config):
        step = flops_of(model.train_step.lower(state, model.batch, np.int32(0)).compile())
        forward = flops_of(
            jax.jit(run.task.loss_fn)
            .lower(state.params, state.model_state, model.batch, jax.random.PRNGKey(0))
            .compile()
        )
    return {"xla_forward_flops": forward, "xla_step_flops": step}


def analytic_forward_flops(config, image_shape: tuple[int, int, int]) -> int:
    model, batch = config.model, config.data.batch_size
    if model.name == "mlp":
        return flops.mlp_forward_flops(
            batch, int(np.prod(image_shape)), model.hidden, model.num_outputs
        )
    return flops.cnn_forward_flops(
        batch,
        image_shape,
        model.features,
        model.kernel_size,
        model.get("dense", ()),
        model.num_outputs,
        model.get("padding", "SAME"),
    )


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------
def classifier_steps(step: Callable, images, labels) -> StepRunner:
    """A StepRunner of a PyTorch classifier step (`torch_models.train_step`) on one batch."""

    def run_steps(num_steps: int) -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            step(images, labels)
        return time.perf_counter() - start

    return run_steps


def torch_runner(config, numpy_batch: dict[str, np.ndarray], fused_adamw: bool) -> StepRunner:
    """`run_steps(n) -> seconds` for the PyTorch twin of `config`'s model on one fixed batch."""
    torch.manual_seed(0)
    image_shape = tuple(numpy_batch["image"].shape[1:])
    net = torch_models.from_config(config.model.to_dict(), image_shape)
    step = torch_models.train_step(
        net, torch_models.adamw(net, config.optimizer, fused=fused_adamw)
    )
    images, labels = torch_models.to_torch_batch(numpy_batch)

    return classifier_steps(step, images, labels)


def compare_with_torch(name: str, model: DlxModel, args, peak_gflops: float | None) -> dict:
    config = model.run.config
    steps = args.steps or DEFAULT_STEPS[name]
    runners: dict[str, StepRunner] = {
        "dlx": model.run_steps,
        "torch": torch_runner(config, model.numpy_batch, fused_adamw=False),
        # Not in the ratio: shows how much of PyTorch's step its default CPU AdamW costs.
        "torch_fused_adamw": torch_runner(config, model.numpy_batch, fused_adamw=True),
    }
    for run_steps in runners.values():
        run_steps(args.warmup)

    rounds = quiet_rounds(lambda: alternating_round(runners, steps), args.rounds)
    ms_rounds = {contender: [r[contender] for r in rounds.kept] for contender in runners}
    ms = {contender: statistics.median(times) for contender, times in ms_rounds.items()}

    image_shape = tuple(model.numpy_batch["image"].shape[1:])
    forward = analytic_forward_flops(config, image_shape)
    step_flops = flops.TRAIN_STEP_MULTIPLIER * forward
    result = {
        "batch_size": config.data.batch_size,
        "steps_per_round": steps,
        "rounds": args.rounds,
        **{f"{contender}_ms": value for contender, value in ms.items()},
        "ratio": ms["dlx"] / ms["torch"],
        "goal_ratio": GOAL_RATIO[name],
        "ms_rounds": ms_rounds,
        "busy_rounds_dropped": rounds.dropped,
        "contended": rounds.contended,
        "forward_flops": forward,
        "step_flops": step_flops,
        **{f"{side}_gflops": step_flops / ms[side] / 1e6 for side in ("dlx", "torch")},
        **xla_flops(model),
    }
    if peak_gflops:
        for contender in ("dlx", "torch"):
            result[f"{contender}_peak_fraction"] = result[f"{contender}_gflops"] / peak_gflops
    return result


def pipeline_stall(name: str, model: DlxModel, args) -> dict:
    config = model.run.config
    steps = args.pipeline_steps or DEFAULT_PIPELINE_STEPS[name]
    source = data.source(config.data.name, config.data.train_split, model.run.data_dir)
    iterator = data.train_iterator(
        source,
        global_batch_size=config.data.batch_size,
        seed=config.seed,
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
    )
    model.run_loop(iterator, args.warmup)  # starts grain's reader threads
    model.run_steps(args.warmup)  # the step on a placed batch is compiled on its first call
    order = itertools.cycle([False, True])

    def paired_round() -> tuple[float, float]:
        """(loop time, step time) measured back to back, in alternating order: this host's speed
        drifts by 10-30% between seconds, more than the stall, so each round's pair is compared
        on its own rather than two medians over the whole run."""
        if next(order):
            step_time = model.run_steps(steps)
            return model.run_loop(iterator, steps), step_time
        loop_time = model.run_loop(iterator, steps)
        return loop_time, model.run_steps(steps)

    rounds = quiet_rounds(paired_round, args.pipeline_rounds)
    stalls = [(loop - step) / loop for loop, step in rounds.kept]
    return {
        "steps_per_round": steps,
        "rounds": args.pipeline_rounds,
        "loop_ms": 1e3 * statistics.median(loop for loop, _ in rounds.kept) / steps,
        "step_ms": 1e3 * statistics.median(step for _, step in rounds.kept) / steps,
        "stall": statistics.median(stalls),
        "stall_rounds": stalls,
        "goal_stall": GOAL_STALL,
        "busy_rounds_dropped": rounds.dropped,
        "contended": rounds.contended,
    }


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _verdict(met: bool, result: dict) -> str:
    return "busy machine" if result.get("contended") else "ok" if met else "MISSED"


def report_header(results: dict) -> list[str]:
    """The machine and, when measured, its matmul peak: the first lines of every bench report."""
    lines = [
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in results["machine"]["versions"].items())
        + f"; GLIBC_TUNABLES {results['machine'].get('glibc_tunables')}"
    ]
    peak = results.get("peak")
    if peak:
        lines += [
            "",
            "f32 matmul GFLOP/s (median): "
            + ", ".join(f"{k} {v:.0f}" for k, v in peak["gflops"].items()),
            f"this machine's measured f32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s "
            f"({peak['peak_from']})",
        ]
    return lines


def report(results: dict) -> str:
    lines = report_header(results)
    peak = results.get("peak")
    models = results.get("models", {})
    if models:
        batch = next(iter(models.values()))["batch_size"]
        lines += [
            "",
            f"| train step (batch {batch}) | dlx ms | torch ms | dlx/torch (goal) "
            "| model GFLOP/step | XLA GFLOP fwd / step | dlx % peak | torch % peak "
            "| torch fused-AdamW ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in models.items():
            ok = _verdict(r["ratio"] <= r["goal_ratio"], r)
            lines.append(
                f"| {name} | {r['dlx_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.2f} "
                f"(<= {r['goal_ratio']}, {ok}) | {r['step_flops'] / 1e9:.3f} "
                f"(fwd {r['forward_flops'] / 1e9:.3f} x3) | {r['xla_forward_flops'] / 1e9:.3f} / "
                f"{r['xla_step_flops'] / 1e9:.3f} | {_pct(r.get('dlx_peak_fraction'))} "
                f"| {_pct(r.get('torch_peak_fraction'))} | {r['torch_fused_adamw_ms']:.2f} |"
            )
    stalls = results.get("pipeline", {})
    if stalls:
        lines += [
            "",
            "| input pipeline | loop ms/step (next + placing the batch + step) "
            "| step ms on a fixed batch | stall (goal < 5%) |",
            "|---|---|---|---|",
        ]
        for name, r in stalls.items():
            ok = _verdict(r["stall"] < r["goal_stall"], r)
            lines.append(
                f"| {name} | {r['loop_ms']:.2f} | {r['step_ms']:.2f} | {_pct(r['stall'])} ({ok}) |"
            )
    sections = [
        ("peak", peak or {}),
        *models.items(),
        *((f"{name} pipeline", r) for name, r in stalls.items()),
    ]
    return "\n".join(lines + load_notes(results, sections))


def load_notes(results: dict, sections: list[tuple[str, dict]]) -> list[str]:
    """Report lines on the rounds dropped as busy and the sections measured on a busy machine."""
    lines = []
    dropped = sum(r.get("busy_rounds_dropped", 0) for _, r in sections)
    if dropped:
        lines += [
            "",
            f"note: {dropped} timed round(s) dropped because other processes used over "
            f"{_pct(MAX_OTHER_LOAD)} of the CPU during them (over the whole run: "
            f"{_pct(results.get('other_processes_cpu_fraction'))}).",
        ]
    contended = [name for name, r in sections if r.get("contended")]
    if contended:
        lines += [
            f"WARNING: too few quiet rounds for {', '.join(contended)}: those numbers are "
            "from a busy machine (PyTorch's suffer most). Re-run when it is idle."
        ]
    return lines


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(TORCH_THREADS)
    probe = OtherLoad()
    time.sleep(1.0)
    if (busy := probe.fraction()) and busy > MAX_OTHER_LOAD:
        print(
            f"note: other processes are using {_pct(busy)} of the CPU; rounds they disturb are "
            "retried (up to 3x), so this run may take longer",
            flush=True,
        )
    results, started, other_load = start_results()
    peak_gflops = measure_peak(results) if "peak" in args.only else None
    for name, get_config in MODELS.items():
        with_pipeline = "pipeline" in args.only and name in PIPELINE_MODELS
        if name not in args.only and not with_pipeline:
            continue
        model = build_dlx(get_config())
        if name in args.only:
            results.setdefault("models", {})[name] = compare_with_torch(
                name, model, args, peak_gflops
            )
        if with_pipeline:
            results.setdefault("pipeline", {})[name] = pipeline_stall(name, model, args)
    return finish(results, started, other_load, args.out, report)


def measure_peak(results: dict) -> float:
    """Times the f32 matmul peak into results["peak"]; returns it in GFLOP/s."""
    peak = quiet_rounds(matmul_peak, 1)
    results["peak"] = {**peak.kept[0], "contended": peak.contended}
    return results["peak"]["peak_gflops"]


def finish(
    results: dict, started: float, other_load: OtherLoad, out: str, report_fn: Callable[[dict], str]
) -> dict:
    """Adds the run's wall time and the other processes' CPU share, prints the report, saves."""
    results["wall_s"] = time.perf_counter() - started
    results["other_processes_cpu_fraction"] = other_load.fraction()
    print(report_fn(results))
    print(f"\n({results['wall_s']:.0f} s; results in {os.path.relpath(out)})")
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
