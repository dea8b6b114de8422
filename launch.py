"""dlx experiment launcher.

    python launch.py [train|eval] --config configs/fashion_cnn.py[:variant] --workdir runs/x \
        [--config.optimizer.learning_rate=3e-4 ...]
    python launch.py --config runs/x/config.json --workdir runs/y   # reproduce a run
    python launch.py eval --workdir runs/x                           # score its latest checkpoint
    python launch.py sample --workdir runs/x --prompt "ROMEO:" --max_new_tokens 300 \
        --temperature 0.8 [--top_k 50 --top_p 0.95 --num_samples 1 --seed 0]  # stream text
    python launch.py                                                 # configs/default.py -> runs/default

Re-running the same command on the same workdir resumes. On a cluster run the same command on
every host with --distributed (SLURM and TPU pods are detected) or with explicit
--coordinator_address/--num_processes/--process_id.
"""
from __future__ import annotations

import json
import os
import sys

MODES = ("train", "eval", "sample")
SAMPLE_FLAGS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p", "num_samples", "seed")
DEFAULT_CONFIG = "configs/default.py"


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _config_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """The --config value and argv without it (the config is loaded here, not by absl)."""
    rest, path = [argv[0]], None
    args = iter(argv[1:])
    for arg in args:
        if arg == "--config":
            path = next(args, None)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def main(argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    mode = "train"
    if len(argv) > 1 and not argv[1].startswith("-"):  # the mode, if given, comes first
        mode, argv = argv[1], argv[:1] + argv[2:]
        if mode not in MODES:
            _fail(f"unknown mode '{mode}'; use one of {MODES}")

    config_path, argv_rest = _config_argument(argv)
    workdir_given = any(a.startswith("--workdir") for a in argv)
    if config_path is None and mode in ("eval", "sample"):
        workdir = next((a.split("=", 1)[1] if "=" in a else argv[argv.index(a) + 1]
                        for a in argv if a.startswith("--workdir")), None)
        if workdir is None:
            _fail(f"{mode} needs --workdir (the run to {mode} from)")
        config_path = os.path.join(workdir, "config.json")
    config_path = config_path or DEFAULT_CONFIG

    from dlx.errors import UserError
    from dlx.train import config as config_lib
    try:
        file_part = config_path.split(":", 1)[0]
        if not os.path.exists(file_part):
            raise UserError(f"config file {file_part} does not exist; see configs/ for the choices")
        try:
            config = config_lib.load(config_path)
        except UserError:
            raise
        except Exception as e:  # errors raised while running the config file's get_config
            raise UserError(f"cannot load config {config_path}: {e}") from None
        config_lib.prepare_overrides(config, [arg[len("--config."):].split("=", 1)[0]
                                              for arg in argv_rest if arg.startswith("--config.")])
        sys.argv[:] = argv_rest  # config_flags reads sys.argv when the flag is defined
        config_flags.DEFINE_config_dict("config", config, lock_config=True)
        flags.DEFINE_string("workdir", "runs/default", "Where config, checkpoints, metrics and plots go.")
        flags.DEFINE_bool("distributed", bool(os.environ.get("DLX_DISTRIBUTED")),
                          "Call jax.distributed.initialize() (auto-detects SLURM and TPU pods).")
        flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
        flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
        flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
        # sample mode: passed to the task's `sample`, which takes the options it knows (unset
        # ones come from the run's config) and refuses the others
        flags.DEFINE_string("prompt", None, "sample: text to continue.")
        flags.DEFINE_integer("max_new_tokens", None, "sample: tokens to generate.")
        flags.DEFINE_float("temperature", None, "sample: softmax temperature; 0 is greedy.")
        flags.DEFINE_integer("top_k", None, "sample: keep the k most likely tokens (0: all).")
        flags.DEFINE_float("top_p", None, "sample: nucleus mass to keep (1: all).")
        flags.DEFINE_integer("num_samples", None, "sample: samples to draw (default 1).")
        flags.DEFINE_integer("seed", None, "sample: random seed (default 0).")
        try:
            flags.FLAGS(argv_rest)
        except Exception as e:  # absl's flags.Error, and ml_collections' errors for a bad value
            raise UserError(str(e).replace("\n", " ")) from None
    except UserError as e:
        _fail(str(e))

    FLAGS = flags.FLAGS
    if not workdir_given and mode == "train" and config_path != DEFAULT_CONFIG:
        _fail("give --workdir (where this run's checkpoints and metrics go)")

    import jax
    if FLAGS.coordinator_address or FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    from dlx.train import loop
    config = FLAGS.config
    try:
        if mode == "sample":
            from dlx import inference
            options = {name: FLAGS[name].value for name in SAMPLE_FLAGS
                       if FLAGS[name].value is not None}
            inference.load(FLAGS.workdir, config, sample_options=options).sample(options)
            return
        if mode == "eval":
            metrics = loop.evaluate(config, FLAGS.workdir)
            if jax.process_index() == 0:
                print(json.dumps(metrics, indent=2))
            return
        summary = loop.train_and_evaluate(config, FLAGS.workdir)
    except UserError as e:
        _fail(str(e))
    except loop.NonFiniteError as e:
        _fail(str(e), code=1)
    if jax.process_index() == 0 and "stopped_at" not in summary:
        final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final_eval"].items())
        print(f"Done: {final} after {summary['steps']} steps in {summary['wall_time_s']:.0f} s. "
              f"Results in {os.path.abspath(FLAGS.workdir)} (summary.json, metrics.jsonl, plots/).")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy
    try:
        reexec_with_malloc_policy()  # first: glibc reads its malloc settings at process start
    except ValueError as e:
        _fail(str(e))
    main(sys.argv)
