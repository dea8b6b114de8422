"""Token lag: a generated sequence task where order matters, for studying positional encodings.

Each example is a string of random tokens (ids 1..`lag.symbols`, drawn uniformly); at every
position t >= `lag.lag` the model predicts the token `lag` positions back, tokens[t - lag]. The
token at t carries no information about its target, so the only way to solve it is to find the
position `lag` steps back: a model without positional information cannot.

Training draws fresh strings of `lag.train_len` tokens every step (`dlx.data.GeneratedSource`,
deterministic in the seed and the step); each eval split is a fixed set of `lag.eval_examples`
strings of `lag.eval_len` tokens (default 2 x train_len), drawn from a seed made of the split's
name, so "train[90%:]" (a validation set) and "test" are different strings. Eval reports
`accuracy` and `loss` over the positions the model trained on (lag <= t < train_len) and
`accuracy_long` / `loss_long` over the positions beyond them (t >= train_len), plus
`accuracy_all` over every scored position; `plots/position_accuracy.json` holds the accuracy at
each position. With a causal model (the `transformer` decoder) position t sees only tokens 0..t,
so the first `train_len` positions of a long string score exactly what strings of at most
`train_len` tokens would.

The runner still reads `config.data.name` for its split bookkeeping, so configs name a small
offline data set ("digits") whose split names ("train", "test", "train[:90%]" ...) pick the
strings; none of its examples are read. Learned positions (model field `position="learned"`)
need `model.max_len >= lag.eval_len`: the table rows at and beyond `train_len` exist but are
never trained (their gradient is zero), and eval at 2 x train_len reads them.
"""

from __future__ import annotations

import functools
import json
import os
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import models, schema
from dlx.data import GeneratedSource
from dlx.errors import ConfigError
from dlx.schema import Int
from dlx.tasks import losses
from dlx.tasks.base import (
    SUPERVISED_RULES,
    SupervisedTask,
    apply_model,
    is_main_process,
    supervised_config,
)

TRAIN_SOURCE_SEED = 0  # the train strings' stream; eval splits seed theirs by name
POSITION_ACCURACY_FILE = "position_accuracy.json"  # under <workdir>/plots


def random_strings(symbols: int, length: int):
    """draw(rng, count) -> {"tokens": [count, length]} of ids 1..symbols (0 stays padding)."""

    def draw(rng: np.random.Generator, count: int) -> dict:
        return {"tokens": rng.integers(1, symbols + 1, (count, length), dtype=np.int32)}

    return draw


