"""Pretrained checkpoints dlx reads (BERT, Llama, GPT-2), behind one entry point for the tasks.

    pretrained = load_pretrained("minilm")      # or "smollm2", a checkpoint folder, a .gguf
    pretrained.model_fields                     # the transformer's fields (dlx.models.transformer)
    pretrained.params                           # its params, float32
    pretrained.tokenizer                        # the checkpoint's tokenizer (None if it has none)

A task that starts from a checkpoint (`config.init_from` names one instead of a dlx workdir) takes
the architecture from `model_fields` and the weights from `params`; see `SupervisedTask`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from dlx.errors import ConfigError, DataError

NAMED = {"minilm": "bert", "smollm2": "gguf"}
FAMILIES = ("bert", "llama", "gpt2")


@dataclasses.dataclass
class Pretrained:
    family: str  # "bert" | "llama" | "gpt2"
    model_fields: dict[str, Any]
    params: dict[str, Any]
    tokenizer: Any  # bert: WordPieceTokenizer; llama: tokenizers.Tokenizer; gpt2: None
    source: str


def is_dlx_workdir(path: str | os.PathLike) -> bool:
    """A dlx run's folder (its config.json names a task, or it has checkpoints/), as opposed to
    a pretrained checkpoint."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return True
    try:
        return "task" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def family_of(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """Which importer reads `spec`; ConfigError naming what is accepted otherwise."""
    spec = str(spec)
    if spec in NAMED:
        return NAMED[spec]
    path = Path(spec)
    if not path.exists():
        raise ConfigError(
            f"'{spec}' does not exist: give a dlx workdir holding a finished checkpoint, or a "
            f"pretrained checkpoint ({', '.join(sorted(NAMED))}, a .gguf file, or a folder with "
            f"config.json and model.safetensors)"
        )
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"'{spec}' is not a pretrained checkpoint: give {sorted(NAMED)}, a .gguf file, or a "
            f"folder with config.json and model.safetensors (BERT, Llama or GPT-2)"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise DataError(f"{config} is not a readable JSON object ({error})") from error
    if model_type not in FAMILIES:
        raise ConfigError(f"{config} has model_type {model_type!r}; dlx imports {list(FAMILIES)}")
    return model_type


def _fields(model) -> dict[str, Any]:
    return {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }


def load_pretrained(
    spec: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> Pretrained:
    """The model fields, params and tokenizer of a pretrained checkpoint (checked by its
    importer before anything is converted)."""
    family = family_of(spec, data_dir)
    if family == "bert":
        from dlx.hub.bert import load_bert

        encoder = load_bert(spec, data_dir)
        return Pretrained(
            "bert", _fields(encoder.model), encoder.params, encoder.tokenizer, str(spec)
        )
    if family == "gguf":
        from dlx.hub.llama import load_gguf

        lm = load_gguf(spec, data_dir)
        return Pretrained("llama", _fields(lm.model), lm.params, lm.tokenizer, str(spec))
    if family == "llama":
        import tokenizers

        from dlx.hub.llama import TOKENIZER_FILE, load_llama

        model, params = load_llama(spec)
        path = Path(spec) / TOKENIZER_FILE
        tokenizer = tokenizers.Tokenizer.from_file(str(path)) if path.is_file() else None
        return Pretrained("llama", _fields(model), params, tokenizer, str(spec))
    from dlx.hub.gpt2 import load_gpt2

    model, params = load_gpt2(spec)
    return Pretrained("gpt2", _fields(model), params, None, str(spec))
