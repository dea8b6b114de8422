"""Tokenizers for language models: characters, or byte-level BPE trained with HF `tokenizers`.

    tokenizer = train_tokenizer("bpe", read_texts("shakespeare", "train"), vocab_size=1024)
    ids = tokenizer.encode("To be, or not to be")       # int32 array
    tokenizer.decode(ids)                                # the text again
    tokenizer.save("tok.json"); load_tokenizer("tok.json")

Both kinds map any text to ids and back without loss, except that characters a char tokenizer
never saw in training encode to `UNKNOWN_ID` (0) and decode as U+FFFD. No special tokens: a
document boundary, if wanted, is a separator string the caller puts in the text.

- char: id 0 is unknown, ids 1.. the training texts' distinct characters in code-point order
  (with `vocab_size`, only the vocab_size - 1 most frequent, ties to the lower code point). So
  the vocabulary depends only on the set (or counts) of characters, never on the text order.
- bpe: GPT-2 style byte-level BPE: the 256 byte symbols are always in the vocabulary, so every
  string round-trips; text is split by the GPT-2 regex without adding a prefix space, and merges
  are learnt from the texts up to `vocab_size` (>= 256). Training is deterministic (ties between
  equally frequent pairs go to the lower pair of ids) and runs offline. Saved as the library's
  own `tokenizer.json` format, which `tokenizers.Tokenizer.from_file` (and HF transformers'
  `PreTrainedTokenizerFast(tokenizer_file=...)`) also read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

UNKNOWN_ID = 0
REPLACEMENT_CHARACTER = "\ufffd"
_BYTE_ALPHABET_SIZE = 256


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def save(self, path: str | os.PathLike) -> None: ...


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


class CharTokenizer:
    """Characters -> ids: 0 for unknown, 1.. for `characters` (sorted by code point)."""

    kind = "char"

    def __init__(self, characters: str):
        codes = _code_points(characters)
        if len(codes) == 0 or np.any(np.diff(codes.astype(np.int64)) <= 0):
            raise ValueError("characters must be non-empty, distinct and sorted by code point")
        self.characters = characters
        self._codes = codes

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None) -> CharTokenizer:
        codes, counts = np.unique(
            np.concatenate([_code_points(t) for t in texts] + [np.zeros(0, np.uint32)]),
            return_counts=True,
        )
        if len(codes) == 0:
            raise ValueError("cannot train a char tokenizer on empty texts")
        if vocab_size is not None:
            if vocab_size < 2:
                raise ValueError(f"a char vocabulary needs vocab_size >= 2, got {vocab_size}")
            # np.unique sorted by code point; a stable sort by count keeps that order in ties.
            codes = np.sort(codes[np.argsort(-counts, kind="stable")[: vocab_size - 1]])
        return cls(codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass"))

    @property
    def vocab_size(self) -> int:
        return len(self._codes) + 1

    def encode(self, text: str) -> np.ndarray:
        codes = _code_points(text)
        positions = np.searchsorted(self._codes, codes)
        found = self._codes[np.minimum(positions, len(self._codes) - 1)] == codes
        return np.where(found, positions + 1, UNKNOWN_ID).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        table = np.concatenate([_code_points(REPLACEMENT_CHARACTER), self._codes])
        return table[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": self.kind, "characters": self.characters}, f)


class BpeTokenizer:
    """Byte-level BPE: a `tokenizers.Tokenizer` behind the dlx tokenizer interface."""

    kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
        if vocab_size < _BYTE_ALPHABET_SIZE:
            raise ValueError(
                f"byte-level BPE needs vocab_size >= {_BYTE_ALPHABET_SIZE} (the "
                f"byte alphabet), got {vocab_size}"
            )
        tokenizer = tokenizers.Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tokenizer.decode(
            [int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False
        )

    def save(self, path: str | os.PathLike) -> None:
        self.tokenizer.save(os.fspath(path))


def train_tokenizer(
    kind: Literal["char", "bpe"], texts: Iterable[str], vocab_size: int | None = None
) -> CharTokenizer | BpeTokenizer:
    """A tokenizer of `kind` fitted to `texts`. vocab_size: char, optional (default: every
    character seen, plus unknown); bpe, required (>= 256)."""
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size)
    if kind == "bpe":
        if vocab_size is None:
            raise ValueError("a bpe tokenizer needs a vocab_size (>= 256)")
        return BpeTokenizer.train(texts, vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; dlx has 'char' and 'bpe'")


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | BpeTokenizer:
    """The tokenizer saved at `path` by `.save`, of either kind."""
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("kind") == "char":
        return CharTokenizer(saved["characters"])
    if saved.get("model", {}).get("type") == "BPE":
        return BpeTokenizer(tokenizers.Tokenizer.from_str(json.dumps(saved)))
    raise ValueError(f"{path} holds neither a dlx char tokenizer nor a BPE tokenizer.json")
