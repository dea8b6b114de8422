"""Token classification (named-entity recognition): one BIO tag per word, scored by entity.

The data set holds each sentence's words and tags as space-joined strings (features
`data.tokens_feature`, `data.tags_feature`; e.g. `wnut16`). Words are WordPiece-tokenized as
pre-split words ([CLS] words [SEP], cut to `data.max_length`); each word's first sub-token
carries its tag, the other positions no label. The tag set is "O" and B-/I- of every entity type
the train split has, sorted; it is saved as `<workdir>/labels.json` with the tokenizer.

Eval: token accuracy (at labelled positions), and entity-level precision, recall and F1
(`dlx.metrics.entities`, conlleval's rules, equal to seqeval's) over the words of each sentence;
a word cut off by `max_length` is predicted "O", so truncation costs recall instead of hiding
entities. The model is any per-token classifier over token ids: a Transformer encoder with
`pooling="none"` (from a BERT checkpoint: `init_from="minilm"`). Config keys as
text_classification's, with `data.tokens_feature` ("tokens") and `data.tags_feature` ("tags")
for its text and label features.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import schema
from dlx.errors import ConfigError, DataError
from dlx.metrics import Evaluator, PerExample
from dlx.metrics.entities import entity_scores, entity_spans
from dlx.schema import Str
from dlx.tasks import losses
from dlx.tasks.base import apply_model
from dlx.tasks.text_classification import TextTask, _text

LABELS_FILE = "labels.json"
IGNORED = -1  # label of positions without a tag: padding, specials, a word's later sub-tokens


class Task(TextTask):
    best_metric_default = ("f1", "max")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = TextTask.config_defaults()
        config.data.update(tokens_feature="tokens", tags_feature="tags", max_length=128)
        return config

    config_rules = {
        **TextTask.config_rules,
        **schema.under("data", tokens_feature=Str(nonempty=True), tags_feature=Str(nonempty=True)),
    }

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        for key in (config.data.tokens_feature, config.data.tags_feature):
            if key not in data_info.features:
                raise ConfigError(
                    f"data set '{config.data.name}' has no feature '{key}' (it has "
                    f"{sorted(data_info.features)}); set config.data.tokens_feature / "
                    f"tags_feature"
                )
        self._sentences: dict[str, list[tuple[list[str], list[str]]]] = {}
        self._word_starts: dict[str, list[np.ndarray]] = {}
        super().__init__(config, data_info, data_dir, workdir)

    # ---- tags ----
    def _read_sentences(self, split: str) -> list[tuple[list[str], list[str]]]:
        if split not in self._sentences:
            sentences = []
            for row in self.read_split(split):
                words = _text(row[self.config.data.tokens_feature]).split()
                tags = _text(row[self.config.data.tags_feature]).split()
                if len(words) != len(tags):
                    raise DataError(
                        f"'{self.config.data.name}' {split}: a sentence of {len(words)} words "
                        f"has {len(tags)} tags"
                    )
                sentences.append((words, tags))
            self._sentences[split] = sentences
        return self._sentences[split]

    @functools.cached_property
    def labels(self) -> list[str]:
        saved = os.path.join(self.workdir, LABELS_FILE) if self.workdir else None
        if saved and os.path.exists(saved):
            with open(saved) as f:
                return list(json.load(f))
        kinds = set()
        for _, tags in self._read_sentences(self.config.data.train_split):
            for tag in tags:
                prefix, _, kind = tag.partition("-")
                if tag != "O" and (prefix not in ("B", "I") or not kind):
                    raise DataError(f"'{self.config.data.name}': tag {tag!r} is not O, B-X or I-X")
                if kind:
                    kinds.add(kind)
        return ["O", *(f"{p}-{k}" for k in sorted(kinds) for p in ("B", "I"))]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def write_run_files(self, workdir: str) -> None:
        with open(os.path.join(workdir, LABELS_FILE), "w") as f:
            json.dump(self.labels, f)
        super().write_run_files(workdir)

    # ---- examples ----
    def encode_words(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, list]:
        """(ids [N, max_length], per sentence the token position of each word's first
        sub-token, -1 for a word cut off)."""
        length = self.config.data.max_length
        ids = np.zeros((len(sentences), length), np.int32)
        starts = []
        encodings = self.tokenizer.backend.encode_batch(
            [list(words) for words in sentences], is_pretokenized=True
        )
        for row, (words, encoding) in enumerate(zip(sentences, encodings)):
            ids[row, : len(encoding.ids)] = encoding.ids
            first = np.full(len(words), -1, np.int64)
            for position, word in enumerate(encoding.word_ids):
                if word is not None and first[word] < 0:
                    first[word] = position
            starts.append(first)
        return ids, starts

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        sentences = self._read_sentences(split)
        index = {tag: i for i, tag in enumerate(self.labels)}
        ids, starts = self.encode_words([words for words, _ in sentences])
        labels = np.full(ids.shape, IGNORED, np.int32)
        for row, ((_, tags), first) in enumerate(zip(sentences, starts)):
            for tag, position in zip(tags, first):
                if tag not in index:
                    raise DataError(
                        f"'{self.config.data.name}' {split}: tag {tag!r} is not among the "
                        f"train split's tags {self.labels}"
                    )
                if position >= 0:
                    labels[row, position] = index[tag]
        self._word_starts[split] = starts
        return {"tokens": ids, "labels": labels}

    # ---- training and eval ----
    def loss_fn(self, params, model_state, batch, rng):
        logits, model_state = apply_model(
            self.apply_fn, params, model_state, batch["tokens"], train=True, rng=rng
        )
        labels = batch["labels"]
        labelled = (labels != IGNORED).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
        count = jnp.maximum(labelled.sum(), 1.0)
        cross_entropy = (nll * labelled).sum() / count
        accuracy = ((logits.argmax(-1) == labels) * labelled).sum() / count
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def evaluator(self) -> Evaluator:
        split = self.config.data.eval_split

        def per_example(state, batch, rng):
            logits, _ = apply_model(
                state.apply_fn, state.params, state.model_state, batch["tokens"], train=False
            )
            labels = batch["labels"]
            labelled = labels != IGNORED
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
            return {
                "predicted": logits.argmax(-1).astype(jnp.int32),
                "nll": jnp.where(labelled, nll, 0.0).sum(-1),
                "labelled": labelled.sum(-1),
                "correct": ((logits.argmax(-1) == labels) & labelled).sum(-1),
            }

        def summarize(values: dict) -> dict[str, float]:
            self.source(split, train=False)  # the word positions of the split
            sentences, starts = self._sentences[split], self._word_starts[split]
            predicted = [
                self._word_tags(row, first) for row, first in zip(values["predicted"], starts)
            ]
            scores = entity_scores([tags for _, tags in sentences], predicted)
            labelled = max(int(values["labelled"].sum()), 1)
            return {
                "loss": float(values["nll"].sum()) / labelled,
                "accuracy": float(values["correct"].sum()) / labelled,
                **scores,
            }

        return PerExample(per_example, summarize, seed=self.config.seed)

    def _word_tags(self, predicted_row: np.ndarray, first: np.ndarray) -> list[str]:
        return [self.labels[int(predicted_row[p])] if p >= 0 else "O" for p in first]

    def recognize(self, predict, texts: Sequence[str], batch_size: int = 32) -> list[list[dict]]:
        """Entity groups per text, as a Hugging Face "ner" pipeline with
        aggregation_strategy="simple" gives them: [{"entity_group", "word", "start", "end",
        "score"}], words split at whitespace, `start`/`end` character offsets into the text,
        `score` the mean probability of the entity's word tags."""
        results = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            words = [text.split() for text in chunk]
            ids, starts = self.encode_words(words)
            padded = np.zeros((batch_size, ids.shape[1]), np.int32)
            padded[: len(chunk)] = ids
            logits = np.asarray(jax.device_get(predict({"tokens": padded})), np.float64)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            for text, sentence, first, row in zip(chunk, words, starts, probabilities):
                offsets, cursor = [], 0
                for word in sentence:
                    begin = text.index(word, cursor)
                    offsets.append((begin, begin + len(word)))
                    cursor = begin + len(word)
                tags = self._word_tags(row.argmax(-1), first)
                word_scores = [float(row[p].max()) if p >= 0 else 0.0 for p in first]
                results.append(
                    [
                        {
                            "entity_group": kind,
                            "word": text[offsets[begin][0] : offsets[end - 1][1]],
                            "start": offsets[begin][0],
                            "end": offsets[end - 1][1],
                            "score": float(np.mean(word_scores[begin:end])),
                        }
                        for kind, begin, end in entity_spans(tags)
                    ]
                )
        return results
