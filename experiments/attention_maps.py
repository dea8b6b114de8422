"""Study: what attention looks at. Grapheme-to-phoneme alignments of the G2P Transformer
(cross-attention of each decoder layer) and of the GRU encoder-decoder (Bahdanau attention) on
test words, rows the phonemes each model emits, columns the word's letters; and the heads of a
character-level GPT on a Shakespeare passage.

    python experiments/attention_maps.py [--seeds 0 1 2] [--transformer_steps 300] \
        [--gru_steps 600] [--gpt_steps 800] [--out runs/experiments/attention_maps] \
        [--report_dir experiments/results/attention_maps]
    python experiments/attention_maps.py --transformer_workdir runs/g2p_transformer \
        --gru_workdir runs/g2p_gru --gpt_workdir runs/gpt_small     # already-trained runs
    python experiments/attention_maps.py --untrained    # the same maps of the initial models

Without a `--*_workdir`, each model is trained here from each of `--seeds` as an ordinary
`launch.py` run of its `:small` config (out/<model>/seed_<seed>), cut to the given step budget
(the full `:small` schedules take 30, 12 and 12 minutes on 2 cores; this study's budget is 30
minutes in all, three seeds included), with its one eval at the end on the G2P test split
(greedy decoding) or the Shakespeare validation split. Tables give the mean ± std over the seeds;
the figures and the GPT's per-head table are the first seed's (heads have no identity across
seeds: the per-block table compares them). The maps come from the models
themselves: with the "intermediates" collection mutable, dlx's attention layers sow their
probabilities (`dlx/layers/attention.py`, `dlx/models/seq2seq.py`). A G2P map is the model's
greedy pronunciation fed back teacher-forced, so row t is the attention while emitting phoneme t.

Alignment score: over the first `--score_words` test words, the fraction of consecutive emitted
phonemes whose most-attended letter does not move backwards (monotone), next to the same
fraction after shuffling each word's most-attended letters (chance at the same letters). GPT
heads: over windows of the validation text, each head's mean attention distance and its mass on
the previous character, on itself and on the first position of the window.

`--untrained` takes the maps of the models as the runner initialises them (`dlx.train.loop`'s
`prepare_run` and `init_state`, seed 0) and trains nothing: what the scores read before any
learning. `--quick` is the test suite's version: `--untrained` on the `:test` configs, a few
words, the parameters drawn with numpy over the runner's layout (no init to compile); it
exercises the extraction, the scores, the figures and the report, not what training learns.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

MODELS = {  # name: (config, what the report calls it)
    "transformer": ("configs/cmudict_transformer.py:small", "G2P Transformer"),
    "gru": ("configs/cmudict_gru_attention.py:small", "GRU + Bahdanau attention"),
    "gpt": ("configs/shakespeare_gpt.py:small", "character GPT"),
}
QUICK_CONFIGS = {
    "transformer": "configs/cmudict_transformer.py:test",
    "gru": "configs/cmudict_gru_attention.py:test",
    "gpt": "configs/shakespeare_gpt.py:test",
}
FIGURE_WORD_LENGTHS = (5, 9)  # letters of the words drawn (the first test words of this range)
PASSAGE_CHARS = 64  # the GPT figure's passage (at most the model's context)
GPT_WINDOWS = 32  # validation windows the head statistics average over
QUICK_PARAM_STD = 0.2  # --quick: the spread of its random parameters


# ---------------------------------------------------------------------------------------------
# Attention maps out of the models
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class G2PMaps:
    """Cross-attention of `words` [N]: maps [N, layers, heads, T, S] (a GRU has one layer and
    one head), row t the weights while emitting `phonemes[i][t]` (then eos), columns the
    letters (then padding, weight 0)."""

    words: list[str]
    phonemes: list[list[str]]
    references: list[str]
    maps: np.ndarray

    def subset(self, rows: slice) -> G2PMaps:
        return G2PMaps(
            self.words[rows], self.phonemes[rows], self.references[rows], self.maps[rows]
        )

    def word_map(self, i: int, layer: int, head: int | None = None) -> np.ndarray:
        """[phonemes, letters] of word i: one head, or (None) the mean over heads."""
        m = self.maps[i, layer]
        m = m.mean(0) if head is None else m[head]
        return m[: len(self.phonemes[i]), : len(self.words[i])]


def sown(intermediates: dict, *path: str) -> np.ndarray:
    node = intermediates
    for key in path:
        node = node[key]
    return np.asarray(node["attention_weights"][0])


def g2p_attention(bundle, rows: dict) -> G2PMaps:
    """Greedy pronunciations of `rows` (a G2P source's rows) and the attention that made them."""
    import jax

    from dlx.models import transformer
    from dlx.tasks import decoding

    task, model = bundle.task, bundle.task.model
    letters, phones = task.input_vocab, task.target_vocab
    variables = {"params": jax.device_get(bundle.state.params)}
    inputs = np.asarray(rows["inputs"])
    max_len = rows["targets"].shape[1] - 1
    predicted = np.asarray(
        decoding.greedy_decode(
            model,
            variables,
            inputs,
            bos_id=phones.bos_id,
            eos_id=phones.eos_id,
            max_len=max_len,
        )
    )
    targets_in = np.concatenate([np.full((len(inputs), 1), phones.bos_id), predicted[:, :-1]], 1)
    forward = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))
    intermediates = forward(variables, inputs, targets_in.astype(np.int32))[1]["intermediates"]
    if isinstance(model, transformer.Model):
        layers = model.decoder_layers
        maps = np.stack(
            [sown(intermediates, "decoder", f"h_{i}", "cross_attn") for i in range(layers)], 1
        )
    else:
        maps = sown(intermediates, "decoder")[:, None, None]
    return G2PMaps(
        words=[letters.decode(w, join="") for w in inputs],
        phonemes=[phones.decode(p).split() for p in predicted],
        references=[phones.decode(t) for t in rows["targets"]],
        maps=maps,
    )


