"""Text data as arrays: split texts, language-model windows, and G2P (cmudict) encodings.

    texts = read_texts("shakespeare", "train")
    tokens = np.concatenate([tokenizer.encode(text) for text in texts])
    train = WindowSource(tokens, length=256)                 # every window, stride 1
    batches = train_iterator(train, global_batch_size=64, seed=0)
    valid = WindowSource(valid_tokens, length=256, stride=256)   # tiles, no overlap

    g2p = g2p_source("train")     # ArraySource: "inputs" letters, "targets" bos phonemes eos
    g2p = g2p_source("test", references=True)   # + "references": all pronunciations

A window is `length + 1` tokens: inputs `tokens[:-1]`, targets `tokens[1:]`. `train_iterator`
over a `WindowSource` draws windows by seeded permutation, so its state is just the step and a
restored iterator continues with the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlx.data import prepare, source
from dlx.data.builders import CMUDICT_ALTERNATES_SEPARATOR, CMUDICT_GRAPHEMES, CMUDICT_PHONEMES
from dlx.data.pipeline import ArraySource, Batch
from dlx.errors import DataError
from dlx.layers.attention import PAD_ID

BOS_ID, EOS_ID = 1, 2
G2P_DATA_SETS = ("cmudict",)  # the data sets `g2p_source` reads
G2P_MAX_INPUT_LENGTH = 32  # cmudict's longest word has 28 letters
G2P_MAX_TARGET_LENGTH = 32  # its longest pronunciation 28 phonemes, +2 for bos and eos
G2P_MAX_PRONUNCIATIONS = 4  # cmudict's most for one word, stress removed


def read_texts(name: str, split: str, data_dir: str | None = None) -> list[str]:
    """The "text" feature of every example of `split` ("train", "validation[:2]", ...), in
    record order (prepared first if needed)."""
    builder = prepare(name, data_dir)
    if "text" not in builder.info.features:
        raise DataError(f"{name} has no 'text' feature (it has {', '.join(builder.info.features)})")
    records = builder.as_data_source(split=split)
    return [records[i]["text"].decode("utf-8") for i in range(len(records))]


class WindowSource:
    """Random-access language-model windows of a token stream: window i is
    `tokens[i * stride : i * stride + length + 1]` as {"tokens": int32 [length + 1]}; windows run
    while they fit entirely, so a tail shorter than a window is left out."""

    def __init__(self, tokens: np.ndarray, length: int, stride: int = 1):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}"
            )
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got {length} and {stride}")
        if len(tokens) < length + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {length} + 1")
        if tokens.min() < np.iinfo(np.int32).min or tokens.max() > np.iinfo(np.int32).max:
            raise ValueError("token ids must fit in int32")
        self.tokens = tokens.astype(np.int32)  # a private copy, so windows may be views
        self.tokens.setflags(write=False)
        self.length, self.stride = length, stride
        self._num_windows = (len(tokens) - length - 1) // stride + 1
        self._offsets = np.arange(length + 1)

    def __len__(self) -> int:
        return self._num_windows

    def __getitem__(self, index: int) -> Batch:
        index = int(index)
        if not 0 <= index < self._num_windows:
            raise IndexError(f"window {index} not in [0, {self._num_windows})")
        start = index * self.stride
        return {"tokens": self.tokens[start : start + self.length + 1]}

    def __getitems__(self, indices: Sequence[int]) -> list[Batch]:
        return [self[index] for index in indices]

    def read_rows(self, indices: np.ndarray) -> Batch:
        """Windows `indices` stacked into [len(indices), length + 1], in one gather."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self._num_windows):
            raise IndexError(
                f"windows {indices.min()}..{indices.max()} not all in [0, {self._num_windows})"
            )
        return {"tokens": self.tokens[indices[:, None] * self.stride + self._offsets]}


