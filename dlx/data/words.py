"""Words for word2vec: tokenisation, a vocabulary by frequency, and (centre, context) pairs drawn
on the fly with subsampling and negative samples (Mikolov et al. 2013).

Tokens are lowercase letter runs with inner apostrophes ("o'er", "thou'rt"); everything else
separates them. The vocabulary keeps words seen at least `min_count` times in the training
text, most frequent first (ties in alphabetical order); other words are dropped from the token
stream, as word2vec does.

`PairSampler.draw(rng, count)` draws `count` examples, each from a uniformly drawn position of
the token stream (documents never mix: a window stops at its document's edges):
- subsampling: a token of word w is kept with probability min(1, (sqrt(f / (t T)) + 1) t T / f),
  f its count, T the token total, t `sample` (word2vec's formula; 0 keeps every token); the
  centre and each context token are kept or dropped independently, per draw;
- a window b uniform in 1..`window` (word2vec's dynamic window);
- skip-gram: one context token at a uniform offset in [-b, b] \\ {0} -> columns "center",
  "context"; CBOW: every kept token within b of the centre -> "context" [count, 2 window]
  padded with -1, and the "center" it predicts;
- `negatives` noise words per example from the unigram distribution raised to 3/4.
Rejected draws are redrawn, so every example is a real pair. Unlike word2vec, which removes
subsampled tokens before windowing (which widens windows around frequent words), a dropped
context token here is simply not a pair.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Sequence

import numpy as np

from dlx.errors import ConfigError

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
MODES = ("skipgram", "cbow")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # most frequent first
    counts: np.ndarray  # [V] int64, in the training text

    @classmethod
    def build(cls, documents: Iterable[Sequence[str]], min_count: int) -> Vocabulary:
        counter: collections.Counter[str] = collections.Counter()
        for tokens in documents:
            counter.update(tokens)
        kept = sorted(
            (w for w, c in counter.items() if c >= min_count), key=lambda w: (-counter[w], w)
        )
        if not kept:
            raise ConfigError(
                f"no word occurs {min_count} times in the training text; lower "
                "config.word2vec.min_count"
            )
        return cls(tuple(kept), np.array([counter[w] for w in kept], np.int64))

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        index = self.index
        return np.array([index[t] for t in tokens if t in index], np.int32)


@dataclasses.dataclass
class Corpus:
    """Token ids of several documents end to end, and each token's document."""

    tokens: np.ndarray  # [T] int32
    documents: np.ndarray  # [T] int32

    @classmethod
    def from_documents(cls, vocabulary: Vocabulary, documents: Iterable[Sequence[str]]) -> Corpus:
        ids = [vocabulary.encode(tokens) for tokens in documents]
        ids = [d for d in ids if len(d)]
        if not ids:
            raise ConfigError("the corpus has no word of the vocabulary")
        return cls(
            np.concatenate(ids),
            np.concatenate([np.full(len(d), i, np.int32) for i, d in enumerate(ids)]),
        )


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: the probability of keeping a token of each word."""
    if sample <= 0:
        return np.ones(len(counts))
    threshold = sample * counts.sum()
    return np.minimum(1.0, (np.sqrt(counts / threshold) + 1) * threshold / counts)


class PairSampler:
    def __init__(
        self,
        corpus: Corpus,
        counts: np.ndarray,
        *,
        mode: str = "skipgram",
        window: int = 5,
        negatives: int = 5,
        sample: float = 1e-3,
    ):
        if mode not in MODES:
            raise ConfigError(f"word2vec mode must be one of {MODES}, got '{mode}'")
        self.corpus, self.mode, self.window, self.negatives = corpus, mode, window, negatives
        self.keep = keep_probabilities(counts, sample)
        noise = counts.astype(np.float64) ** 0.75
        self.noise_cdf = np.cumsum(noise / noise.sum())

    def draw_noise(self, rng: np.random.Generator, shape) -> np.ndarray:
        words = np.searchsorted(self.noise_cdf, rng.random(shape), side="right")
        return np.minimum(words, len(self.noise_cdf) - 1).astype(np.int32)

    def _kept(self, rng, positions: np.ndarray) -> np.ndarray:
        return rng.random(positions.shape) < self.keep[self.corpus.tokens[positions]]

    def _candidates(self, rng, n: int):
        """(centre positions, windows) of n draws whose centre survives subsampling."""
        size = len(self.corpus.tokens)
        positions = rng.integers(0, size, n)
        windows = rng.integers(1, self.window + 1, n)
        kept = self._kept(rng, positions)
        return positions[kept], windows[kept]

    def _in_window(self, positions, offsets) -> tuple[np.ndarray, np.ndarray]:
        size = len(self.corpus.tokens)
        context = positions + offsets
        inside = (context >= 0) & (context < size)
        context = np.clip(context, 0, size - 1)
        inside &= self.corpus.documents[context] == self.corpus.documents[positions]
        return context, inside

    def draw(self, rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
        centers, contexts, filled, tried = [], [], 0, 0
        while filled < count:
            if tried > 1000 * count + 100_000:
                raise ConfigError(
                    "could not draw word pairs: the corpus is too small for its window"
                )
            # as many candidates as the acceptance so far says are needed, and a margin
            rate = max(filled / tried, 1e-4) if tried else 0.5
            candidates = min(int(1.2 * (count - filled) / rate) + 16, 1 << 24)
            tried += candidates
            positions, windows = self._candidates(rng, candidates)
            if self.mode == "skipgram":
                offsets = rng.integers(1, windows + 1) * rng.choice(np.array([-1, 1]), len(windows))
                context, ok = self._in_window(positions, offsets)
                ok &= self._kept(rng, context)
                center, context = positions[ok], self.corpus.tokens[context[ok]]
            else:
                offsets = np.concatenate(
                    [np.arange(-self.window, 0), np.arange(1, self.window + 1)]
                )
                context, ok = self._in_window(positions[:, None], offsets[None, :])
                ok &= np.abs(offsets)[None, :] <= windows[:, None]
                ok &= self._kept(rng, context)
                has_context = ok.any(1)
                center = positions[has_context]
                context = np.where(ok, self.corpus.tokens[context], -1)[has_context]
            centers.append(self.corpus.tokens[center])
            contexts.append(context)
            filled += len(center)
        center = np.concatenate(centers)[:count].astype(np.int32)
        context = np.concatenate(contexts)[:count].astype(np.int32)
        return {
            "center": center,
            "context": context,
            "negatives": self.draw_noise(rng, (count, self.negatives)),
        }

    def pairs_per_token(self) -> float:
        """Expected skip-gram pairs a kept token makes with the dynamic window (E[2b])."""
        return self.window + 1.0
