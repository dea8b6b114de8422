"""A PyTorch Vision Transformer written as a PyTorch user would (torch.nn, NCHW images, a stride-p
Conv2d patch embedding or a stem of stride-2 Conv2d + BatchNorm2d + ReLU and a 1x1 Conv2d,
nn.MultiheadAttention), the reference for dlx/models/vit.py: the same
network by construction, checked equal on the same weights in tests/test_vit.py, and the
other side of bench/vit.py.

    net = ViT.from_fields(config.model, (28, 28, 1))   # a dlx vit config group or its fields
    load_dlx(net, params, batch_stats)                 # a dlx model's variables (numpy or jax)
    step = torch_models.train_step(net, adamw(net, config.optimizer), 0.1)  # bench/torch_models.py
    loss = step(images_uint8_nchw, labels)
    maps = net.attention_maps(images)                  # [blocks, B, heads, tokens, tokens]

torchvision is not installable next to this torch (its CPU wheel does not exist), so nothing
here comes from it. Dropout sits where dlx has it: on the embeddings and on each residual branch
(not inside the MLP); stochastic depth drops a branch per example with a rate rising linearly
over the blocks, as in timm. `dlx_state_dict` / `block_state_dict` map dlx's parameter tree
(or its gradients) onto the state-dict names.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


class DropPath(nn.Module):
    """Zeroes each example's residual branch with probability `rate` in training (timm)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(
        self,
        width: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
        eps: float,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, dropout=attention_dropout, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width))
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        x = x + self.drop_path(self.dropout(h))
        return x + self.drop_path(self.dropout(self.mlp(self.ln_2(x))))


def sinusoidal_2d(rows: int, cols: int, width: int) -> torch.Tensor:
    """[rows * cols, width]: the row's 1-D sin/cos encoding (sin at even, cos at odd features, as
    Vaswani et al.) in the first half, the column's in the second."""
    half = width // 2
    inv_freq = 10000.0 ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None].double() * inv_freq
        return torch.stack([angles.sin(), angles.cos()], -1).reshape(len(positions), -1)[:, :half]

    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([encode(r.reshape(-1)), encode(c.reshape(-1))], -1).float()


class ViT(nn.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_outputs: int = 10,
        patch_size: int = 4,
        num_layers: int = 6,
        embed_dim: int = 128,
        num_heads: int = 4,
        mlp_dim: int = 0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        pool: str = "cls",
        positions: str = "learned",
        stem: str = "patch",
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        height, width, channels = image_shape
        rows, cols = height // patch_size, width // patch_size
        self.pool = pool
        if stem == "conv":  # log2(p) stride-2 3x3 convs, widths doubling up to embed_dim
            count, layers = patch_size.bit_length() - 1, []
            for i in range(count):
                features = max(1, embed_dim >> (count - 1 - i))
                layers += [
                    nn.Conv2d(channels, features, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(features, eps=1e-5, momentum=0.1),
                    nn.ReLU(),
                ]
                channels = features
            self.stem = nn.Sequential(*layers)
            self.patch_embed = nn.Conv2d(channels, embed_dim, 1)
        else:
            self.stem = nn.Identity()
            self.patch_embed = nn.Conv2d(channels, embed_dim, patch_size, stride=patch_size)
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        tokens = rows * cols + (pool == "cls")
        if positions == "learned":
            self.pos_embedding = nn.Parameter(torch.randn(1, tokens, embed_dim) * 0.02)
        else:
            table = sinusoidal_2d(rows, cols, embed_dim)
            if pool == "cls":
                table = torch.cat([torch.zeros(1, embed_dim), table])
            self.register_buffer("pos_embedding", table[None])
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_dim or 4 * embed_dim,
                dropout,
                attention_dropout,
                drop_path * i / max(1, num_layers - 1),
                norm_eps,
            )
            for i in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_outputs)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], image_shape: tuple[int, int, int]) -> ViT:
        """From a dlx `vit.Model`'s fields (`config.model` without "name", or every field)."""
        known = set(inspect.signature(cls).parameters) - {"image_shape"}
        fields = {k: v for k, v in fields.items() if k not in ("name", "parent")}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"the PyTorch ViT has no fields {unknown}")
        return cls(image_shape, **fields)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The blocks' input: patch embeddings, class token, positions, dropout."""
        x = self.patch_embed(self.stem(images)).flatten(2).transpose(1, 2)  # [B, patches, width]
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [B, C, H, W] in [0, 1] -> logits [B, num_outputs]."""
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(dim=1))

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Every block's attention weights, [blocks, B, heads, tokens, tokens] (eval mode)."""
        maps, x = [], self.tokens(images)
        for block in self.blocks:
            h = block.ln_1(x)
            maps.append(block.attn(h, h, h, average_attn_weights=False)[1])
            x = block(x)
        return torch.stack(maps)


# ------------------------------------------------------------------------------------------------
# dlx weights
# ------------------------------------------------------------------------------------------------
def _linear(kernel: np.ndarray, bias: np.ndarray, in_axes: int = 1) -> dict[str, np.ndarray]:
    """A dlx Projection (kernel [in..., out...]) as nn.Linear's weight [out, in] and bias."""
    fan_in = math.prod(kernel.shape[:in_axes])
    return {"weight": kernel.reshape(fan_in, -1).T, "bias": bias.reshape(-1)}