def monotone_fraction(maps: G2PMaps, layer: int, head: int | None, seed: int = 0) -> dict:
    """Consecutive emitted phonemes whose most-attended letter does not move backwards: the
    fraction over all such pairs, and the same after shuffling each word's argmax letters."""
    rng = np.random.default_rng(seed)
    monotone = shuffled = pairs = 0
    for i in range(len(maps.words)):
        if len(maps.phonemes[i]) < 2:
            continue
        peaks = maps.word_map(i, layer, head).argmax(-1)
        monotone += int((np.diff(peaks) >= 0).sum())
        shuffled += int((np.diff(rng.permutation(peaks)) >= 0).sum())
        pairs += len(peaks) - 1
    return {
        "monotone": monotone / max(pairs, 1),
        "chance": shuffled / max(pairs, 1),
        "pairs": pairs,
    }


def gpt_attention(bundle, tokens: np.ndarray) -> np.ndarray:
    """[N, layers, heads, T, T]: every block's causal attention on token windows [N, T]."""
    import jax

    model = bundle.task.model
    variables = {"params": jax.device_get(bundle.state.params)}
    forward = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))
    intermediates = forward(variables, np.asarray(tokens, np.int32))[1]["intermediates"]
    return np.stack(
        [sown(intermediates, f"h_{i}", "attn") for i in range(model.num_layers)], axis=1
    )


