"""Text classification: one label per text (sentiment), softmax cross-entropy, accuracy.

Texts are WordPiece-tokenized once per split when the task is built ([CLS] text [SEP], cut to
`data.max_length` tokens, padded with id 0) and held in memory. The tokenizer is, in order: the
workdir's own `tokenizer.json` (a resumed run, `launch.py pipeline`), `data.tokenizer` ("minilm",
or a folder holding a BERT `tokenizer.json`), or that of the pretrained checkpoint
`config.init_from` names; a run saves the one it used in its workdir.

Any sequence classifier over token ids fits (`num_outputs` is filled in from the data's classes):
a Transformer encoder (`pooling` "mean" or "cls"), started from a BERT checkpoint with
`init_from="minilm"` (the architecture then comes from the checkpoint, the head `classifier` is
new), or a recurrent classifier trained from scratch. Fine-tuning options are the supervised
task's: `optimizer.frozen` (a regex: "(?!classifier/).*" trains the head alone, logistic
regression on frozen features), `optimizer.lr_multipliers`, `lora.*` (adapters; the model's
params are then under "model/"), `checkpoint_frozen=False` (checkpoints hold what trains).

Config keys (`data.`): text_feature ("text"), label_feature ("label"), tokenizer (""),
max_length (64).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import data as data_lib
from dlx import schema
from dlx.data import ArraySource
from dlx.errors import ConfigError
from dlx.metrics import BatchSums, Evaluator
from dlx.schema import Int, Str
from dlx.tasks import losses
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, apply_model, supervised_config

TOKENIZER_FILE = "tokenizer.json"


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


class TextTask(SupervisedTask):
    """What text classification and token classification share: the tokenizer and the
    tokenized splits."""

    supports_lora = True

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.data = ml_collections.ConfigDict(dict(tokenizer="", max_length=64))
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under("data", tokenizer=Str(), max_length=Int(low=3)),
    }

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        self._splits: dict[str, ArraySource] = {}
        super().__init__(config, data_info, data_dir, workdir)
        max_len = getattr(self.model, "max_len", None)
        if max_len is not None and max_len < config.data.max_length:
            raise ConfigError(
                f"config.data.max_length={config.data.max_length} is longer than the model's "
                f"{max_len} positions; set config.data.max_length <= {max_len}"
            )

    @functools.cached_property
    def tokenizer(self):
        from dlx.hub import bert

        max_length = self.config.data.max_length
        saved = os.path.join(self.workdir, TOKENIZER_FILE) if self.workdir else None
        if saved and os.path.exists(saved):
            return bert.WordPieceTokenizer(Path(saved), max_length)
        spec = self.config.data.tokenizer
        if spec:
            return bert.WordPieceTokenizer(
                bert.resolve(spec, self.data_dir) / bert.TOKENIZER_FILE, max_length
            )
        if self.pretrained is not None and self.pretrained.family == "bert":
            return bert.WordPieceTokenizer(
                Path(bert.resolve(self.pretrained.source, self.data_dir)) / bert.TOKENIZER_FILE,
                max_length,
            )
        raise ConfigError(
            f"task '{self.config.task}' needs a WordPiece tokenizer: set config.data.tokenizer "
            f"('minilm' or a folder with tokenizer.json) or config.init_from a BERT checkpoint"
        )

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        if not kwargs.get("vocab_size"):
            kwargs["vocab_size"] = self.tokenizer.vocab_size
        elif kwargs["vocab_size"] < self.tokenizer.vocab_size:
            raise ConfigError(
                f"config.model.vocab_size={kwargs['vocab_size']} is smaller than the "
                f"tokenizer's {self.tokenizer.vocab_size}; set it to 0 (the tokenizer's)"
            )
        if not kwargs.get("num_outputs"):
            kwargs["num_outputs"] = self.num_labels
        elif kwargs["num_outputs"] != self.num_labels:
            raise ConfigError(
                f"config.model.num_outputs={kwargs['num_outputs']} but the data has "
                f"{self.num_labels} labels; set it to 0 (the data's)"
            )
        return kwargs

    @property
    def num_labels(self) -> int:
        raise NotImplementedError

    def write_run_files(self, workdir: str) -> None:
        self.tokenizer.backend.save(os.path.join(workdir, TOKENIZER_FILE))
        super().write_run_files(workdir)

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids [N, max_length] int32, truncated [N] bool)."""
        ids = np.zeros((len(texts), self.config.data.max_length), np.int32)
        if texts:
            encoded, _, truncated = self.tokenizer.encode(list(texts))
            ids[:, : encoded.shape[1]] = encoded
            return ids, np.asarray(truncated, bool)
        return ids, np.zeros(0, bool)

    def read_split(self, split: str) -> list[dict]:
        source = data_lib.source(self.config.data.name, split, self.data_dir)
        return [source[i] for i in range(len(source))]

    def source(self, split: str, *, train: bool) -> ArraySource:
        if split not in self._splits:
            self._splits[split] = ArraySource(self.split_columns(split))
        return self._splits[split]

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def model_input(self, batch: dict) -> jax.Array:
        return batch["tokens"]

    def tokens_per_example(self) -> int | None:
        return self.config.data.max_length


