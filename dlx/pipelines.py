"""Pipelines: text in, what Hugging Face pipeline users expect out, from imported weights or a
dlx workdir.

    extract = dlx.pipeline("feature-extraction", model="minilm")
    extract(["A man plays a guitar.", "A dog runs."])        # [2, 384] float32, unit length
    generate = dlx.pipeline("text-generation", model="smollm2")
    generate("What is the capital of France?", chat=True)   # [{"generated_text": "The ..."}]

    python launch.py pipeline feature-extraction --model minilm "A sentence." "Another."
    python launch.py pipeline text-generation --model smollm2 --chat "Write a haiku."

    classify = dlx.pipeline("sentiment-analysis", model="runs/rt_minilm")
    classify(["A triumph."])                   # [{"label": "fresh", "score": 0.97}]
    ner = dlx.pipeline("ner", model="runs/wnut16_minilm")
    ner(["Empire State Building tonight"])     # [[{"entity_group": "facility", "word": ...,
                                               #    "start": 0, "end": 21, "score": ...}]]

`model` is "minilm" (all-MiniLM-L6-v2), "smollm2" (SmolLM2-135M-Instruct), a BERT folder
(config.json with model_type "bert"), a Llama safetensors folder (model_type "llama"), a .gguf
file, or a dlx workdir: of a `language_model` run (text-generation), a `text_classification`
run (sentiment-analysis: the label and probability of the most probable class), or a
`token_classification` run (ner: entity groups with character spans, words split at
whitespace). Batched: a list of texts is encoded together (32 at a time). Texts longer than the
model takes: feature extraction, sentiment analysis and NER cut each at the run's (or the
encoder's) limit and warn naming which texts (NER finds no entity in the words cut off); text
generation refuses a prompt that leaves no room for the new tokens. An empty text, a model that
cannot do the task, or a path that is not a model is one ConfigError / DataError line.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlx.errors import ConfigError, DataError

TASKS = ("feature-extraction", "text-generation", "sentiment-analysis", "ner")
WORKDIR_TASKS = {"sentiment-analysis": "text_classification", "ner": "token_classification"}


def _texts(inputs: str | Sequence[str]) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise ConfigError("the pipeline got no texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ConfigError(f"text {i} is empty")
    return texts


def _kind(model: str) -> str:
    """ "bert", "llama", "gguf" or "workdir" for a model spec."""
    if model == "minilm":
        return "bert"
    if model == "smollm2" or model.endswith(".gguf"):
        return "gguf"
    path = Path(model)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        try:
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        except (OSError, json.JSONDecodeError, AttributeError) as error:
            raise DataError(f"{path / 'config.json'} is not readable JSON ({error})") from error
        if model_type in ("bert", "llama"):
            return model_type
        raise ConfigError(f"{model}: model_type {model_type!r}; pipelines read bert and llama")
    if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
        return "workdir"
    raise DataError(
        f"model {model!r} is not 'minilm', 'smollm2', a .gguf file, a BERT or Llama folder, or "
        "a dlx workdir"
    )


class FeatureExtraction:
    def __init__(self, model: str, data_dir=None):
        if _kind(model) != "bert":
            raise ConfigError(f"feature-extraction needs a BERT encoder; {model!r} is not one")
        from dlx.hub import bert

        self.encoder = bert.load_bert(model, data_dir)

    def __call__(self, inputs: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, E] sentence embeddings: the mean of the token states, unit length."""
        texts = _texts(inputs)
        _, _, truncated = self.encoder.tokenizer.encode(texts)
        _warn_truncated(truncated, self.encoder.tokenizer.max_length)
        return self.encoder.sentence_embeddings(texts, batch_size)