class G2PVocab:
    """A fixed symbol inventory -> ids: 0 pad, 1 bos, 2 eos, then the symbols in sorted order.
    Texts are split into symbols by `separator` ("" = one symbol per character)."""

    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, symbols: Sequence[str], separator: str):
        symbols = tuple(sorted(set(symbols)))
        if not symbols or any(
            s in self.SPECIALS or not s or (separator and separator in s) for s in symbols
        ):
            raise ValueError(
                f"symbols must be non-empty strings without {separator!r} or "
                f"special names, got {symbols}"
            )
        self.symbols = self.SPECIALS + symbols
        self.separator = separator
        self._ids = {symbol: i for i, symbol in enumerate(self.symbols)}

    @classmethod
    def graphemes(cls) -> G2PVocab:
        """cmudict's words: a-z and apostrophe (30 ids)."""
        return cls(CMUDICT_GRAPHEMES, separator="")

    @classmethod
    def phonemes(cls) -> G2PVocab:
        """cmudict's pronunciations: the 39 ARPAbet phonemes, space-separated (42 ids)."""
        return cls(CMUDICT_PHONEMES, separator=" ")

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    @property
    def size(self) -> int:
        return len(self.symbols)

    def split(self, text: str) -> list[str]:
        return list(text) if not self.separator else text.split(self.separator)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> np.ndarray:
        try:
            ids = [self._ids[symbol] for symbol in self.split(text)]
        except KeyError as error:
            raise ValueError(
                f"{text!r}: symbol {error.args[0]!r} is not in the vocabulary"
            ) from None
        return np.asarray([BOS_ID] * bos + ids + [EOS_ID] * eos, np.int32)

    def encode_padded(
        self, texts: Sequence[str], max_length: int, *, bos: bool = False, eos: bool = False
    ) -> np.ndarray:
        """[len(texts), max_length] int32, each row `encode(text)` then PAD_ID; a text that does
        not fit is an error (truncating would train on wrong labels)."""
        rows = np.full((len(texts), max_length), PAD_ID, np.int32)
        for row, text in zip(rows, texts):
            ids = self.encode(text, bos=bos, eos=eos)
            if len(ids) > max_length:
                raise ValueError(
                    f"{text!r} needs {len(ids)} ids, more than max_length {max_length}"
                )
            row[: len(ids)] = ids
        return rows

    def decode(self, ids: Sequence[int] | np.ndarray, join: str | None = None) -> str:
        """Symbols up to the first eos, without pad and bos, joined by `join` (default: the
        separator)."""
        symbols = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                symbols.append(self.symbols[i])
        return (self.separator if join is None else join).join(symbols)


def g2p_vocabularies() -> tuple[G2PVocab, G2PVocab]:
    """(graphemes, phonemes): the vocabularies of `g2p_source`'s inputs and targets."""
    return G2PVocab.graphemes(), G2PVocab.phonemes()


def g2p_source(
    split: str,
    data_dir: str | None = None,
    *,
    max_input_length: int = G2P_MAX_INPUT_LENGTH,
    max_target_length: int = G2P_MAX_TARGET_LENGTH,
    references: bool = False,
) -> ArraySource:
    """cmudict `split` as int32 arrays: "inputs" [N, max_input_length] the word's letters
    (`G2PVocab.graphemes`) then pad; "targets" [N, max_target_length] bos, the primary
    pronunciation's phonemes (`G2PVocab.phonemes`), eos, then pad. With `references`, also
    "references" [N, G2P_MAX_PRONUNCIATIONS, max_target_length - 1]: every pronunciation of the
    word (the primary first, as targets[:, 1:]: phonemes, eos, pad), then rows of pad only.
    Rows in the split's record order."""
    words = source("cmudict", split, data_dir, in_memory=True)
    texts = {
        key: [value.decode("utf-8") for value in words.columns[key].tolist()]
        for key in ("word", "phonemes", "alternates")
    }
    graphemes, phonemes = g2p_vocabularies()
    arrays = {
        "inputs": graphemes.encode_padded(texts["word"], max_input_length),
        "targets": phonemes.encode_padded(texts["phonemes"], max_target_length, bos=True, eos=True),
    }
    if references:
        table = np.full(
            (len(arrays["targets"]), G2P_MAX_PRONUNCIATIONS, max_target_length - 1),
            PAD_ID,
            np.int32,
        )
        table[:, 0] = arrays["targets"][:, 1:]
        for row, alternates in enumerate(texts["alternates"]):
            others = alternates.split(CMUDICT_ALTERNATES_SEPARATOR) if alternates else []
            if len(others) >= G2P_MAX_PRONUNCIATIONS:
                raise DataError(
                    f"{texts['word'][row]!r} has {len(others) + 1} pronunciations, "
                    f"more than G2P_MAX_PRONUNCIATIONS = {G2P_MAX_PRONUNCIATIONS}"
                )
            if others:
                table[row, 1 : len(others) + 1] = phonemes.encode_padded(
                    others, max_target_length - 1, eos=True
                )
        arrays["references"] = table
    return ArraySource(arrays)
