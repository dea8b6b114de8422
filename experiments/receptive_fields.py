"""Study: theoretical and effective receptive fields of the Fashion-MNIST CNN and ResNet-20, at
initialisation and after a short training.

    python experiments/receptive_fields.py [--cnn_epochs 1] [--resnet_steps 300] \
        [--images 256] [--out runs/experiments/receptive_fields] \
        [--report_dir experiments/results/receptive_fields]

The theoretical receptive field of a unit is every input pixel it can depend on
(dlx/models/receptive_field.py over the model's `layer_stack`). The effective one (Luo et al.
2016) is where the dependence actually lies: the gradient of the centre unit of a hidden layer's
output map (the sum over its channels) with respect to the input image, |grad| averaged over
`--images` test images, in eval mode (batch norm with its running statistics, no dropout). Its
size here is the side of the smallest square, centred on the theoretical field's centre, that
holds 95% of the |grad| mass. Each model trains from three seeds (ordinary `launch.py` runs,
their config's learning rate: this study compares no arms by accuracy, so there is no sweep);
"at initialisation" is each seed's initial state. `configs/fashion_cnn.py` trains
`--cnn_epochs` epochs; `configs/fashion_resnet.py` (ResNet-20) `--resnet_steps` steps with a
warm-up of a sixth of them, a short budget next to its 40 epochs. Re-running skips finished
runs and rewrites the report, figure and results.json. `--quick` is the test suite's version
(the configs' `:test` variants on 1,000 training images, 2 channels wide, the ResNet 4 steps,
one seed, 32 images).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

MODELS = {"cnn": "configs/fashion_cnn.py", "resnet": "configs/fashion_resnet.py"}
QUICK_MODELS = {"cnn": "configs/fashion_cnn.py:test", "resnet": "configs/fashion_resnet.py:test"}
# On top of QUICK_MODELS: a slice of the training set (read in a moment, where all of it takes
# seconds), one checkpoint per run, and narrow models (the smallest ResNet, depth 8, has one
# block a stage), whose programs compile faster: the compiles are most of a quick run's time.
QUICK_OVERRIDES = {
    "cnn": {
        "data.train_split": "train[:1000]",
        "data.eval_split": "test[:200]",
        "model.features": (2, 2),
        "model.dense": (4,),
    },
    "resnet": {
        "data.train_split": "train[:1000]",
        "data.eval_split": "test[:200]",
        "model.widths": (2, 2, 2),
        "train_steps": 4,
        "eval_every_steps": 4,
        "checkpoint_every_steps": 4,
    },
}
MASS = 0.95  # the share of |grad| the effective receptive field holds
CORE = 0.5  # a second, tighter measure: the square holding half of it


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def train_overrides(model: str, args) -> dict:
    if args.quick:
        return {**QUICK_OVERRIDES[model], "progress_bar": False}
    if model == "cnn":
        return {"num_epochs": args.cnn_epochs, "progress_bar": False}
    steps = args.resnet_steps
    return {
        "num_epochs": 0.0,
        "train_steps": steps,
        "optimizer.warmup_steps": max(1, steps // 6),
        "eval_every_epochs": 0.0,
        "eval_every_steps": steps,
        "checkpoint_every_epochs": 0.0,
        "checkpoint_every_steps": steps,
        "log_every_steps": min(50, steps),
        "progress_bar": False,
    }


def train(model: str, config: str, seed: int, args) -> Path:
    workdir = Path(args.out) / model / f"seed_{seed}"
    overrides = {**train_overrides(model, args), "seed": seed}
    return common.launch_run(config, workdir, overrides, f"{model} seed={seed}")


# ------------------------------------------------------------------------------------------------
# Theoretical fields: size from dlx.models.receptive_field, position walked here
# ------------------------------------------------------------------------------------------------
def field_start(layers: list, input_size: int) -> int:
    """The input coordinate of the first pixel in the field of output unit 0 after `layers`
    (negative: the field reaches into the zero padding)."""
    from dlx.models.receptive_field import output_size

    size, jump, start = input_size, 1, 0
    for layer in layers:
        span = layer.dilation * (layer.kernel - 1) + 1
        if layer.padding == "SAME":  # lax's: the odd pixel of the padding goes after
            out = math.ceil(size / layer.stride)
            low = max((out - 1) * layer.stride + span - size, 0) // 2
        else:
            low = 0 if layer.padding == "VALID" else int(layer.padding)
        start -= low * jump
        size = output_size(layer, size)
        jump *= layer.stride
    return start


def stack_index(family: str, stack: list, layer: str, size: int, image: int) -> int:
    """The index in the model's `layer_stack` whose output the hidden layer `layer` (recorded
    under that name, `size` pixels a side, from an `image`-pixel input) is."""
    from dlx.models.receptive_field import output_size

    sizes, current = [], image
    for entry in stack:
        current = output_size(entry, current)
        sizes.append(current)
    if family == "cnn":  # conv_i: its conv, or the pool after it when the model pools first
        i = layer.rsplit("_", 1)[1]
        matches = [k for k, e in enumerate(stack) if e.name.endswith(f"_{i}") and sizes[k] == size]
    elif layer == "stem":
        matches = [k for k, e in enumerate(stack) if e.name == "stem_conv"]
    else:
        matches = [k for k, e in enumerate(stack) if e.name.startswith(layer + "/")]
    if not matches:
        raise ValueError(f"no layer of the stack matches '{layer}' ({size} pixels)")
    return matches[-1]


def theory(family: str, model, layer: str, size: int, image: int) -> dict:
    """The theoretical field of `layer`'s centre unit: its side and its box in input pixels
    (rows = columns: square images, square kernels), unclipped and clipped to the image."""
    from dlx.models.receptive_field import receptive_fields

    stack = importlib.import_module(f"dlx.models.{family}").layer_stack(model)
    index = stack_index(family, stack, layer, size, image)
    field = receptive_fields(stack[: index + 1], image)[-1]
    centre_unit = (size - 1) // 2
    low = field_start(stack[: index + 1], image) + centre_unit * field.jump
    high = low + field.receptive_field - 1
    return {
        "side": field.receptive_field,
        "box": (low, high),
        "clipped": (max(low, 0), min(high, image - 1)),
        "centre": (low + high) / 2,
    }


# ------------------------------------------------------------------------------------------------
# Effective fields
# ------------------------------------------------------------------------------------------------
def spatial_layers(family: str, names: list[str]) -> list[str]:
    """The hidden layers measured: every conv stage of the CNN; the last block of each ResNet
    stage."""
    if family == "cnn":
        return [n for n in names if n.startswith("conv_")]
    last = {}
    for name in names:
        if "_block" in name:
            last[name.split("_block")[0]] = name
    return list(last.values())


def gradient_maps_fn(apply_fn):
    """A jitted (variables, images) -> ({layer: mean over images of |d centre unit / d image|,
    summed over input channels}, {layer: output side}) for every spatial hidden layer."""
    import jax
    import jax.numpy as jnp

    from dlx.layers import activations

    def hidden(variables, x):
        with activations.recording_activations() as recorded:
            apply_fn(variables, x, train=False)
        return recorded

    def sides(variables, x) -> dict[str, int]:
        shapes = jax.eval_shape(hidden, variables, x)
        return {name: s.shape[1] for name, s in shapes.items() if len(s.shape) == 4}

    @jax.jit
    def maps(variables, x):
        out = {}
        for name, side in sides(variables, x).items():  # dense layers have no position

            def centre_sum(x, name=name, centre=(side - 1) // 2):
                return hidden(variables, x)[name][:, centre, centre, :].sum()

            out[name] = jnp.abs(jax.grad(centre_sum)(x)).sum(-1).mean(0)
        return out

    def run(variables, x):
        return jax.device_get(maps(variables, x)), sides(variables, x)

    return run


def effective_square(grad_map: np.ndarray, centre: float, mass: float) -> tuple[int, int] | None:
    """(first, last) pixel, along both axes and inside the image, of the smallest square centred
    on (centre, centre) that holds `mass` of the map's total (None for an all-zero map)."""
    total = float(grad_map.sum())
    if total <= 0:
        return None
    rows, cols = np.indices(grad_map.shape)
    distance = np.maximum(np.abs(rows - centre), np.abs(cols - centre))
    for level in np.unique(distance):
        if grad_map[distance <= level].sum() >= mass * total * (1 - 1e-6):
            break
    return max(math.ceil(centre - level), 0), min(math.floor(centre + level), len(grad_map) - 1)


