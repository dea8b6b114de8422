"""Where a dlx train step's time goes on XLA:CPU: the runner's compiled step (as bench/run.py builds
it) traced with jax.profiler, every XLA op's time per step, and one step's timeline.

    .venv/bin/python bench/profile_step.py cnn              # models: see bench/run.py MODELS
    .venv/bin/python bench/profile_step.py mlp --steps 50 --top 30 --timeline
    .venv/bin/python bench/profile_step.py gpt --steps 2   # bench/sequence.py's GPT steps too
    .venv/bin/python bench/profile_step.py resnet20 --timeline   # bench/resnet.py's fused step

Op times are wall times of the ops' kernels. Two ops can run at once (XLA:CPU runs independent
ops concurrently), and an Eigen convolution's event covers only its launch: its work shows as the
gap before the next op in the timeline. Run it on an idle machine. The step time untraced comes with
the process's page faults and kernel (system) CPU time per step, the cost of memory the step maps
afresh (see DLX_MALLOC in dlx/runtime.py); the traced time includes the profiler's overhead.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import resource
import sys
import tempfile

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

import jax  # noqa: E402

from bench import resnet, run, sequence  # noqa: E402
from dlx import runtime  # noqa: E402


def trace_events(model: run.DlxModel, steps: int) -> tuple[list[dict], float]:
    """The profiler's complete events ("ph": "X") of `steps` steps, with their thread names."""
    with tempfile.TemporaryDirectory() as out:
        jax.profiler.start_trace(out)
        seconds = model.run_steps(steps)
        jax.profiler.stop_trace()
        pattern = os.path.join(out, "plugins", "profile", "*", "*.trace.json.gz")
        path = sorted(glob.glob(pattern))[-1]
        with gzip.open(path) as f:
            trace = json.load(f)
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    events = [
        {**e, "thread": threads.get((e["pid"], e["tid"]), "")}
        for e in trace["traceEvents"]
        if e.get("ph") == "X"
    ]
    return events, seconds / steps


def xla_ops(events: list[dict]) -> list[dict]:
    """Events of XLA's kernels (not the executor's own bookkeeping)."""
    return [
        e
        for e in events
        if ("Eigen" in e["thread"] or "PjRt" in e["thread"])
        and not e["name"].startswith(("ThunkExecutor", "ThreadpoolListener"))
    ]


def op_table(ops: list[dict], steps: int, top: int) -> str:
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for e in ops:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    lines = [
        f"sum of op times: {sum(total.values()) / 1e3 / steps:.2f} ms/step",
        f"{'ms/step':>8} {'calls':>6}  op",
    ]
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{us / 1e3 / steps:8.3f} {count[name] / steps:6.1f}  {name}")
    return "\n".join(lines)


def timeline(events: list[dict], ops: list[dict], min_ms: float) -> str:
    """One step from the middle of the trace: op start (ms from the step's start), duration."""
    steps = sorted(
        (e for e in events if e["name"].startswith("ThunkExecutor::Execute (wait")),
        key=lambda e: e["ts"],
    )
    if not steps:
        return "(no step boundaries found in the trace)"
    step = steps[len(steps) // 2]
    start, end = step["ts"], step["ts"] + step["dur"]
    lines = [f"one step, {step['dur'] / 1e3:.2f} ms; ops of >= {min_ms} ms:"]
    for e in sorted((e for e in ops if start <= e["ts"] <= end), key=lambda e: e["ts"]):
        if e["dur"] / 1e3 >= min_ms:
            lines.append(f"  +{(e['ts'] - start) / 1e3:7.2f} {e['dur'] / 1e3:7.3f}  {e['name']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "model", choices=sorted(run.MODELS) + sorted(sequence.GPTS) + sorted(resnet.DEPTHS)
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--timeline", action="store_true", help="print one step's ops in order")
    parser.add_argument("--min-ms", type=float, default=0.05, help="timeline: shortest op shown")
    args = parser.parse_args(argv)
    if args.model in sequence.GPTS:
        model = sequence.build_dlx_lm(sequence.gpt_config(sequence.GPTS[args.model]))
    elif args.model in resnet.DEPTHS:
        model = run.build_dlx(resnet.config_for(resnet.DEPTHS[args.model], "fused"))
    else:
        model = run.build_dlx(run.MODELS[args.model]())
    model.run_steps(2 if args.model in sequence.GPTS else 5)  # compile and warm up
    before = resource.getrusage(resource.RUSAGE_SELF)
    untraced = model.run_steps(args.steps) / args.steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"{args.model}: per step untraced {(after.ru_minflt - before.ru_minflt) / args.steps:.0f} "
        f"page faults, {(after.ru_stime - before.ru_stime) / args.steps:.3f} s system CPU time "
        f"(GLIBC_TUNABLES {os.environ.get('GLIBC_TUNABLES')}); peak RSS "
        f"{after.ru_maxrss / 2**20:.2f} GiB"
    )
    load = run.OtherLoad()
    events, traced = trace_events(model, args.steps)
    other = load.fraction()
    print(
        f"{args.model}: {1e3 * untraced:.2f} ms/step untraced, {1e3 * traced:.2f} traced; other "
        f"processes used {run._pct(other)} of the CPU meanwhile"
    )
    ops = xla_ops(events)
    print(op_table(ops, args.steps, args.top))
    if args.timeline:
        print(timeline(events, ops, args.min_ms))


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