def head_statistics(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per [layer, head], averaged over windows and query positions 1..T-1: the mean distance
    sum_j p_ij (i - j), and the mass on the previous position, on itself and on position 0."""
    length = maps.shape[-1]
    queries = np.arange(1, length)
    rows = maps[..., 1:, :]  # [N, L, H, T-1, T]
    distance = (rows * (queries[:, None] - np.arange(length)[None, :])).sum(-1)
    return {
        "distance": distance.mean((0, 3)),
        "previous": rows[..., np.arange(length - 1), queries - 1].mean((0, 3)),
        "self": rows[..., np.arange(length - 1), queries].mean((0, 3)),
        "first": rows[..., 0].mean((0, 3)),
    }


# ---------------------------------------------------------------------------------------------
# Runs and data
# ---------------------------------------------------------------------------------------------
def train(name: str, args) -> list[Path]:
    """The model's workdirs: the one given, or a fresh (resumable) run of its config for each
    of `args.seeds` (out/<name>/seed_<seed>)."""
    given = getattr(args, f"{name}_workdir")
    if given:
        return [Path(given)]
    steps = getattr(args, f"{name}_steps")
    overrides = {
        "train_steps": steps,
        "num_epochs": 0.0,
        "eval_every_epochs": 0.0,
        "eval_every_steps": steps,
        "checkpoint_every_epochs": 0.0,
        "checkpoint_every_steps": steps,
        # a third of the cut budget (the Transformer's :small warms up over 500 steps of 20,000)
        "optimizer.warmup_steps": max(1, steps // 3),
        "progress_bar": False,
    }
    if name != "gpt":
        overrides["data.eval_split"] = "test"
    return [
        common.launch_run(
            MODELS[name][0],
            Path(args.out) / name / f"seed_{seed}",
            {**overrides, "seed": seed},
            f"{name} seed={seed}",
        )
        for seed in args.seeds
    ]


def initialised(name: str, args) -> tuple:
    """(an `inference.Bundle` of `name`'s model at step 0, no workdir; how its parameters were
    made): as the runner initialises them (its seed), or with `--quick` drawn from
    N(0, QUICK_PARAM_STD^2) with numpy over the runner's parameter layout."""
    import jax
    import jax.numpy as jnp

    from dlx import inference
    from dlx.train import config as config_lib
    from dlx.train import loop

    config = config_lib.load(QUICK_CONFIGS[name] if args.quick else MODELS[name][0])
    config.progress_bar = False
    if args.quick and name != "gpt":  # the runner encodes the train split's words (seconds)
        config.data.train_split = "train[:1%]"
    run = loop.prepare_run(config)
    if not args.quick:
        how = f"as the runner initialises it (seed {config.seed})"
        return inference.Bundle(config, run.task, loop.init_state(run), 0, run, ""), how
    # The runner's init is one program per model that takes seconds to compile here; --quick
    # checks what is done with the maps, which any parameters of the right layout exercise.
    rng = np.random.default_rng(config.seed)
    params = jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0.0, QUICK_PARAM_STD, leaf.shape), leaf.dtype),
        run.abstract_state.params,
    )
    how = (
        f"with random parameters on the runner's layout (each drawn from "
        f"N(0, {QUICK_PARAM_STD}^2) with numpy, seed {config.seed}; `--quick` compiles no init)"
    )
    state = run.abstract_state.replace(params=params)
    return inference.Bundle(config, run.task, state, 0, run, ""), how