def effective_side(grad_map: np.ndarray, centre: float, mass: float = MASS) -> float:
    """The side of `effective_square` (NaN for an all-zero map)."""
    square = effective_square(grad_map, centre, mass)
    return math.nan if square is None else float(square[1] - square[0] + 1)


def outside_box(grad_map: np.ndarray, box: tuple[int, int]) -> float:
    """The largest |grad| outside the square box (inclusive pixel bounds)."""
    inside = np.zeros(grad_map.shape, bool)
    inside[box[0] : box[1] + 1, box[0] : box[1] + 1] = True
    return float(grad_map[~inside].max()) if (~inside).any() else 0.0


def measure(workdir: Path, count: int, cache: dict) -> dict:
    """One run's gradient maps ({"init": {layer: map}, "trained": {layer: map}}), its layers'
    output sides, its model and model family. `cache` keeps one compiled function per family."""
    from dlx import data, inference
    from dlx.tasks.base import model_inputs
    from dlx.train import loop

    bundle = inference.load(str(workdir))
    config = bundle.config
    source = data.source(config.data.name, f"test[:{count}]", config.data.data_dir or None)
    images = model_inputs(data.read_rows(source, np.arange(len(source))))
    family = config.model.name
    if family not in cache:  # one compilation per model, whatever the seed
        cache[family] = gradient_maps_fn(bundle.state.apply_fn)
    maps = {}
    with loop._tracing_context(bundle.run.mesh, config):
        for when, state in (("init", loop.init_state(bundle.run)), ("trained", bundle.state)):
            variables = {"params": state.params, **state.model_state}
            maps[when], sides = cache[family](variables, images)
    return {"maps": maps, "sides": sides, "model": bundle.task.model, "family": family}


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------
def analyse(measured: dict[str, list[dict]], image: int) -> dict:
    """Per model and layer: the theory, each seed's effective side and outside-the-box maximum
    at init and after training, and the seed-mean maps."""
    rows = {}
    for family, seeds in measured.items():
        first = seeds[0]
        for layer in spatial_layers(family, list(first["maps"]["init"])):
            size = first["sides"][layer]
            field = theory(family, first["model"], layer, size, image)
            row = {"family": family, "layer": layer, "output_side": size, **field}
            for when in ("init", "trained"):
                maps = [np.asarray(s["maps"][when][layer], dtype=np.float64) for s in seeds]
                row[f"{when}_side"] = [effective_side(m, field["centre"]) for m in maps]
                row[f"{when}_core"] = [effective_side(m, field["centre"], CORE) for m in maps]
                row[f"{when}_outside"] = [outside_box(m, field["clipped"]) for m in maps]
                row[f"{when}_map"] = np.mean(maps, axis=0)
            rows[f"{family}/{layer}"] = row
    return rows