def _norm(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"weight": tree["scale"], "bias": tree["bias"]}


def block_state_dict(block: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """`Block.state_dict()` entries of one dlx vit.Block's params (or of anything shaped like
    them, e.g. their gradients: the map is a reshape and transpose)."""
    attn, mlp = block["attn"], block["mlp"]
    qkv = _linear(attn["qkv"]["kernel"], attn["qkv"]["bias"])
    pieces = {
        "ln_1": _norm(block["ln_1"]),
        "ln_2": _norm(block["ln_2"]),
        "attn.out_proj": _linear(attn["proj"]["kernel"], attn["proj"]["bias"], in_axes=2),
        "mlp.0": _linear(mlp["fc"]["kernel"], mlp["fc"]["bias"]),
        "mlp.2": _linear(mlp["proj"]["kernel"], mlp["proj"]["bias"]),
    }
    state = {f"{prefix}.{name}": value for prefix, t in pieces.items() for name, value in t.items()}
    state["attn.in_proj_weight"], state["attn.in_proj_bias"] = qkv["weight"], qkv["bias"]
    return state


def dlx_state_dict(params: Mapping[str, Any], num_layers: int) -> dict[str, np.ndarray]:
    """The `ViT.state_dict()` entries of a dlx vit.Model's params (the learned tables; a
    sinusoidal table is a buffer the ViT builds itself), or of anything shaped like them."""
    p = params
    state = {
        "patch_embed.weight": p["patch_embed"]["kernel"].transpose(3, 2, 0, 1),
        "patch_embed.bias": p["patch_embed"]["bias"],
    }
    for i in range(len([k for k in p if k.startswith("stem_")])):
        stem = p[f"stem_{i}"]
        state[f"stem.{3 * i}.weight"] = stem["conv"]["kernel"].transpose(3, 2, 0, 1)
        state.update({f"stem.{3 * i + 1}.{k}": v for k, v in _norm(stem["bn"]).items()})
    if "cls_token" in p:
        state["cls_token"] = p["cls_token"].reshape(1, 1, -1)
    if "pos_embedding" in p:
        state["pos_embedding"] = p["pos_embedding"]["embedding"][None]
    for i in range(num_layers):
        state.update({f"blocks.{i}.{k}": v for k, v in block_state_dict(p[f"h_{i}"]).items()})
    state.update({f"ln_f.{k}": v for k, v in _norm(p["ln_f"]).items()})
    state.update(
        {f"head.{k}": v for k, v in _linear(p["head"]["kernel"], p["head"]["bias"]).items()}
    )
    return state


def load_dlx(net: ViT, params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None):
    """Copies a dlx vit.Model's params (nested dict of numpy or jax arrays) into `net`, and the
    conv stem's batch-norm averages from `batch_stats` when given."""
    copy_parameters(net, dlx_state_dict(jax_free(params), len(net.blocks)))
    with torch.no_grad():
        for name, stats in sorted(jax_free(batch_stats or {}).items()):
            norm = net.stem[3 * int(name.removeprefix("stem_")) + 1]
            norm.running_mean.copy_(torch.from_numpy(np.array(stats["bn"]["mean"])))
            norm.running_var.copy_(torch.from_numpy(np.array(stats["bn"]["var"])))


def copy_parameters(module: nn.Module, values: Mapping[str, np.ndarray]) -> None:
    """Sets every parameter of `module` from `values` (by `named_parameters` name); the names
    and shapes must match exactly."""
    expected = {name for name, _ in module.named_parameters()}
    if set(values) != expected:
        raise ValueError(
            f"dlx params do not fit this module: missing {sorted(expected - set(values))}, "
            f"extra {sorted(set(values) - expected)}"
        )
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            value = torch.from_numpy(np.array(values[name], np.float32))
            if value.shape != tensor.shape:
                raise ValueError(
                    f"{name}: dlx gives {tuple(value.shape)}, torch has {tensor.shape}"
                )
            tensor.copy_(value)


def jax_free(tree: Any) -> Any:
    """A nested dict of (possibly boxed) jax arrays as numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: jax_free(v) for k, v in tree.items()}
    return np.asarray(getattr(tree, "value", tree))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def adamw(net: nn.Module, optimizer: Mapping[str, Any], fused: bool = False) -> torch.optim.AdamW:
    """AdamW as `config.optimizer` sets it; like dlx's default `weight_decay_exclude`, biases and
    norm parameters (the 1-D parameters here) are not decayed."""
    decayed = [p for n, p in net.named_parameters() if p.ndim > 1]
    plain = [p for n, p in net.named_parameters() if p.ndim <= 1]
    return torch.optim.AdamW(
        [
            {"params": decayed, "weight_decay": optimizer["weight_decay"]},
            {"params": plain, "weight_decay": 0.0},
        ],
        lr=optimizer["learning_rate"],
        betas=(optimizer["b1"], optimizer["b2"]),
        eps=optimizer["eps"],
        fused=fused or None,
    )
