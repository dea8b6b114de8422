"""Hugging Face GPT-2 checkpoints <-> dlx's decoder Transformer (dlx/models/transformer.py).

A checkpoint is a directory with `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json` and its shards), as `GPT2LMHeadModel.save_pretrained` writes it.

    model, params = load_gpt2("path/to/gpt2")
    logits = model.apply({"params": params}, tokens)
    export_gpt2(model, params, "path/to/out")   # GPT2LMHeadModel.from_pretrained reads it

Loading runs no code from the checkpoint: config.json is read with `json`, tensors with
`safetensors` into numpy (no pickle, no torch, no remote code). The config and every tensor's
name and shape are checked before any weight is converted; a checkpoint dlx cannot represent
exactly raises ConfigError (the config) or DataError (files and tensors) in one line.

Tensor names: `GPT2LMHeadModel` writes "transformer.h.0.attn.c_attn.weight" ..., plus
"lm_head.weight" only when untied; `GPT2Model` and the original OpenAI conversions write
"h.0.attn.c_attn.weight" ... without the prefix. Both load. GPT-2's causal-mask buffers
("attn.bias", "attn.masked_bias") are not weights and are skipped. Export writes the
`GPT2LMHeadModel` layout.

Mapping (E embed, H heads, D = E / H; GPT-2's Conv1D weights are already [in, out]):
    wte.weight [V, E]            -> wte/embedding
    wpe.weight [P, E]            -> wpe/embedding
    h.i.ln_1.{weight,bias}       -> h_i/ln_1/{scale,bias}      (ln_2, ln_f alike)
    h.i.attn.c_attn.weight [E,3E] -> h_i/attn/qkv/kernel [E, 3, H, D], bias [3E] -> [3, H, D]
    h.i.attn.c_proj.weight [E,E] -> h_i/attn/proj/kernel [H, D, E]
    h.i.mlp.c_fc, h.i.mlp.c_proj -> h_i/mlp/fc, h_i/mlp/proj
    lm_head.weight [V, E]        -> lm_head/kernel [E, V] (tie_word_embeddings false only)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from dlx.errors import ConfigError, DataError
from dlx.hub import safetensors
from dlx.hub.safetensors import WEIGHTS_FILE
from dlx.models.transformer import Model

CONFIG_FILE = "config.json"
PREFIX = "transformer."
LM_HEAD = "lm_head.weight"
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # the same tanh approximation, two names

# GPT2Config's defaults, for keys an older config.json leaves out (transformers fills them in
# the same way).
HF_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint directory, as a dict (not validated; see model_config)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"gpt2: no {CONFIG_FILE} in {directory}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"gpt2: {path} is not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise DataError(f"gpt2: {path} holds a JSON {type(config).__name__}, not an object")
    return config


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"gpt2 config: {key} must be a positive integer, got {value!r}")
    return value


def _rate(config: Mapping[str, Any], key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"gpt2 config: {key} must be a number in [0, 1), got {value!r}")
    return float(value)


def model_config(hf_config: Mapping[str, Any], *, dropout: float | None = None) -> dict[str, Any]:
    """The dlx `transformer.Model` fields equivalent to a Hugging Face GPT-2 config.

    dlx has one dropout rate where GPT-2 has three (resid, embd, attn): `dropout=None` takes
    the checkpoint's rate when the three agree and raises ConfigError when they differ (pass a
    rate; dropout only acts in training). Settings dlx cannot reproduce exactly (another
    activation, unscaled or layer-scaled attention, cross-attention) raise ConfigError.
    """
    model_type = hf_config.get("model_type")
    if model_type != "gpt2":
        raise ConfigError(f"gpt2 config: model_type is {model_type!r}, expected 'gpt2'")
    config = {**HF_DEFAULTS, **hf_config}
    activation = config["activation_function"]
    if activation not in GELU_TANH:
        raise ConfigError(
            f"gpt2 config: activation_function {activation!r} is not supported; "
            f"dlx's GPT-2 MLP uses the tanh GELU {GELU_TANH}"
        )
    for key, needed in [
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("add_cross_attention", False),
    ]:
        if config[key] is not needed:
            raise ConfigError(
                f"gpt2 config: {key}={config[key]!r} is not supported (dlx needs {needed})"
            )
    if not isinstance(config["tie_word_embeddings"], bool):
        raise ConfigError(
            f"gpt2 config: tie_word_embeddings must be true or false, got "
            f"{config['tie_word_embeddings']!r}"
        )
    embed, heads = _positive_int(config, "n_embd"), _positive_int(config, "n_head")
    if embed % heads:
        raise ConfigError(f"gpt2 config: n_embd {embed} is not divisible by n_head {heads}")
    mlp_dim = 4 * embed if config["n_inner"] is None else _positive_int(config, "n_inner")
    eps = config["layer_norm_epsilon"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConfigError(f"gpt2 config: layer_norm_epsilon must be in (0, 1), got {eps!r}")
    if dropout is None:
        rates = {key: _rate(config, key) for key in DROPOUT_KEYS}
        if len(set(rates.values())) > 1:
            raise ConfigError(
                f"gpt2 config: dlx has one dropout rate but the checkpoint has "
                f"{rates}; pass dropout=..."
            )
        dropout = rates["resid_pdrop"]
    elif not 0 <= dropout < 1:
        raise ConfigError(f"gpt2: dropout must be in [0, 1), got {dropout!r}")
    return dict(
        kind="decoder",
        vocab_size=_positive_int(config, "vocab_size"),
        num_layers=_positive_int(config, "n_layer"),
        embed_dim=embed,
        num_heads=heads,
        mlp_dim=mlp_dim,
        max_len=_positive_int(config, "n_positions"),
        dropout=float(dropout),
        norm="layer",
        norm_eps=float(eps),
        mlp="gelu",
        position="learned",
        tie_embeddings=config["tie_word_embeddings"],
        bias=True,
    )


def gpt2_config(model: Model, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A GPT-2 config.json for a dlx decoder with GPT-2's architecture (ConfigError if it has
    another). `extra` adds keys that do not change the network, e.g. bos_token_id."""
    required = dict(kind="decoder", norm="layer", mlp="gelu", position="learned", bias=True)
    for field, value in required.items():
        if getattr(model, field) != value:
            raise ConfigError(
                f"gpt2 export: the model has {field}={getattr(model, field)!r}; "
                f"GPT-2 needs {field}={value!r}"
            )
    if model.kv_heads != model.num_heads:
        raise ConfigError(
            f"gpt2 export: GPT-2 has no grouped-query attention (num_kv_heads="
            f"{model.num_kv_heads}, num_heads={model.num_heads})"
        )
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "activation_function": "gelu_new",
        "vocab_size": model.vocab_size,
        "n_positions": model.max_len,
        "n_embd": model.embed_dim,
        "n_layer": model.num_layers,
        "n_head": model.num_heads,
        "n_inner": None if model.hidden_dim == 4 * model.embed_dim else model.hidden_dim,
        "layer_norm_epsilon": model.norm_eps,
        "tie_word_embeddings": model.tie_embeddings,
        **{key: model.dropout for key in DROPOUT_KEYS},
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "dtype": "float32",
    }
    clashes = sorted(set(extra or {}) & (set(HF_DEFAULTS) | {"model_type", "architectures"}))
    if clashes:
        raise ConfigError(f"gpt2 export: extra config keys {clashes} would change the network")
    return {**config, **(extra or {})}


