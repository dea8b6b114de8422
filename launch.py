"""dlx experiment launcher; `python launch.py --help` lists the modes, the flags and every config
key of a config with its default.

    python launch.py [train|eval|sample] --config configs/fashion_cnn.py[:variant] --workdir runs/x \
        [--config.optimizer.learning_rate=3e-4 ...]
    python launch.py --workdir runs/x                                # resume a run (its config.json)
    python launch.py --config runs/x/config.json --workdir runs/y   # reproduce a run
    python launch.py eval --workdir runs/x                           # score its latest checkpoint
    python launch.py sample --workdir runs/x --prompt "ROMEO:" --max_new_tokens 300 \
        --temperature 0.8 [--top_k 50 --top_p 0.95 --num_samples 1 --seed 0]  # stream text
    python launch.py predict --workdir runs/x shoe.png [more.png ...]   # classes or boxes
    python launch.py                                                 # configs/default.py -> runs/default

Re-running the same command on the same workdir resumes. On a cluster run the same command on
every host with --distributed (SLURM and TPU pods are detected) or with explicit
--coordinator_address/--num_processes/--process_id (scripts/slurm.sbatch, scripts/tpu_pod.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

MODES = {
    "train": "train into --workdir (the default); re-running on the same workdir resumes",
    "eval": "score the latest checkpoint of --workdir; prints the metrics and appends them to "
    "WORKDIR/eval_results.jsonl",
    "sample": "generate from the latest checkpoint of --workdir (tasks that generate: "
    "language_model, vae, gan, diffusion)",
    "predict": "run the latest checkpoint of --workdir on image files given after the flags: "
    "top-5 classes of a classifier, boxes of a detector (printed and drawn); images of another "
    "size or colour are converted to the run's",
    "pipeline": "TASK --model M TEXT...: feature-extraction or text-generation with imported "
    "weights (minilm, smollm2, a hub folder or .gguf) or a dlx language-model workdir; one JSON "
    "line per text",
}
DEFAULT_CONFIG = "configs/default.py"
DEFAULT_WORKDIR = "runs/default"
HELP_FLAGS = ("-h", "--help", "-help", "--helpfull")


@dataclasses.dataclass(frozen=True)
class Flag:
    kind: str  # the absl DEFINE_<kind>
    name: str
    default: Any
    help: str
    sample: bool = False  # sample mode's options


FLAGS = (
    Flag(
        "string",
        "workdir",
        DEFAULT_WORKDIR,
        "where config.json, checkpoints, metrics, plots and summary.json go",
    ),
    Flag(
        "bool",
        "distributed",
        False,
        "join a multi-process run whose coordinator the cluster names (SLURM, Open MPI, TPU pod, "
        "Kubernetes are detected); DLX_DISTRIBUTED=1 sets it too",
    ),
    Flag(
        "string",
        "coordinator_address",
        None,
        "host:port of process 0, for a multi-process run outside a detected cluster (with "
        "--num_processes and --process_id)",
    ),
    Flag("integer", "num_processes", None, "processes in the multi-process run"),
    Flag("integer", "process_id", None, "this process's index, 0 .. num_processes - 1"),
    # sample mode: passed to the task's `sample`, which takes the options it knows (unset ones
    # come from the run's config) and refuses the others
    Flag("string", "prompt", None, "text to continue", sample=True),
    Flag("integer", "max_new_tokens", None, "tokens to generate", sample=True),
    Flag("float", "temperature", None, "softmax temperature; 0 is greedy", sample=True),
    Flag("integer", "top_k", None, "keep the k most likely tokens (0: all)", sample=True),
    Flag("float", "top_p", None, "nucleus mass to keep (1: all)", sample=True),
    Flag("integer", "num_samples", None, "samples to draw (default 1)", sample=True),
    Flag("integer", "seed", None, "random seed (default 0)", sample=True),
)
SAMPLE_FLAGS = tuple(flag.name for flag in FLAGS if flag.sample)


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _config_argument(args: list[str]) -> tuple[str | None, list[str]]:
    """The --config value and the arguments without it (the config is loaded here, not by
    absl)."""
    rest, path = [], None
    items = iter(args)
    for arg in items:
        if arg == "--config":
            path = next(items, None)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def _flag_value(args: list[str], name: str) -> str | None:
    """The value of --name given as `--name=v` or `--name v` (the last one wins, as in absl)."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def _config_path(mode: str, config_spec: str | None, workdir: str | None) -> str:
    """Which config a command runs: --config; else the run in --workdir (eval and sample need
    one; train resumes one); else configs/default.py."""
    from dlx.errors import UserError

    if config_spec is not None:
        if not os.path.exists(config_spec.split(":", 1)[0]):
            raise UserError(
                f"config file {config_spec.split(':', 1)[0]} does not exist; see "
                f"configs/ for the choices"
            )
        return config_spec
    saved = os.path.join(workdir, "config.json") if workdir else None
    if mode in ("eval", "sample", "predict"):
        if workdir is None:
            raise UserError(f"{mode} needs --workdir (the run to {mode} from)")
        if not os.path.isdir(workdir):
            raise UserError(
                f"--workdir {workdir} does not exist; give the workdir of a trained run"
            )
        if not os.path.exists(saved):
            raise UserError(
                f"{workdir} holds no run (no config.json); give the --workdir of a trained run"
            )
        return saved
    if saved and os.path.exists(saved):
        return saved  # resume the run with its own config
    if workdir is None:
        return DEFAULT_CONFIG
    raise UserError(
        f"{workdir} holds no run to resume; give --config (e.g. --config "
        f"{DEFAULT_CONFIG}) to start one there"
    )