class Task(TextTask):
    best_metric_default = ("accuracy", "max")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = TextTask.config_defaults()
        config.data.update(text_feature="text", label_feature="label")
        return config

    config_rules = {
        **TextTask.config_rules,
        **schema.under("data", text_feature=Str(nonempty=True), label_feature=Str(nonempty=True)),
    }

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        for key in (config.data.text_feature, config.data.label_feature):
            if key not in data_info.features:
                raise ConfigError(
                    f"data set '{config.data.name}' has no feature '{key}' (it has "
                    f"{sorted(data_info.features)}); set config.data.text_feature / label_feature"
                )
        if not data_info.num_classes:
            raise ConfigError(
                f"feature '{config.data.label_feature}' of '{config.data.name}' is not a class "
                f"label; text_classification needs one"
            )
        super().__init__(config, data_info, data_dir, workdir)

    @property
    def num_labels(self) -> int:
        return int(self.data_info.num_classes)

    @property
    def label_names(self) -> list[str]:
        return list(self.data_info.class_names or map(str, range(self.num_labels)))

    def split_columns(self, split: str) -> dict[str, np.ndarray]:
        rows = self.read_split(split)
        texts = [_text(row[self.config.data.text_feature]) for row in rows]
        ids, _ = self.encode_texts(texts)
        labels = np.asarray([int(row[self.config.data.label_feature]) for row in rows], np.int32)
        return {"tokens": ids, "label": labels.reshape(len(rows))}

    def loss_fn(self, params, model_state, batch, rng):
        logits, model_state = apply_model(
            self.apply_fn, params, model_state, batch["tokens"], train=True, rng=rng
        )
        cross_entropy = losses.cross_entropy(
            logits, batch["label"], self.config.loss.label_smoothing
        ).mean()
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = (logits.argmax(-1) == batch["label"]).mean()
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def eval_step(self, state, batch) -> dict:
        logits, _ = apply_model(
            state.apply_fn, state.params, state.model_state, batch["tokens"], train=False
        )
        labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "loss": (nll * mask).sum(),
            "correct": ((logits.argmax(-1) == labels) * mask).sum(),
            "count": mask.sum(),
        }

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        count = float(sums["count"])
        return {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}

    def evaluator(self) -> Evaluator:
        return BatchSums(self.eval_step, self.summarize_eval)

    def classify(self, predict, texts: Sequence[str], batch_size: int = 32) -> list[dict]:
        """[{"label", "score"}] per text: the most probable class and its probability, as a
        Hugging Face text-classification pipeline gives. `predict(batch)` is the run's jitted
        `predict`; batches are padded to `batch_size` rows (one compiled shape)."""
        ids, _ = self.encode_texts(list(texts))
        results = []
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            padded = np.zeros((batch_size, ids.shape[1]), np.int32)
            padded[: len(chunk)] = chunk
            logits = np.asarray(jax.device_get(predict({"tokens": padded})), np.float64)
            probabilities = np.exp(logits - logits.max(-1, keepdims=True))
            probabilities /= probabilities.sum(-1, keepdims=True)
            for row in probabilities[: len(chunk)]:
                best = int(row.argmax())
                results.append({"label": self.label_names[best], "score": float(row[best])})
        return results