def plot_maps(rows: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(rows), 2, figsize=(7.2, 3.3 * len(rows)), squeeze=False)
    for axes_row, (name, row) in zip(axes, rows.items()):
        for ax, when in zip(axes_row, ("init", "trained")):
            grad_map = row[f"{when}_map"]
            ax.imshow(grad_map, cmap="magma")
            low, high = row["clipped"]
            ax.add_patch(
                Rectangle(
                    (low - 0.5, low - 0.5),
                    high - low + 1,
                    high - low + 1,
                    fill=False,
                    ec="cyan",
                    lw=1.5,
                )
            )
            square = effective_square(grad_map, row["centre"], MASS)
            side = math.nan if square is None else square[1] - square[0] + 1
            if square is not None:
                corner = square[0] - 0.5
                ax.add_patch(
                    Rectangle((corner, corner), side, side, fill=False, ec="w", lw=1, ls="--")
                )
            label = "initialisation" if when == "init" else "trained"
            ax.set_title(
                f"{name} ({label})\ntheoretical {row['side']}, {MASS:.0%} square of the seeds' "
                f"mean map {side:g}",
                fontsize=8,
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"mean |d centre unit / d image|: theoretical field (cyan), {MASS:.0%} square (white)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(
    rows: dict, runs: dict[str, list[Path]], args, seconds: dict[str, float], command: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")

    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_maps(rows, report_dir / "effective_fields.png")
    serialisable = {
        name: {k: v for k, v in row.items() if not k.endswith("_map")} for name, row in rows.items()
    }
    (report_dir / "results.json").write_text(json.dumps(serialisable, indent=1) + "\n")

    lines = ["# Theoretical and effective receptive fields", ""]
    for family, workdirs in runs.items():
        config = json.loads((workdirs[0] / "config.json").read_text())
        summary = json.loads((workdirs[0] / "summary.json").read_text())
        accuracy = [common.final_eval(w).get("accuracy", math.nan) for w in workdirs]
        lines.append(
            f"- `{family}` from `{config_spec(family, args)}`: {summary['steps']} steps of batch "
            f"{config['data']['batch_size']} ({summary['epochs']:.2f} epochs, "
            f"{config['optimizer']['name']} at peak learning rate "
            f"{config['optimizer']['learning_rate']:g}, the config's), test accuracy after it "
            f"{common.format_mean_spread(accuracy, percent=True)} on `{config['data']['eval_split']}`."
        )
    lines += [
        "",
        f"Seeds {', '.join(map(str, args.seeds))}; each map is the mean of |grad| over "
        f"{args.images} test images; the effective side is that of the smallest square, "
        f"centred on the theoretical field's centre, holding {MASS:.0%} of the map's sum (the "
        f"core side: {CORE:.0%}); sizes are mean ± sample std over the seeds. The "
        f"theoretical field is clipped to the {args.image_side}-pixel image where it reaches "
        f"beyond (the rest is zero padding). No learning-rate sweep: no arms are compared by "
        f"accuracy here. Training took {seconds['training'] / 60:.1f} min (the runs' wall "
        f"time), measuring {seconds['measuring'] / 60:.1f} min, on this machine.",
        "",
        f"| model / layer | output side | theoretical field | clipped to the image | effective "
        f"side ({MASS:.0%}) at init | trained | core side ({CORE:.0%}) at init | trained | "
        f"largest gradient outside the theoretical field |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        low, high = row["clipped"]
        outside = max(row["init_outside"] + row["trained_outside"])
        lines.append(
            f"| {name} | {row['output_side']} | {row['side']} | {high - low + 1} | "
            f"{common.format_mean_spread(row['init_side'], digits=1)} | "
            f"{common.format_mean_spread(row['trained_side'], digits=1)} | "
            f"{common.format_mean_spread(row['init_core'], digits=1)} | "
            f"{common.format_mean_spread(row['trained_core'], digits=1)} | {outside:g} |"
        )
    lines += ["", "![effective receptive fields](effective_fields.png)", ""]
    lines += findings(rows, runs)
    return common.write_report(report_dir, lines, f"{args.out}/<model>/seed_<s>", command)


def config_spec(family: str, args) -> str:
    if not args.quick:
        return MODELS[family]
    model = {k: v for k, v in QUICK_OVERRIDES[family].items() if k.startswith("model.")}
    return " ".join([QUICK_MODELS[family], *(f"--config.{k}={v}" for k, v in model.items())])


def findings(rows: dict, runs: dict[str, list[Path]]) -> list[str]:
    """The expected/measured section, every measured sentence computed from the numbers."""
    lines = [
        "## What we expected / what we measured",
        "",
        "Expected: no gradient outside the theoretical field (none can reach it); inside it, "
        "the gradient concentrates near the centre (the many paths through the middle of a "
        "stack of convolutions add up, roughly a Gaussian: Luo et al. 2016), so the effective "
        "field is a fraction of the theoretical one and grows more slowly with depth; training "
        "widens it.",
        "",
        "Measured:",
        "",
    ]
    for name, row in rows.items():
        low, high = row["clipped"]
        clipped = high - low + 1
        init, trained, init_core, trained_core = (
            common.mean_spread(row[key])[0]
            for key in ("init_side", "trained_side", "init_core", "trained_core")
        )
        outside = max(row["init_outside"] + row["trained_outside"])
        change = "wider" if trained > init else ("narrower" if trained < init else "the same size")
        lines.append(
            f"- {name}: the gradient outside the theoretical field is "
            + ("exactly 0" if outside == 0 else f"up to {outside:g}")
            + f"; {MASS:.0%} of it lies in a square of side {init:.1f} at initialisation and "
            f"{trained:.1f} after training ({change}), against {row['side']} in theory "
            f"({clipped} inside the image): {init / clipped:.0%} and {trained / clipped:.0%} of "
            f"the clipped side; {CORE:.0%} of it within side {init_core:.1f} and "
            f"{trained_core:.1f}."
        )
    for family, workdirs in runs.items():
        config = json.loads((workdirs[0] / "config.json").read_text())
        if config["model"].get("zero_init_residual"):
            lines.append(
                f"- {family} starts each residual block as its shortcut (`zero_init_residual`: "
                f"the block's last batch-norm scale is 0), so at initialisation the gradient "
                f"reaches the image through the shortcuts and the stem alone: its effective "
                f"field then is the stem's, whatever the depth."
            )
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn_epochs", type=float, default=1.0)
    parser.add_argument("--resnet_steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=256, help="test images averaged over")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--out", default="runs/experiments/receptive_fields")
    parser.add_argument("--report_dir", default="experiments/results/receptive_fields")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the configs' :test variants, narrower, seed 0, 32 images",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.images = [0], 32
    common.use_compilation_cache(Path(args.out))
    import time

    Path(args.out).mkdir(parents=True, exist_ok=True)
    configs = QUICK_MODELS if args.quick else MODELS
    runs = {m: [train(m, configs[m], seed, args) for seed in args.seeds] for m in args.only}
    started = time.perf_counter()
    cache: dict = {}
    measured = {
        m: [measure(w, args.images, cache) for w in workdirs] for m, workdirs in runs.items()
    }
    first = measured[args.only[0]][0]
    args.image_side = next(iter(first["maps"]["init"].values())).shape[0]
    rows = analyse(measured, args.image_side)
    seconds = {
        "training": sum(
            json.loads((w / "summary.json").read_text())["wall_time_s"]
            for workdirs in runs.values()
            for w in workdirs
        ),
        "measuring": time.perf_counter() - started,
    }
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "experiments/receptive_fields.py", *given])
    print(f"Report: {report(rows, runs, args, seconds, command)}")


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
