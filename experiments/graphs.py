"""Study: semi-supervised node classification on real graphs, a GCN against logistic regression
of each node's adjacency row, over 10 seeds.

    python experiments/graphs.py [--seeds 10] [--out runs/experiments/graphs] \
        [--report_dir experiments/results/graphs]

Every arm is an ordinary run of `configs/graph_gcn.py` (a variant, plus overrides); seed s sets
both `config.seed` (initial weights, dropout) and `config.graph.split_seed` (which nodes are
labelled; the karate club's classic split, the instructor and the administrator, is fixed, so
there only the initialisation changes). Test accuracy is over every unlabelled node. The
hyperparameters are the configs' (Kipf & Welling's: Adam 0.01, dropout 0.5, L2 5e-4, ~200
steps), the same for both arms and not tuned: with one labelled node per class there is no
validation set to tune on. The baseline is the same task with no graph layer
(`model.conv="none"`, no hidden layer): softmax regression of the adjacency row, trained with
the same optimizer and L2 penalty. Re-running skips finished runs and rewrites the report,
the figure and results.json; `--quick` is the test suite's version (the karate club only, two
seeds, 20 steps).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import common  # noqa: E402

CONFIG = "configs/graph_gcn.py"
LOGREG = {
    "graph.features": "adjacency",
    "model.conv": "none",
    "model.hidden": (),
    "model.dropout": 0.0,
}
# (graph, what is labelled, config variant); each is run as a GCN and as the baseline
GRAPHS = (
    ("karate_club", "club; nodes 0 and 33 labelled", ""),
    ("karate_club", "4 communities; 1 labelled per community", "community"),
    ("drosophila_connectome", "4 cell types; 10 labelled per type", "connectome"),
    ("les_miserables", "6 communities; 1 labelled per community", "les_miserables"),
)
ARMS = {"gcn": {}, "logreg": LOGREG}
EXTRA_ARMS = {("connectome", "gat"): "connectome_gat"}  # graph attention on the connectome


def run_arm(variant: str, arm: str, seed: int, out: Path, quick: bool) -> dict[str, float]:
    spec = CONFIG + (f":{variant}" if variant else "")
    overrides = {"seed": seed, "graph.split_seed": seed, **ARMS.get(arm, {})}
    if (variant, arm) in EXTRA_ARMS:
        spec = f"{CONFIG}:{EXTRA_ARMS[variant, arm]}"
    if quick:
        overrides.update(train_steps=20, eval_every_steps=10, checkpoint_every_steps=20)
    workdir = out / (variant or "club") / arm / f"seed_{seed}"
    common.launch_run(spec, workdir, overrides, f"{variant or 'club'} {arm} seed {seed}")
    return common.final_eval(workdir)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default="runs/experiments/graphs")
    parser.add_argument("--report_dir", default="experiments/results/graphs")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    out, report_dir = Path(args.out), Path(args.report_dir)
    common.use_compilation_cache(out)
    graphs = GRAPHS[:1] if args.quick else GRAPHS
    seeds = range(2 if args.quick else args.seeds)

    results: dict[str, dict] = {}
    for name, labelled, variant in graphs:
        arms = [*ARMS, *(arm for (v, arm) in EXTRA_ARMS if v == variant)]
        row = results.setdefault(variant or "club", {"graph": name, "labelled": labelled})
        for arm in arms:
            row[arm] = [run_arm(variant, arm, seed, out, args.quick)["accuracy"] for seed in seeds]

    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results, indent=1))
    figures = []
    for key in results:
        source = out / key / "gcn" / "seed_0" / "plots" / "embedding.png"
        if source.exists():
            figures.append(f"embedding_{key}.png")
            shutil.copyfile(source, report_dir / figures[-1])

    lines = [
        "# Node classification: GCN vs logistic regression on adjacency rows",
        "",
        f"Test accuracy over the unlabelled nodes, mean ± standard deviation over {len(seeds)} "
        "seeds (each seed: initial weights and, where drawn, the labelled nodes).",
        "",
        "| graph | labels | GCN | graph attention | logistic regression (adjacency row) |",
        "|---|---|---|---|---|",
    ]
    for row in results.values():
        cells = [
            common.format_mean_spread(row[arm], percent=True, digits=1) if arm in row else "-"
            for arm in ("gcn", "gat", "logreg")
        ]
        lines.append(f"| {row['graph']} | {row['labelled']} | {' | '.join(cells)} |")
    lines += ["", *(f"![{f}]({f})" for f in figures), ""]
    command = "python experiments/graphs.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    common.write_report(report_dir, lines, f"{out}/<graph>/<arm>/seed_<s>", command.strip())
    print((report_dir / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