class Task(SupervisedTask):
    best_metric_default = ("accuracy", "max")

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.lag = ml_collections.ConfigDict(
            dict(symbols=16, lag=3, train_len=32, eval_len=0, eval_examples=512)
        )
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "lag",
            symbols=Int(low=2),
            lag=Int(low=1),
            train_len=Int(low=2),
            eval_len=Int(low=0),  # 0: 2 x train_len
            eval_examples=Int(low=1),
        ),
    }

    @staticmethod
    def eval_length(config) -> int:
        return config.lag.eval_len or 2 * config.lag.train_len

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        lag, eval_len = config.lag, Task.eval_length(config)
        if lag.lag >= lag.train_len:
            raise ConfigError(
                f"config.lag.lag={lag.lag} leaves nothing to predict in strings of "
                f"config.lag.train_len={lag.train_len} tokens; make it smaller"
            )
        if eval_len < lag.train_len:
            raise ConfigError(
                f"config.lag.eval_len={eval_len} is shorter than the training strings "
                f"(config.lag.train_len={lag.train_len})"
            )
        model = config.model
        if model.get("kind") == "encoder_decoder":
            raise ConfigError("token_lag feeds one token string: use a decoder or encoder model")
        vocab = model.get("vocab_size", 0)
        if vocab and vocab <= lag.symbols:
            raise ConfigError(
                f"config.model.vocab_size={vocab} does not hold ids 1..{lag.symbols}; "
                f"set it to 0 to follow config.lag.symbols"
            )
        fields = {**models.model_defaults(model.name), **model}
        if fields.get("position") == "learned" and fields.get("max_len", eval_len) < eval_len:
            raise ConfigError(
                f"learned positions need config.model.max_len >= {eval_len} (the eval "
                f"length); its rows beyond config.lag.train_len={lag.train_len} are never trained"
            )

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        if not kwargs.get("vocab_size"):
            kwargs["vocab_size"] = self.config.lag.symbols + 1
        return kwargs

    # -------------------------------------------------------------------------------------------
    # Data
    # -------------------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=4)
    def source(self, split: str, *, train: bool) -> GeneratedSource:
        lag = self.config.lag
        if train:
            return GeneratedSource(
                random_strings(lag.symbols, lag.train_len), lag.eval_examples, TRAIN_SOURCE_SEED
            )
        return GeneratedSource(
            random_strings(lag.symbols, self.eval_length(self.config)),
            lag.eval_examples,
            seed=zlib.crc32(split.encode()),
        )

    def examples_per_epoch(self) -> int:
        return self.config.lag.eval_examples

    def model_input(self, batch: dict) -> jax.Array:
        return batch["tokens"]

    # -------------------------------------------------------------------------------------------
    # Training and evaluation
    # -------------------------------------------------------------------------------------------
    def _logits_and_targets(self, logits: jax.Array, tokens: jax.Array):
        """Logits at positions lag.. and their targets, the tokens lag positions back."""
        k = self.config.lag.lag
        return logits[:, k:], tokens[:, :-k]

    def loss_fn(self, params, model_state, batch, rng):
        tokens = batch["tokens"]
        logits, model_state = apply_model(
            self.apply_fn, params, model_state, tokens, train=True, rng=rng
        )
        logits, targets = self._logits_and_targets(logits, tokens)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = (logits.argmax(-1) == targets).mean()
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def eval_step(self, state, batch) -> dict:
        tokens = batch["tokens"]
        logits, _ = apply_model(
            state.apply_fn, state.params, state.model_state, tokens, train=False
        )
        logits, targets = self._logits_and_targets(logits, tokens)
        rows = batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (logits.argmax(-1) == targets).astype(jnp.float32)
        return {  # per position (t = lag, lag + 1, ...), summed over the strings
            "nll_at": (nll * rows[:, None]).sum(0),
            "correct_at": (correct * rows[:, None]).sum(0),
            "strings": rows.sum(),
        }

    def position_accuracy(self, sums: dict) -> np.ndarray:
        """Accuracy at positions lag .. eval_len - 1."""
        return np.asarray(sums["correct_at"], np.float64) / float(sums["strings"])

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        seen = self.config.lag.train_len - self.config.lag.lag  # positions lag .. train_len - 1
        accuracy = self.position_accuracy(sums)
        nll = np.asarray(sums["nll_at"], np.float64) / float(sums["strings"])
        metrics = {
            "loss": float(nll[:seen].mean()),
            "accuracy": float(accuracy[:seen].mean()),
            "accuracy_all": float(accuracy.mean()),
        }
        if len(accuracy) > seen:
            metrics["loss_long"] = float(nll[seen:].mean())
            metrics["accuracy_long"] = float(accuracy[seen:].mean())
        return metrics

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        """plots/position_accuracy.json: the accuracy at each scored position."""
        if not is_main_process():
            return
        lag = self.config.lag
        accuracy = self.position_accuracy(sums)
        os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
        record = {
            "step": step,
            "split": self.config.data.eval_split,
            "train_len": lag.train_len,
            "lag": lag.lag,
            "chance": 1.0 / lag.symbols,
            "positions": list(range(lag.lag, lag.lag + len(accuracy))),
            "accuracy": [round(float(a), 6) for a in accuracy],
        }
        with open(os.path.join(workdir, "plots", POSITION_ACCURACY_FILE), "w") as f:
            json.dump(record, f)