# ---------------------------------------------------------------------------------------------
# Tensor mapping
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One GPT-2 tensor (name without the "transformer." prefix) and its dlx parameter."""

    name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    dlx_shape: tuple[int, ...]
    transposed: bool = False  # lm_head: torch Linear stores [out, in]

    def to_dlx(self, array: np.ndarray) -> np.ndarray:
        return (array.T if self.transposed else array).reshape(self.dlx_shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.transposed:
            return array.reshape(self.hf_shape[::-1]).T
        return array.reshape(self.hf_shape)


def tensor_specs(model: Model) -> list[TensorSpec]:
    """Every tensor of the GPT-2 checkpoint equivalent to `model` (lm_head only if untied)."""
    e, h, d, m, v = (
        model.embed_dim,
        model.num_heads,
        model.head_dim,
        model.hidden_dim,
        model.vocab_size,
    )

    def norm(hf: str, dlx: tuple[str, ...]) -> list[TensorSpec]:
        return [
            TensorSpec(f"{hf}.weight", (*dlx, "scale"), (e,), (e,)),
            TensorSpec(f"{hf}.bias", (*dlx, "bias"), (e,), (e,)),
        ]

    def dense(
        hf: str,
        dlx: tuple[str, ...],
        n_in: int,
        n_out: int,
        kernel_shape: tuple[int, ...],
        bias_shape: tuple[int, ...],
    ) -> list[TensorSpec]:
        return [
            TensorSpec(f"{hf}.weight", (*dlx, "kernel"), (n_in, n_out), kernel_shape),
            TensorSpec(f"{hf}.bias", (*dlx, "bias"), (n_out,), bias_shape),
        ]

    specs = [
        TensorSpec("wte.weight", ("wte", "embedding"), (v, e), (v, e)),
        TensorSpec("wpe.weight", ("wpe", "embedding"), (model.max_len, e), (model.max_len, e)),
    ]
    for i in range(model.num_layers):
        hf, dlx = f"h.{i}", f"h_{i}"
        specs += norm(f"{hf}.ln_1", (dlx, "ln_1"))
        specs += dense(f"{hf}.attn.c_attn", (dlx, "attn", "qkv"), e, 3 * e, (e, 3, h, d), (3, h, d))
        specs += dense(f"{hf}.attn.c_proj", (dlx, "attn", "proj"), e, e, (h, d, e), (e,))
        specs += norm(f"{hf}.ln_2", (dlx, "ln_2"))
        specs += dense(f"{hf}.mlp.c_fc", (dlx, "mlp", "fc"), e, m, (e, m), (m,))
        specs += dense(f"{hf}.mlp.c_proj", (dlx, "mlp", "proj"), m, e, (m, e), (e,))
    specs += norm("ln_f", ("ln_f",))
    if not model.tie_embeddings:
        specs.append(TensorSpec(LM_HEAD, ("lm_head", "kernel"), (v, e), (e, v), True))
    return specs


def _check_specs_match_model(model: Model, specs: list[TensorSpec]) -> None:
    # Guards the mapping above against a change of dlx's parameter names.
    mapped = {spec.path: spec.dlx_shape for spec in specs}
    actual = safetensors.model_param_shapes(model)
    if mapped != actual:
        differing = sorted(set(mapped.items()) ^ set(actual.items()))[:4]
        raise RuntimeError(
            f"dlx.hub.gpt2 maps parameters the transformer does not have (or "
            f"misses some): {differing}"
        )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _strip_prefix(names: list[str], where: Path) -> dict[str, str]:
    """GPT-2 name (without "transformer.") -> stored name; buffers dropped."""
    return safetensors.strip_prefix(
        names,
        PREFIX,
        body=lambda n: n != LM_HEAD,
        skipped=BUFFER_SUFFIXES,
        what="gpt2",
        where=where,
    )


def _check_sizes_against_weights(
    fields: Mapping[str, Any], stored: safetensors.TensorIndex, directory: Path
) -> None:
    """The sizes config.json claims (vocab, width, positions, MLP width, layers) against the
    shapes in the safetensors headers, before anything is built: a config claiming 100,000
    layers is refused here rather than after minutes of building them. (GPT-2's tensors do not
    show the number of heads; model_config checks that it divides n_embd.)"""
    names = _strip_prefix(list(stored), directory)
    shapes = {name: stored[stored_name][1] for name, stored_name in names.items()}
    for table in ("wte.weight", "wpe.weight"):
        if table not in shapes:
            raise DataError(f"gpt2: {directory} lacks tensor(s) ['{table}']")
        if len(shapes[table]) != 2:
            raise DataError(
                f"gpt2: tensor {names[table]} has shape {list(shapes[table])}; "
                f"an embedding table is 2-D"
            )
    claims = [
        ("vocab_size", fields["vocab_size"], shapes["wte.weight"][0], "rows of wte.weight"),
        ("n_embd", fields["embed_dim"], shapes["wte.weight"][1], "columns of wte.weight"),
        ("n_positions", fields["max_len"], shapes["wpe.weight"][0], "rows of wpe.weight"),
    ]
    fc = shapes.get("h.0.mlp.c_fc.weight")
    if fc is not None and len(fc) == 2:
        claims.append(("n_inner", fields["mlp_dim"], fc[1], "columns of h.0.mlp.c_fc.weight"))
    for key, claimed, found, where in claims:
        if claimed != found:
            raise DataError(
                f"gpt2: config.json claims {key}={claimed} but the weights in "
                f"{directory} have {found} ({where})"
            )
    blocks = {int(match.group(1)) for name in shapes if (match := re.match(r"h\.(\d+)\.", name))}
    if fields["num_layers"] > len(blocks):  # fewer: the extra blocks' tensors are named below
        raise DataError(
            f"gpt2: config.json claims n_layer={fields['num_layers']} but the "
            f"weights in {directory} hold {len(blocks)} block(s)"
            f"{f' (h.{min(blocks)} ... h.{max(blocks)})' if blocks else ''}"
        )


def load_gpt2(
    directory: str | os.PathLike, *, dropout: float | None = None, dtype: Any = jnp.float32
) -> tuple[Model, dict[str, Any]]:
    """(model, params) from a Hugging Face GPT-2 checkpoint directory; apply the model with
    `{"params": params}`. `dropout`: see model_config. Raises ConfigError / DataError (one line)
    for a checkpoint that is not GPT-2 or does not match its own config; the config's sizes are
    checked against the safetensors headers before the model is built."""
    directory = Path(directory)
    fields = model_config(read_config(directory), dropout=dropout)
    stored = safetensors.tensor_index(safetensors.weight_files(directory, "gpt2"), "gpt2")
    _check_sizes_against_weights(fields, stored, directory)
    model = Model(**fields)
    specs = tensor_specs(model)
    names = _strip_prefix(list(stored), directory)

    expected = {spec.name for spec in specs}
    missing = [spec.name for spec in specs if spec.name not in names]
    if missing:
        raise DataError(
            f"gpt2: {directory} lacks tensor(s) {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)"
        )
    unexpected = sorted(set(names) - expected - {LM_HEAD})
    if unexpected:
        raise DataError(
            f"gpt2: {directory} has tensor(s) a GPT-2 of this config does not: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for spec in specs:
        shape = stored[names[spec.name]][1]
        if shape != spec.hf_shape:
            raise DataError(
                f"gpt2: tensor {names[spec.name]} has shape {list(shape)}, the "
                f"config implies {list(spec.hf_shape)}"
            )
    _check_specs_match_model(model, specs)

    params: dict[str, Any] = {}
    with safetensors.Reader(stored, "gpt2") as read:
        for spec in specs:
            node = params
            for key in spec.path[:-1]:
                node = node.setdefault(key, {})
            node[spec.path[-1]] = jnp.asarray(spec.to_dlx(read(names[spec.name])), dtype)
        if model.tie_embeddings and LM_HEAD in names:
            head, wte = read(names[LM_HEAD]), read(names["wte.weight"])
            if head.shape != wte.shape or not np.array_equal(head, wte):
                raise DataError(
                    f"gpt2: {directory} has an {LM_HEAD} that differs from "
                    f"wte.weight but its config ties them (tie_word_embeddings)"
                )
    return model, params


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def export_gpt2(
    model: Model,
    params: Mapping[str, Any],
    directory: str | os.PathLike,
    *,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write `directory`/config.json and model.safetensors (float32, GPT2LMHeadModel names)
    for a dlx decoder with GPT-2's architecture. `params` is the "params" collection (or a
    variables dict holding it), boxed or not. Returns the directory."""
    config = gpt2_config(model, extra_config)
    specs = tensor_specs(model)
    _check_specs_match_model(model, specs)
    wanted = {spec.path: spec.dlx_shape for spec in specs}
    params = safetensors.params_for_export(params, wanted, "gpt2")

    tensors = {}
    for spec in specs:
        leaf = params
        for key in spec.path:
            leaf = leaf[key]
        hf = spec.to_hf(np.asarray(jax.device_get(leaf)).astype(np.float32))
        name = spec.name if spec.name == LM_HEAD else PREFIX + spec.name
        tensors[name] = np.ascontiguousarray(hf)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory
