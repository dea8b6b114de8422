"""Language modelling: next-token cross-entropy on fixed-length windows of a tokenized corpus.

Training draws windows of `data.seq_len + 1` tokens starting anywhere in the train stream
(`WindowSource` with stride 1, shuffled reproducibly by the runner's iterator, whose state is the
step); evaluation tiles the validation stream with non-overlapping windows. Eval reports loss
(nats/token), perplexity, accuracy and bits per character, and writes text samples to
`<workdir>/samples/`. The tokenizer is trained on the train split when a run starts, saved as
`<workdir>/tokenizer.json`, and loaded from there on resume and by `launch.py sample`.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import schema
from dlx.data.text import WindowSource, read_texts
from dlx.data.tokenizers import BpeTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from dlx.errors import ConfigError
from dlx.schema import Float, Int, OneOf, Str
from dlx.tasks import decoding, losses
from dlx.tasks.base import (
    SUPERVISED_RULES,
    SupervisedTask,
    apply_model,
    is_main_process,
    supervised_config,
)

TOKENIZER_FILE = "tokenizer.json"
DOCUMENT_SEPARATOR = "\n\n"  # between the texts of a split when they become one stream


class Task(SupervisedTask):
    supports_lora = True
    best_metric_default = ("loss", "min")
    resumable_keys = frozenset(
        f"decoding.{key}"
        for key in ("prompt", "num_samples", "max_new_tokens", "temperature", "top_k", "top_p")
    )

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        # The tokenizer ("char" or "bpe"; vocab_size for BPE) and the window length in tokens.
        config.data = ml_collections.ConfigDict(dict(tokenizer="char", vocab_size=0, seq_len=0))
        # Text samples written at each eval, and the defaults of `launch.py sample`.
        config.decoding = ml_collections.ConfigDict(
            dict(
                prompt="\n", num_samples=2, max_new_tokens=200, temperature=0.8, top_k=0, top_p=1.0
            )
        )
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "data",
            tokenizer=OneOf("char", "bpe", "pretrained"),
            vocab_size=Int(low=0),
            seq_len=Int(low=0),
        ),
        **schema.under(
            "decoding",
            prompt=Str(),
            num_samples=Int(low=0),
            max_new_tokens=Int(low=0),
            temperature=Float(low=0),
            top_k=Int(low=0),
            top_p=Float(0, 1, low_open=True),
        ),
    }

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        if config.data.seq_len <= 0:
            raise ConfigError(
                "language_model needs config.data.seq_len > 0 (window length in tokens)"
            )
        if config.data.tokenizer == "bpe" and config.data.vocab_size <= 0:
            raise ConfigError("config.data.tokenizer='bpe' needs config.data.vocab_size > 0")
        if config.data.tokenizer == "pretrained" and not config.init_from:
            raise ConfigError(
                "config.data.tokenizer='pretrained' takes the tokenizer of the checkpoint "
                "config.init_from names; set config.init_from (e.g. 'smollm2')"
            )
        max_len = config.model.get("max_len")
        if max_len is not None and max_len < config.data.seq_len:
            raise ConfigError(
                f"config.model.max_len={max_len} is shorter than the windows "
                f"(config.data.seq_len={config.data.seq_len})"
            )

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return self._load_or_train_tokenizer(self.config, self.data_dir, self.workdir)

    def _load_or_train_tokenizer(self, config, data_dir, workdir) -> Tokenizer:
        """The workdir's saved tokenizer, else that of the run or checkpoint in
        config.init_from (its weights only make sense with its ids), else one trained on the
        train split."""
        if config.data.tokenizer == "pretrained" and not (
            workdir and os.path.exists(os.path.join(workdir, TOKENIZER_FILE))
        ):
            tokenizer = getattr(self.pretrained, "tokenizer", None)
            if tokenizer is None or not hasattr(tokenizer, "get_vocab_size"):
                raise ConfigError(
                    f"config.data.tokenizer='pretrained', but config.init_from="
                    f"'{config.init_from}' is no checkpoint with a BPE tokenizer (a .gguf file "
                    f"or a Llama folder with tokenizer.json)"
                )
            return BpeTokenizer(tokenizer)
        for run_dir in (workdir, config.get("init_from")):
            saved = os.path.join(run_dir, TOKENIZER_FILE) if run_dir else None
            if saved and os.path.exists(saved):
                tokenizer = load_tokenizer(saved)
                if (
                    config.data.tokenizer != "pretrained"
                    and tokenizer.kind != config.data.tokenizer
                ):
                    raise ConfigError(
                        f"{saved} is a '{tokenizer.kind}' tokenizer but the config "
                        f"asks for '{config.data.tokenizer}'; set "
                        f"config.data.tokenizer='{tokenizer.kind}' or pick another "
                        f"--workdir / init_from"
                    )
                return tokenizer
        texts = read_texts(config.data.name, config.data.train_split, data_dir)
        return train_tokenizer(config.data.tokenizer, texts, config.data.vocab_size or None)

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        vocab_size = kwargs.get("vocab_size", 0)
        if not vocab_size:  # 0: take the tokenizer's
            kwargs["vocab_size"] = self.tokenizer.vocab_size
        elif vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"config.model.vocab_size={vocab_size} is smaller than the "
                f"tokenizer's {self.tokenizer.vocab_size}; set it to 0 to follow "
                f"the tokenizer"
            )
        return kwargs

    # -------------------------------------------------------------------------------------------
    # Data
    # -------------------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=4)
    def _split_text(self, split: str) -> str:
        return DOCUMENT_SEPARATOR.join(read_texts(self.config.data.name, split, self.data_dir))

    @functools.lru_cache(maxsize=4)
    def stream(self, split: str) -> np.ndarray:
        """The split as one token stream (int32)."""
        tokens = np.asarray(self.tokenizer.encode(self._split_text(split)), np.int32)
        if len(tokens) <= self.config.data.seq_len:
            raise ConfigError(
                f"split '{split}' of {self.config.data.name} has {len(tokens)} "
                f"tokens, fewer than one window of data.seq_len + 1"
            )
        return tokens

    def source(self, split: str, *, train: bool) -> WindowSource:
        seq_len = self.config.data.seq_len
        return WindowSource(self.stream(split), seq_len, stride=1 if train else seq_len)

    def examples_per_epoch(self) -> int:
        """An epoch is one pass over the train tokens: len(stream) / seq_len windows."""
        return max(1, len(self.stream(self.config.data.train_split)) // self.config.data.seq_len)

    def chars_per_token(self, split: str) -> float:
        return len(self._split_text(split)) / len(self.stream(split))

    def model_input(self, batch: dict) -> jax.Array:
        return batch["tokens"][:, :-1]

    # -------------------------------------------------------------------------------------------
    # Training and evaluation
    # -------------------------------------------------------------------------------------------
    def loss_fn(self, params, model_state, batch, rng):
        tokens = batch["tokens"]
        logits, model_state = apply_model(
            self.apply_fn, params, model_state, tokens[:, :-1], train=True, rng=rng
        )
        targets = tokens[:, 1:]
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = (logits.argmax(-1) == targets).mean()
        return loss, ({"cross_entropy": cross_entropy, "accuracy": accuracy}, model_state)

    def eval_step(self, state, batch) -> dict:
        tokens = batch["tokens"]
        logits, _ = apply_model(
            state.apply_fn, state.params, state.model_state, tokens[:, :-1], train=False
        )
        targets = tokens[:, 1:]
        mask = jnp.broadcast_to(batch["mask"][:, None], targets.shape).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return {
            "loss": (nll * mask).sum(),
            "tokens": mask.sum(),
            "correct": ((logits.argmax(-1) == targets) * mask).sum(),
        }

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        tokens = float(sums["tokens"])
        loss = float(sums["loss"]) / tokens
        chars_per_token = self.chars_per_token(self.config.data.eval_split)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "bits_per_char": loss / (math.log(2) * chars_per_token),
            "accuracy": float(sums["correct"]) / tokens,
        }

    def write_run_files(self, workdir: str) -> None:
        self.tokenizer.save(os.path.join(workdir, TOKENIZER_FILE))
        super().write_run_files(workdir)

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        decoding = self.config.decoding
        if decoding.num_samples <= 0 or decoding.max_new_tokens <= 0:
            return
        rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), step)
        texts = self.sample_texts(
            state.params,
            decoding.prompt,
            rng=rng,
            num_samples=decoding.num_samples,
            max_new_tokens=decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_k=decoding.top_k,
            top_p=decoding.top_p,
        )
        if is_main_process():
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
            with open(os.path.join(workdir, "samples", f"step_{step:07d}.txt"), "w") as f:
                for i, text in enumerate(texts):
                    f.write(
                        f"=== sample {i} (step {step}, temperature {decoding.temperature}, "
                        f"top_k {decoding.top_k}, top_p {decoding.top_p}) ===\n"
                        f"{decoding.prompt}{text}\n\n"
                    )

    # -------------------------------------------------------------------------------------------
    # Sampling with the KV / recurrent-state cache
    # -------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> np.ndarray:
        ids = np.asarray(self.tokenizer.encode(prompt), np.int32)
        if ids.size == 0:
            raise ConfigError("the prompt is empty after tokenization; give at least one character")
        return ids

    def stream_tokens(
        self,
        params,
        prompt_ids: np.ndarray,
        *,
        rng: jax.Array,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_samples: int = 1,
    ) -> Iterator[np.ndarray]:
        """Yields the next token of each of `num_samples` continuations, one step at a time
        (shape [num_samples]), from `dlx.tasks.decoding.stream` (the KV / recurrent-state cache;
        a model with a position limit restarts on the last max_len / 2 tokens)."""
        prompt = np.tile(np.asarray(prompt_ids, np.int32)[None], (num_samples, 1))
        yield from decoding.stream(
            self.model,
            {"params": self.model_params(params)},
            prompt,
            rng,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )

    def sample_texts(
        self,
        params,
        prompt: str,
        *,
        rng: jax.Array,
        num_samples: int,
        max_new_tokens: int,
        temperature: float,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> list[str]:
        steps = list(
            self.stream_tokens(
                params,
                self.encode_prompt(prompt),
                rng=rng,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                num_samples=num_samples,
            )
        )
        tokens = np.stack(steps, axis=1)
        return [self.tokenizer.decode(row) for row in tokens]

    def _sample_settings(self, options: dict) -> tuple[dict, int]:
        """(prompt and decoding settings, number of samples): `options` over config.decoding."""
        unknown = set(options) - {
            "prompt",
            "max_new_tokens",
            "temperature",
            "top_k",
            "top_p",
            "num_samples",
            "seed",
        }
        if unknown:
            raise ConfigError(f"language_model sampling has no option(s) {sorted(unknown)}")
        d = self.config.decoding
        pick = {
            k: options.get(k) if options.get(k) is not None else d.get(k)
            for k in ("prompt", "max_new_tokens", "temperature", "top_k", "top_p")
        }
        num_samples = options.get("num_samples", 1)
        check_sampling(
            pick["max_new_tokens"], pick["temperature"], pick["top_k"], pick["top_p"], num_samples
        )
        if num_samples < 1:
            raise ConfigError("num_samples must be >= 1")
        return pick, num_samples

    def check_sample_options(self, options: dict) -> None:
        self._sample_settings(options)

    def sample(self, state, options: dict, out=None) -> list[str]:
        """`launch.py sample`: continuations of `options["prompt"]`, the first streamed to `out`
        as it is produced when only one is drawn (several are printed when done). Options not
        given take config.decoding's values; `seed` picks the random draws."""
        out = out or sys.stdout  # looked up now: a caller may have redirected it
        pick, num_samples = self._sample_settings(options)
        prompt = pick.pop("prompt")
        live = num_samples == 1 and is_main_process()
        if live:
            out.write(prompt)
        rows: list[list[int]] = [[] for _ in range(num_samples)]
        shown = ""
        for tokens in self.stream_tokens(
            state.params,
            self.encode_prompt(prompt),
            rng=jax.random.PRNGKey(options.get("seed") or 0),
            num_samples=num_samples,
            **pick,
        ):
            for row, token in zip(rows, tokens):
                row.append(int(token))
            if live:
                text = self.tokenizer.decode(rows[0])
                if not text.endswith("\ufffd"):  # a byte-level token may end mid-character
                    out.write(text[len(shown) :])
                    out.flush()
                    shown = text
        texts = [self.tokenizer.decode(row) for row in rows]
        if is_main_process():
            if live:
                out.write(texts[0][len(shown) :] + "\n")
            else:
                for i, text in enumerate(texts):
                    out.write(f"=== sample {i} ===\n{prompt}{text}\n\n")
            out.flush()
        return texts


def check_sampling(
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    num_samples: int,
    where: str = "",
) -> None:
    problems = [
        f"{where}{name} {rule}, got {value}"
        for name, value, ok, rule in (
            ("max_new_tokens", max_new_tokens, max_new_tokens >= 0, "must be >= 0"),
            ("temperature", temperature, temperature >= 0, "must be >= 0 (0 is greedy)"),
            ("top_k", top_k, top_k >= 0, "must be >= 0 (0 keeps every token)"),
            ("top_p", top_p, 0 < top_p <= 1, "must be in (0, 1]"),
            ("num_samples", num_samples, num_samples >= 0, "must be >= 0"),
        )
        if not ok
    ]
    if problems:
        raise ConfigError("; ".join(problems))
