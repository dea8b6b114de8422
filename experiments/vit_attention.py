"""Study: where a trained Vision Transformer looks. For a few test images, the attention rollout
(Abnar & Zuidema 2020: each block's head-averaged attention plus the residual identity, rows
renormalised, multiplied through the blocks) and the last block's attention of every head, as
heat maps over the patch grid laid on the image.

    python experiments/vit_attention.py --workdir runs/fashion_vit [--images 6] [--out FILE]

The workdir is any trained run of the `vit` model (e.g. `launch.py --config configs/
fashion_vit.py --workdir runs/fashion_vit`), loaded with `dlx.inference.load` from its latest
checkpoint. The maps are the class token's row (pool="cls") or, with mean pooling, the mean of
the patch tokens' rows: what the head reads. The figure goes to <workdir>/plots/
attention_maps.png unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIGURE = "attention_maps.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained run of the vit model")
    parser.add_argument("--images", type=int, default=6, help="test images shown (from the first)")
    parser.add_argument("--out", default="", help=f"the figure (default <workdir>/plots/{FIGURE})")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")
    return args


def rollout(maps: np.ndarray) -> np.ndarray:
    """[layers, batch, heads, T, T] -> [batch, T, T]: how much each token's final representation
    draws on each input token, through the residual stream and every block's attention."""
    tokens = maps.shape[-1]
    joint = np.broadcast_to(np.eye(tokens), maps.shape[1:2] + (tokens, tokens))
    for layer in maps:
        mixed = 0.5 * layer.mean(axis=1) + 0.5 * np.eye(tokens)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        joint = mixed @ joint
    return joint


def pooled_row(attention: np.ndarray, cls: bool) -> np.ndarray:
    """[..., T, T] -> [..., patches]: the weights the pooled token gives the patches."""
    return attention[..., 0, 1:] if cls else attention.mean(axis=-2)


def load_run(workdir: str, count: int):
    """(model, variables, images [N, H, W, C] in [0, 1], labels, class names) of a vit run."""
    import jax

    from dlx import data, inference
    from dlx.models import vit
    from dlx.tasks.base import model_inputs

    bundle = inference.load(workdir)
    model = bundle.task.model
    if not isinstance(model, vit.Model):
        raise SystemExit(f"{workdir} trained model '{bundle.config.model.name}', not a vit")
    config = bundle.config
    source = data.source(config.data.name, config.data.eval_split, config.data.data_dir or None)
    batch = data.read_rows(source, np.arange(min(count, len(source))))
    variables = jax.device_get({"params": bundle.state.params, **bundle.state.model_state})
    names = bundle.task.data_info.class_names or [str(i) for i in range(model.num_outputs)]
    images = np.asarray(model_inputs(batch))
    return model, variables, images, np.asarray(batch["label"]), list(names)


def figure(images, labels, predictions, names, grid, rolled, last, path: Path) -> None:
    """One row per image: the image, the rollout, then each head of the last block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, heads = last.shape[:2]
    height, width = images.shape[1:3]
    columns = 2 + heads
    fig, axes = plt.subplots(count, columns, figsize=(1.6 * columns, 1.7 * count), squeeze=False)

    def overlay(ax, image, weights, title):
        heat = weights.reshape(grid)
        heat = np.kron(heat, np.ones((height // grid[0], width // grid[1])))
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        # each map scaled to its own range: where it looks, not how peaked it is
        ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=heat.min(), vmax=heat.max())
        ax.set_title(title, fontsize=7)

    for i in range(count):
        image = images[i].mean(axis=-1)
        ax = axes[i, 0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ok = "" if predictions[i] == labels[i] else " (wrong)"
        ax.set_title(f"{names[labels[i]]}\npred {names[predictions[i]]}{ok}", fontsize=7)
        overlay(axes[i, 1], image, rolled[i], "rollout")
        for h in range(heads):
            overlay(axes[i, 2 + h], image, last[i, h], f"last block, head {h}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> Path:
    import jax

    from dlx.models import vit

    args = parse_args(argv)
    model, variables, images, labels, names = load_run(args.workdir, args.images)
    maps = np.asarray(jax.jit(vit.attention_maps, static_argnums=0)(model, variables, images))
    logits = np.asarray(jax.jit(model.apply)(variables, images))
    cls = model.pool == "cls"
    rolled = pooled_row(rollout(maps), cls)
    last = pooled_row(maps[-1], cls)
    out = Path(args.out) if args.out else Path(args.workdir) / "plots" / FIGURE
    grid = model.grid(images.shape[1:])
    figure(images, labels, logits.argmax(-1), names, grid, rolled, last, out)
    print(f"attention maps of {len(images)} test images: {out}")
    return out


if __name__ == "__main__":
    main()