class TextGeneration:
    def __init__(self, model: str, data_dir=None):
        kind = _kind(model)
        self.lm = self.bundle = None
        if kind == "gguf":
            from dlx.hub import llama

            self.lm = llama.load_gguf(model, data_dir)
        elif kind == "llama":
            self.lm = _llama_folder(model)
        elif kind == "workdir":
            from dlx import inference

            self.bundle = inference.load(model)
            if not hasattr(self.bundle.task, "sample_texts"):
                raise ConfigError(f"{model} is not a language-model run; it cannot generate text")
        else:
            raise ConfigError(f"text-generation needs a decoder; {model!r} is an encoder")

    def __call__(
        self,
        inputs: str | Sequence[str],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        chat: bool = False,
        seed: int = 0,
    ) -> list[dict[str, str]]:
        """One {"generated_text": continuation} per prompt (greedy at temperature 0). `chat`
        wraps each prompt as a user message in the model's chat template."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        out = []
        for i, text in enumerate(_texts(inputs)):
            if self.lm is not None:
                prompt = self.lm.chat_prompt(text) if chat else text
                new = self.lm.generate(
                    self.lm.encode(prompt), max_new_tokens, temperature=temperature, seed=seed + i
                )
                generated = self.lm.tokenizer.decode(
                    [int(t) for t in new], skip_special_tokens=True
                )
            else:
                if chat:
                    raise ConfigError("a dlx language-model run has no chat template")
                import jax

                task, params = self.bundle.task, self.bundle.state.params
                generated = task.sample_texts(
                    params, text, rng=jax.random.PRNGKey(seed + i), num_samples=1,
                    max_new_tokens=max_new_tokens, temperature=temperature,
                )[0]  # fmt: skip
            out.append({"generated_text": generated})
        return out


def _warn_truncated(truncated: Sequence[bool], limit: int) -> None:
    cut = [i for i, was in enumerate(truncated) if was]
    if cut:
        warnings.warn(
            f"text(s) {cut[:5]} longer than {limit} tokens were cut to fit the model",
            stacklevel=3,
        )


class FineTuned:
    """sentiment-analysis and ner: a dlx workdir of the matching fine-tuning task."""

    def __init__(self, pipeline_task: str, model: str):
        wanted = WORKDIR_TASKS[pipeline_task]
        if _kind(model) != "workdir":
            raise ConfigError(
                f"{pipeline_task} needs the workdir of a dlx {wanted} run (a classifier head "
                f"trained on labels); {model!r} is a pretrained checkpoint without one: fine-tune "
                f"it first (configs/rotten_tomatoes_minilm.py, configs/wnut16_minilm.py)"
            )
        try:
            trained_task = json.loads((Path(model) / "config.json").read_text()).get("task")
        except (OSError, json.JSONDecodeError, AttributeError) as error:
            raise DataError(f"{model}/config.json is not readable JSON ({error})") from error
        if trained_task != wanted:
            raise ConfigError(
                f"{model} is a '{trained_task}' run; the {pipeline_task} pipeline needs a "
                f"'{wanted}' run"
            )
        from dlx import inference

        self.pipeline_task = pipeline_task
        self.bundle = inference.load(model)

    def __call__(self, inputs: str | Sequence[str], batch_size: int = 32) -> list:
        texts = _texts(inputs)
        task = self.bundle.task
        if self.pipeline_task == "sentiment-analysis":
            _, truncated = task.encode_texts(texts)
            _warn_truncated(truncated, task.config.data.max_length)
            return task.classify(self.bundle, texts, batch_size)
        ids, starts = task.encode_words([text.split() for text in texts])
        _warn_truncated([bool((first < 0).any()) for first in starts], task.config.data.max_length)
        return task.recognize(self.bundle, texts, batch_size)


def _llama_folder(model: str):
    from dlx.hub import llama

    directory = Path(model)
    model_, params = llama.load_llama(directory)
    tokenizer_path = directory / llama.TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise DataError(f"{directory} has no {llama.TOKENIZER_FILE}")
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    template = None
    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        template = json.loads(config_path.read_text()).get("chat_template")
    eos = json.loads((directory / "config.json").read_text()).get("eos_token_id")
    return llama.CausalLM(model_, params, tokenizer, template, eos, directory)


def pipeline(
    task: str, model: str, data_dir=None
) -> FeatureExtraction | TextGeneration | FineTuned:
    model = str(model)
    if task in WORKDIR_TASKS:
        return FineTuned(task, model)
    if task == "feature-extraction":
        return FeatureExtraction(model, data_dir)
    if task == "text-generation":
        return TextGeneration(model, data_dir)
    raise ConfigError(f"unknown pipeline task {task!r}; use one of {TASKS}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one `error:` line from the caller, not usage + exit
        raise ConfigError(f"launch.py pipeline: {message}")


def main(argv: list[str], out=None) -> Any:
    """`launch.py pipeline TASK --model M TEXT...`: prints JSON lines, one per text."""
    out = out or sys.stdout
    parser = _Parser(prog="launch.py pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("texts", nargs="*")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chat", action="store_true", help="text-generation: use the chat template"
    )
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_intermixed_args(argv)  # texts may come before or after the flags
    runner = pipeline(args.task, args.model, args.data_dir)
    if isinstance(runner, FeatureExtraction):
        vectors = runner(args.texts)
        for text, vector in zip(args.texts, vectors, strict=True):
            out.write(
                json.dumps({"text": text, "embedding": [round(float(x), 6) for x in vector]}) + "\n"
            )
        return vectors
    if isinstance(runner, FineTuned):
        results = runner(args.texts)
        key = "entities" if args.task == "ner" else "prediction"
        for text, result in zip(args.texts, results, strict=True):
            out.write(json.dumps({"text": text, key: result}, ensure_ascii=False) + "\n")
        return results
    results = runner(
        args.texts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        chat=args.chat, seed=args.seed,
    )  # fmt: skip
    for text, result in zip(args.texts, results, strict=True):
        out.write(json.dumps({"prompt": text, **result}, ensure_ascii=False) + "\n")
    return results