def figure_rows(source, count: int, score_words: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the figure's words, indices of the scored words) in the test split."""
    lengths = (np.asarray(source.read_rows(np.arange(len(source)))["inputs"]) != 0).sum(1)
    low, high = FIGURE_WORD_LENGTHS
    shown = np.flatnonzero((lengths >= low) & (lengths <= high))[:count]
    return shown, np.arange(min(score_words, len(source)))


def passage_and_windows(task, length: int) -> tuple[np.ndarray, list[str]]:
    """[1 + GPT_WINDOWS, length] token windows of the eval split: first the figure's passage (from
    a line start halfway into its first 20,000 tokens), then windows spread over the split; and
    the passage's tokens as text."""
    stream = task.stream(task.config.data.eval_split)
    start = min(10_000, len(stream) // 2)
    newline = task.tokenizer.encode("\n")
    if len(newline) == 1:
        after = np.flatnonzero(stream[start : start + 2_000] == newline[0])
        start += int(after[0]) + 1 if after.size else 0
    starts = [start, *np.linspace(0, len(stream) - length - 1, GPT_WINDOWS).astype(int)]
    windows = np.stack([stream[s : s + length] for s in starts])
    return windows, [task.tokenizer.decode(windows[0, i : i + 1]) for i in range(length)]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label_map(ax, weights: np.ndarray, rows: list[str], columns: list[str], title: str):
    ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=7)


def g2p_figure(maps: G2PMaps, title: str, path: Path) -> None:
    """One row per word; columns: each layer's head-averaged map, then each head of the last
    layer (a single map for the GRU)."""
    plt = _plt()
    count, layers, heads = maps.maps.shape[:3]
    panels = [(layer, None, f"layer {layer}, mean of heads") for layer in range(layers)]
    if heads > 1:
        panels += [(layers - 1, h, f"layer {layers - 1}, head {h}") for h in range(heads)]
    if len(panels) == 1:
        panels = [(0, None, "attention")]
    fig, axes = plt.subplots(
        count, len(panels), figsize=(2.1 * len(panels) + 0.5, 2.3 * count), squeeze=False
    )
    for i in range(count):
        for j, (layer, head, label) in enumerate(panels):
            ax = axes[i, j]
            _label_map(
                ax,
                maps.word_map(i, layer, head),
                maps.phonemes[i],
                list(maps.words[i]),
                f"{label}" if i else f"{label}\n",
            )
            if j == 0:
                ok = "" if " ".join(maps.phonemes[i]) == maps.references[i] else " (wrong)"
                ax.set_ylabel(f"{maps.words[i]}{ok}", fontsize=8)
    fig.suptitle(f"{title}: rows the emitted phonemes, columns the letters", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _visible(char: str) -> str:
    return {"\n": "⏎", " ": "␣"}.get(char, char)


def gpt_figure(maps: np.ndarray, tokens: list[str], path: Path) -> None:
    """Every head of the first and of the last block on the passage [layers, heads, T, T]."""
    plt = _plt()
    layers, heads = maps.shape[:2]
    shown = sorted({0, layers - 1})
    chars = [_visible(c) for c in tokens]
    fig, axes = plt.subplots(
        len(shown), heads, figsize=(3.4 * heads, 3.5 * len(shown)), squeeze=False
    )
    for row, layer in enumerate(shown):
        for head in range(heads):
            _label_map(
                axes[row, head], maps[layer, head], chars, chars, f"layer {layer}, head {head}"
            )
            axes[row, head].tick_params(labelsize=4)
    fig.suptitle("character GPT: rows the query characters, columns the keys (causal)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Origin:
    """Where a model's maps come from: its config (as a dict) and, for a trained run, its
    workdir and summary.json (None: initialised, untrained)."""

    config: dict
    workdir: Path | None = None
    summary: dict | None = None
    num_params: int = 0
    how: str = ""  # untrained: how its parameters were made

    @classmethod
    def trained(cls, workdir: Path) -> Origin:
        summary = json.loads((workdir / "summary.json").read_text())
        config = json.loads((workdir / "config.json").read_text())
        return cls(config, workdir, summary, summary.get("num_params", 0))

    @classmethod
    def untrained(cls, bundle, how: str) -> Origin:
        config = bundle.config.to_dict()
        return cls(config, num_params=bundle.task.num_params(bundle.state), how=how)

    def untrained_line(self, spec: str) -> str:
        return (
            f"`{spec}` {self.how}, {self.num_params:,} parameters, untrained (`--untrained`): "
            f"no training, no eval."
        )


def pct(values) -> str:
    return common.format_mean_spread(list(values), percent=True, digits=1)


def trained_runs(origins: list[Origin]) -> str:
    """ "`w0`, `w1`: ... N steps of batch B (P parameters), M min a run" of trained runs."""
    config, summary = origins[0].config, origins[0].summary
    minutes = common.mean_spread([o.summary["wall_time_s"] / 60 for o in origins])[0]
    return (
        f"{', '.join(f'`{o.workdir}`' for o in origins)}: model `{config['model']['name']}`, "
        f"{summary['steps']} steps of batch {config['data']['batch_size']} "
        f"({origins[0].num_params:,} parameters), {minutes:.1f} min a run"
    )


def g2p_scores(scored: G2PMaps) -> tuple[dict, dict]:
    """(monotone fraction per decoder layer, mean of heads; per (layer, head) where several)."""
    layers, heads = scored.maps.shape[1:3]
    scores = {layer: monotone_fraction(scored, layer, None) for layer in range(layers)}
    head_scores = {
        (layer, h): monotone_fraction(scored, layer, h)
        for layer in range(layers)
        for h in range(heads)
        if heads > 1
    }
    return scores, head_scores


def g2p_section(
    name: str, origins: list[Origin], spec: str, scored: list[G2PMaps], figure: str
) -> tuple:
    """Report lines and the scores of one G2P model, one entry per run (seed) in `origins` and
    `scored`: (lines, [scores per layer], [scores per head])."""
    per_run = [g2p_scores(maps) for maps in scored]
    scores, head_scores = [r[0] for r in per_run], [r[1] for r in per_run]
    config = origins[0].config
    if origins[0].summary is None:
        described = origins[0].untrained_line(spec)
    else:
        finals = [o.summary["final_eval"] for o in origins]
        described = (
            f"{trained_runs(origins)}. On `{config['data']['eval_split']}` "
            f"({'greedy' if config['decoding']['beam_size'] == 1 else 'beam'} decoding): "
            f"phoneme error rate {pct(f['phoneme_error_rate'] for f in finals)}, word error rate "
            f"{pct(f['word_error_rate'] for f in finals)}."
        )
    several = len(scored) > 1
    lines = [
        f"### {MODELS[name][1]}",
        "",
        described,
        "",
        f"| attention | monotone fraction{' (mean ± std over runs)' if several else ''} | "
        "chance (shuffled peaks) |",
        "|---|---|---|",
    ]
    heads = scored[0].maps.shape[2]
    for layer in scores[0]:
        label = f"decoder layer {layer}, mean of heads" if heads > 1 else "attention"
        lines.append(
            f"| {label} | {pct(s[layer]['monotone'] for s in scores)} | "
            f"{pct(s[layer]['chance'] for s in scores)} |"
        )
    if head_scores[0]:
        best = [max(h, key=lambda k: h[k]["monotone"]) for h in head_scores]
        where = ", ".join(f"layer {layer} head {head}" for layer, head in best)
        lines.append(
            f"| best single head ({where}) | "
            f"{pct(h[b]['monotone'] for h, b in zip(head_scores, best))} | "
            f"{pct(h[b]['chance'] for h, b in zip(head_scores, best))} |"
        )
    pairs = next(iter(scores[0].values()))["pairs"]
    lines += [
        "",
        f"Over {len(scored[0].words)} test words ({pairs} consecutive phoneme pairs"
        f"{' in the first run' if several else ''}); the figure is the first run's.",
        "",
        f"![{MODELS[name][1]} attention]({figure})",
        "",
    ]
    return lines, scores, head_scores


def gpt_section(origins: list[Origin], spec: str, stats: list[dict], figure: str) -> list[str]:
    """The GPT's lines: every head of the first run (heads have no identity across seeds), then
    per block over every run (seed)."""
    config, summary = origins[0].config, origins[0].summary
    layers, heads = stats[0]["distance"].shape
    shape = (
        f"{config['model']['num_layers']} layers, {config['model']['embed_dim']} wide, context "
        f"{config['data']['seq_len']}"
    )
    if summary is None:
        described = f"{origins[0].untrained_line(spec)} {shape}."
    else:
        finals = [o.summary["final_eval"] for o in origins]
        loss = common.format_mean_spread([f["loss"] for f in finals], digits=3)
        bits = common.format_mean_spread([f["bits_per_char"] for f in finals], digits=3)
        described = (
            f"{trained_runs(origins)}; {shape}. On `{config['data']['eval_split']}`: loss "
            f"{loss} nats/char, {bits} bits/char."
        )
    first = stats[0]
    lines = [
        f"### {MODELS['gpt'][1]}",
        "",
        described,
        "",
        f"Per head of the first run, over {GPT_WINDOWS} windows of the validation text "
        "(queries 1..T-1):",
        "",
        "| layer | head | mean distance (chars) | on previous char | on itself | on position 0 |",
        "|---|---|---|---|---|---|",
    ]
    for layer in range(layers):
        for head in range(heads):
            lines.append(
                f"| {layer} | {head} | {first['distance'][layer, head]:.1f} | "
                f"{first['previous'][layer, head]:.1%} | {first['self'][layer, head]:.1%} | "
                f"{first['first'][layer, head]:.1%} |"
            )
    lines += [
        "",
        f"Per block, over {len(stats)} run{'s' if len(stats) > 1 else ''} (mean ± std):",
        "",
        "| layer | mean distance, mean of heads (chars) | most-previous head's weight on the "
        "previous char |",
        "|---|---|---|",
    ]
    for layer in range(layers):
        distance = [s["distance"][layer].mean() for s in stats]
        previous = [s["previous"][layer].max() for s in stats]
        lines.append(
            f"| {layer} | {common.format_mean_spread(distance, digits=1)} | {pct(previous)} |"
        )
    return lines + ["", f"![GPT heads]({figure})", ""]


def findings(g2p_scores: dict, gpt_stats: list[dict] | None, trained: bool = True) -> list[str]:
    """The expected/measured section: `g2p_scores` {model: ([scores per layer], [scores per
    head]), one entry per run}, `gpt_stats` one `head_statistics` per run."""
    lines = [
        "## What we expected / what we measured",
        "",
        "Expected: G2P attention close to monotone (English spelling is read left to right; "
        "Bahdanau's alignments are the textbook picture), the Transformer's cross-attention "
        "monotone in some layers and diffuse in others; GPT heads in the first block local (the "
        "previous character), later blocks reaching further back.",
        "",
        "Measured:"
        if trained
        else "Measured on untrained models (`--untrained`: what the "
        "scores read before any learning, not the trained models the expectation is about):",
        "",
    ]
    for name, (scores, head_scores) in g2p_scores.items():
        mean = {
            layer: {k: np.mean([s[layer][k] for s in scores]) for k in ("monotone", "chance")}
            for layer in scores[0]
        }
        best_layer = max(mean, key=lambda k: mean[k]["monotone"])
        where = f"decoder layer {best_layer} (mean of heads)" if head_scores[0] else "its attention"
        gap = mean[best_layer]["monotone"] - mean[best_layer]["chance"]
        verdict = "well above" if gap > 0.1 else ("above" if gap > 0 else "not above")
        line = (
            f"- {MODELS[name][1]}: {where} is monotone for "
            f"{pct(s[best_layer]['monotone'] for s in scores)} of consecutive phonemes, "
            f"{verdict} the {pct(s[best_layer]['chance'] for s in scores)} of shuffled peaks"
        )
        if head_scores[0]:
            worst = min(mean, key=lambda k: mean[k]["monotone"])
            line += (
                f"; its least monotone layer is {worst} "
                f"({pct(s[worst]['monotone'] for s in scores)})"
            )
        lines.append(line + ".")
    if gpt_stats:
        previous = [s["previous"].max() for s in gpt_stats]
        first = [s["distance"][0].mean() for s in gpt_stats]
        last = [s["distance"][-1].mean() for s in gpt_stats]
        further = round(float(np.mean(last)), 1) > round(float(np.mean(first)), 1)
        layers = sorted(
            {
                int(np.unravel_index(s["previous"].argmax(), s["previous"].shape)[0])
                for s in gpt_stats
            }
        )
        lines.append(
            f"- GPT: the head most on the previous character puts {pct(previous)} of its weight "
            f"there (in layer {', '.join(map(str, layers))}); the mean attention distance is "
            f"{common.format_mean_spread(first, digits=1)} characters in the first block and "
            f"{common.format_mean_spread(last, digits=1)} in the last "
            + ("(later blocks reach further back)." if further else "(not further back).")
        )
    return lines + [""]


@dataclasses.dataclass
class Results:
    """What `main` made: the report, each G2P model's maps (the figure's words, then the scored
    ones) and the GPT's [windows, layers, heads, T, T] (the passage first)."""

    report: Path
    g2p: dict[str, G2PMaps]
    gpt: np.ndarray


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in MODELS:
        parser.add_argument(f"--{name}_workdir", default="", help="an already-trained run")
    parser.add_argument("--transformer_steps", type=int, default=300)
    parser.add_argument("--gru_steps", type=int, default=600)
    parser.add_argument("--gpt_steps", type=int, default=800)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="runs per model")
    parser.add_argument("--words", type=int, default=4, help="test words in each figure")
    parser.add_argument("--score_words", type=int, default=1000, help="test words scored")
    parser.add_argument("--out", default="runs/experiments/attention_maps")
    parser.add_argument("--report_dir", default="experiments/results/attention_maps")
    parser.add_argument(
        "--untrained", action="store_true", help="the maps of the initialised models, no training"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--untrained on the :test configs, random parameters, a few words",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.untrained, args.words, args.score_words = True, 2, 64
    if args.untrained:
        args.seeds = [0]  # the runner's initialisation of each model, seed 0
    if args.untrained and any(getattr(args, f"{name}_workdir") for name in MODELS):
        parser.error("--untrained trains nothing and reads no run: leave out the --*_workdir")
    from dlx import inference

    common.use_compilation_cache(Path(args.out))
    start = time.perf_counter()
    workdirs = {} if args.untrained else {name: train(name, args) for name in MODELS}
    training = sum(  # each run's own wall time: a re-run skips finished runs
        json.loads((w / "summary.json").read_text())["wall_time_s"]
        for runs in workdirs.values()
        for w in runs
    )
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = {name: QUICK_CONFIGS[name] if args.quick else MODELS[name][0] for name in MODELS}

    def models(name: str) -> list[tuple]:
        """[(the loaded or initialised model, what the report says of it)], one per run"""
        if args.untrained:
            bundle, how = initialised(name, args)
            return [(bundle, Origin.untrained(bundle, how))]
        return [(inference.load(str(w)), Origin.trained(w)) for w in workdirs[name]]

    lines_g2p, g2p_scores, g2p_maps = [], {}, {}
    for name in ("transformer", "gru"):
        origins, scored_runs = [], []
        for bundle, origin in models(name):
            source = bundle.task.source("test", train=False)
            shown, scored = figure_rows(source, args.words, args.score_words)
            both = g2p_attention(bundle, source.read_rows(np.concatenate([shown, scored])))
            if not origins:  # the figure and the returned maps: the first run's
                g2p_figure(both.subset(slice(len(shown))), MODELS[name][1], out / f"g2p_{name}.png")
                g2p_maps[name] = both
            origins.append(origin)
            scored_runs.append(both.subset(slice(len(shown), None)))
        lines, scores, head_scores = g2p_section(
            name, origins, specs[name], scored_runs, f"g2p_{name}.png"
        )
        lines_g2p += lines
        g2p_scores[name] = (scores, head_scores)

    gpt_origins, stats = [], []
    for bundle, origin in models("gpt"):
        length = min(PASSAGE_CHARS, bundle.task.model.max_len)
        windows, passage = passage_and_windows(bundle.task, length)
        maps = gpt_attention(bundle, windows)
        if not gpt_origins:
            gpt_figure(maps[0], passage, out / "gpt_heads.png")
            gpt_maps = maps
        gpt_origins.append(origin)
        stats.append(head_statistics(maps[1:]))
    seconds = time.perf_counter() - start

    given = sys.argv[1:] if argv is None else argv
    runs = (
        "Untrained models (`--untrained`), seed 0"
        if args.untrained
        else f"Runs per model: seeds {', '.join(map(str, args.seeds))} (tables: mean ± std over "
        f"them); the runs trained for {training / 60:.1f} min in all (each run's own wall time)"
    )
    lines = [
        "# Attention maps: G2P alignments and a character GPT's heads",
        "",
        f"{runs}; this invocation took {seconds / 60:.1f} min. The maps are the models' own attention "
        f"probabilities (eval mode), sown by dlx's attention layers. G2P rows: the phonemes the "
        f"model emits greedily for the word (fed back teacher-forced), then eos is left out; "
        f"words marked (wrong) differ from the primary pronunciation. The monotone fraction "
        f"counts consecutive phonemes whose most-attended letter does not move backwards; "
        f"chance shuffles each word's most-attended letters.",
        "",
        *lines_g2p,
        *gpt_section(gpt_origins, specs["gpt"], stats, "gpt_heads.png"),
        *findings(g2p_scores, stats, trained=not args.untrained),
    ]
    command = shlex.join(["python", "experiments/attention_maps.py", *given])
    runs_at = (
        "none (--untrained trains nothing)"
        if args.untrained
        else f"{args.out}/<transformer|gru|gpt>/seed_<seed>"
    )
    path = common.write_report(out, lines, runs_at, command)
    print(f"Report: {path}")
    return Results(path, g2p_maps, gpt_maps)


if __name__ == "__main__":
    from dlx.runtime import reexec_with_malloc_policy

    reexec_with_malloc_policy()  # as launch.py does: the runs train in this process
    main()