def _load_config(path: str, overrides: list[str]):
    from dlx.errors import UserError
    from dlx.train import config as config_lib

    try:
        config = config_lib.load(path)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (errors raised by the config file's get_config)
        raise UserError(f"cannot load config {path}: {e}") from None
    config_lib.prepare_overrides(
        config,
        [
            arg[len("--config.") :].split("=", 1)[0]
            for arg in overrides
            if arg.startswith("--config.")
        ],
    )
    return config


def _parse_flags(config, args: list[str], program: str, positional: bool = False):
    """A fresh absl FlagValues (main() can run many times in one process) holding the launcher
    flags and the config with its --config.* overrides applied; with `positional`, also the
    arguments that are not flags (predict's image files)."""
    from absl import flags
    from ml_collections import config_flags

    from dlx.errors import UserError

    values = flags.FlagValues()
    argv = [program, *args]
    config_flags.DEFINE_config_dict(
        "config", config, flag_values=values, lock_config=True, sys_argv=argv
    )
    for flag in FLAGS:
        default = flag.default
        if flag.name == "distributed":
            default = bool(os.environ.get("DLX_DISTRIBUTED"))
        getattr(flags, f"DEFINE_{flag.kind}")(flag.name, default, flag.help, flag_values=values)
    try:
        extra = values(argv)[1:]
    except Exception as e:  # noqa: BLE001 (absl's flags.Error, ml_collections' bad values)
        raise UserError(str(e).replace("\n", " ")) from None
    if positional:
        return values, extra
    if extra:
        raise UserError(
            f"unexpected argument {extra[0]!r}; modes come first ({', '.join(MODES)}) "
            f"and flags are --name=value"
        )
    return values


def _check_processes(values) -> None:
    """A multi-process run needs a coordinator; without one each process would train alone."""
    from dlx.errors import UserError

    explicit = values.num_processes is not None or values.process_id is not None
    if values.distributed:
        return  # the cluster names the coordinator; explicit values are passed on
    if explicit and not values.coordinator_address:
        raise UserError(
            "--num_processes/--process_id need --coordinator_address host:port (of "
            "process 0), or --distributed in a SLURM or TPU cluster; without it every "
            "process would train alone into the same workdir"
        )
    if values.coordinator_address:
        if values.num_processes is None or values.process_id is None:
            raise UserError("--coordinator_address needs --num_processes and --process_id")
        if values.num_processes < 1 or not 0 <= values.process_id < values.num_processes:
            raise UserError(
                f"--process_id={values.process_id} must be in 0 .. "
                f"{values.num_processes - 1} (--num_processes={values.num_processes})"
            )


def _start_processes(values) -> None:
    import jax

    if not (values.coordinator_address or values.distributed):
        return
    try:
        jax.distributed.initialize(
            values.coordinator_address, values.num_processes, values.process_id
        )
    except (ValueError, RuntimeError) as e:
        message = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        if values.distributed and not values.coordinator_address:
            _fail(
                f"--distributed found no cluster to join (SLURM, Open MPI, TPU pod and "
                f"Kubernetes are detected): {message}. Outside one pass --coordinator_address "
                f"host:port --num_processes N --process_id i"
            )
        _fail(f"cannot join the multi-process run at {values.coordinator_address}: {message}")
    from jax._src import distributed

    coordinator = distributed.global_state.coordinator_address or values.coordinator_address
    print(
        f"process {jax.process_index()}/{jax.process_count()}, coordinator {coordinator}: "
        f"{jax.local_device_count()} of {jax.device_count()} {jax.default_backend()} devices",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------
# --help
# ------------------------------------------------------------------------------------------------
USAGE = """\
usage: launch.py [MODE] [--config FILE.py[:VARIANT] | --config RUN/config.json] [--workdir DIR]
                 [--config.KEY=VALUE ...] [flags]

Without --config: train resumes the run in --workdir with its own config.json, eval and sample
read the run's config.json, and a plain `launch.py` trains configs/default.py into runs/default.
Bad input is one `error:` line and exit code 2, before anything is written."""


def _flags_help(sample: bool) -> list[str]:
    lines = []
    for flag in FLAGS:
        if flag.sample == sample:
            name = f"--{flag.name}"
            default = "" if flag.default is None else f" (default: {flag.default})"
            lines.append(f"  {name:<24}{flag.help}{default}")
    return lines


def _flat_items(node, prefix: str = "") -> list[tuple[str, Any]]:
    import ml_collections

    items = []
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            items += _flat_items(value, f"{prefix}{key}.")
        else:
            items.append((prefix + key, value))
    return items


def _config_help(config, path: str) -> list[str]:
    """Every --config.* key of `config` with its value, grouped: the runner's keys, the task's
    own group(s), the model's fields (also those the config leaves at the model's default)."""
    from dlx import models
    from dlx.train import config as config_lib

    runner_keys = {key for key, _ in _flat_items(config_lib.runner_config())}
    task_keys = {key for key, _ in _flat_items(config_lib.base_config(config.task))} - runner_keys
    items = _flat_items(config)
    model_name = config.model.get("name")
    model_items = [(key, value) for key, value in items if key.startswith("model.")]
    if model_name in models.available():
        given = {key for key, _ in model_items}
        model_items += [
            (f"model.{field}", value)
            for field, value in models.model_defaults(model_name).items()
            if f"model.{field}" not in given
        ]
    groups = [
        ("runner", [(k, v) for k, v in items if k in runner_keys and not k.startswith("model.")]),
        (f"task '{config.task}'", [(k, v) for k, v in items if k in task_keys]),
        (f"model '{model_name}' (--config.model.FIELD sets any field of the model)", model_items),
    ]
    other = [
        (k, v) for k, v in items if k not in runner_keys | task_keys and not k.startswith("model.")
    ]
    if other:
        groups.append(("other keys in the config", other))
    width = max((len(key) for _, group in groups for key, _ in group), default=0) + 12
    lines = [f"config keys of {path} and their values (set with --config.KEY=VALUE):"]
    for title, group in groups:
        lines.append(f" {title}:")
        lines += [f"  {'--config.' + key:<{width}}{value!r}" for key, value in group]
    return lines


def _help(mode: str, config_spec: str | None, args: list[str]) -> None:
    lines = [USAGE, "", "modes:"]
    lines += [f"  {name:<8}{text}" for name, text in MODES.items()]
    config_flag = (
        "  --config                config file (FILE.py or FILE.py:VARIANT) or a run's config.json"
    )
    lines += ["", "flags:", config_flag, *_flags_help(sample=False)]
    lines += [
        "",
        "sample flags (unset ones come from the run's config):",
        *_flags_help(sample=True),
    ]
    print("\n".join(lines), flush=True)
    from dlx.errors import UserError

    try:
        path = _config_path(mode, config_spec, _flag_value(args, "workdir"))
        config = _parse_flags(_load_config(path, args), args, "launch.py").config
    except UserError as e:  # the config part of the help cannot be shown
        _fail(str(e))
    print("\n" + "\n".join(_config_help(config, path)), flush=True)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """Runs the command line `argv` (argv[0] is the program). Exits with code 2 and one
    `error:` line on bad input, 1 when the loss became NaN/Inf."""
    program, args = argv[0], list(argv[1:])
    mode = "train"
    if args and not args[0].startswith("-"):  # the mode, if given, comes first
        mode, args = args[0], args[1:]
        if mode not in MODES:
            _fail(f"unknown mode '{mode}'; use one of {', '.join(MODES)} (--help lists them)")
    if mode == "pipeline":  # its own arguments (no config): dlx/pipelines.py
        from dlx.errors import UserError
        from dlx.pipelines import main as pipeline_main

        try:
            pipeline_main(args)
        except UserError as e:
            _fail(str(e))
        return
    config_spec, args = _config_argument(args)
    if any(arg in HELP_FLAGS for arg in args):
        _help(mode, config_spec, [arg for arg in args if arg not in HELP_FLAGS])
        return

    from dlx.errors import UserError

    workdir = _flag_value(args, "workdir")
    try:
        path = _config_path(mode, config_spec, workdir)
        if mode == "predict":
            values, image_files = _parse_flags(
                _load_config(path, args), args, program, positional=True
            )
            if not image_files:
                raise UserError(
                    "predict needs image files after the flags: launch.py predict "
                    "--workdir W image.png [more.png ...]"
                )
            missing = [f for f in image_files if not os.path.isfile(f)]
            if missing:
                raise UserError(f"image file {missing[0]} does not exist")
        else:
            values = _parse_flags(_load_config(path, args), args, program)
        _check_processes(values)
    except UserError as e:
        _fail(str(e))
    if workdir is None and mode == "train" and path != DEFAULT_CONFIG:
        _fail("give --workdir (where this run's checkpoints and metrics go)")
    _start_processes(values)

    import jax

    from dlx.train import loop, provenance

    provenance.set_command(argv)
    config = values.config
    try:
        if mode == "sample":
            from dlx import inference

            options = {
                name: values[name].value for name in SAMPLE_FLAGS if values[name].value is not None
            }
            inference.load(values.workdir, config, sample_options=options).sample(options)
            return
        if mode == "predict":
            from dlx import inference

            inference.load(values.workdir, config, predicts_images=True).predict_images(image_files)
            return
        if mode == "eval":
            metrics = loop.evaluate(config, values.workdir)
            if jax.process_index() == 0:
                print(json.dumps(metrics, indent=2))
            return
        summary = loop.train_and_evaluate(config, values.workdir)
    except UserError as e:
        _fail(str(e))
    except loop.NonFiniteError as e:
        _fail(str(e), code=1)
    if jax.process_index() == 0 and "stopped_at" not in summary:
        final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final_eval"].items())
        print(
            f"Done: {final} after {summary['steps']} steps in {summary['wall_time_s']:.0f} s. "
            f"Results in {os.path.abspath(values.workdir)} (summary.json, metrics.jsonl, plots/)."
        )


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    try:
        reexec_with_malloc_policy()  # first: glibc reads its malloc settings at process start
    except ValueError as e:
        _fail(str(e))
    main(sys.argv)
