"""PyTorch twins of dlx's `mlp` and `cnn` models and a plain PyTorch train step, built from the
same `config.model` / `config.optimizer` fields, so a config change reaches both sides.

Written the way a PyTorch user would: `torch.nn` modules in NCHW, `torch.optim.AdamW` with its
defaults, weight decay off for biases and norm parameters (as dlx's `weight_decay_exclude`).
The learning-rate schedule is left out (a scalar per step, no measurable cost).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TorchStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mlp(in_features: int, hidden: Sequence[int], num_outputs: int, dropout: float) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, num_outputs))
    return nn.Sequential(*layers)


def cnn(
    image_shape: tuple[int, int, int],
    features: Sequence[int],
    kernel_size: int,
    dense: Sequence[int],
    num_outputs: int,
    dropout: float,
    batch_norm: bool,
    padding: str = "SAME",
    pool_window: int = 2,
) -> nn.Module:
    height, width, channels = image_shape
    same = padding.upper() == "SAME"
    layers: list[nn.Module] = []
    for out_channels in features:
        layers.append(
            nn.Conv2d(
                channels,
                out_channels,
                kernel_size,
                padding=kernel_size // 2 if same else 0,
                bias=not batch_norm,
            )
        )
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(), nn.MaxPool2d(pool_window)]
        if not same:
            height, width = height - kernel_size + 1, width - kernel_size + 1
        height, width, channels = height // pool_window, width // pool_window, out_channels
    layers.append(mlp(height * width * channels, dense, num_outputs, dropout))
    return nn.Sequential(*layers)


# Fields of dlx's models that the twins implement only at these values.
_SUPPORTED = {"activation": "relu", "pool": "max", "pool_size": 2, "strides": 1}


def from_config(model: Mapping[str, Any], image_shape: tuple[int, int, int]) -> nn.Module:
    """The PyTorch network for a dlx `config.model` dict (name `mlp` or `cnn`)."""
    unsupported = {k: v for k, v in model.items() if k in _SUPPORTED and v != _SUPPORTED[k]}
    if unsupported:
        raise ValueError(f"the PyTorch twins implement only {_SUPPORTED}, got {unsupported}")
    name = model["name"]
    if name == "mlp":
        if model.get("batch_norm"):
            raise ValueError("the PyTorch MLP twin has no batch norm")
        return mlp(
            int(np.prod(image_shape)),
            model["hidden"],
            model["num_outputs"],
            model.get("dropout", 0.0),
        )
    if name == "cnn":
        return cnn(
            image_shape,
            model["features"],
            model["kernel_size"],
            model.get("dense", ()),
            model["num_outputs"],
            model.get("dropout", 0.0),
            model.get("batch_norm", False),
            model.get("padding", "SAME"),
        )
    raise ValueError(f"no PyTorch twin for model {name!r}")


def adamw(
    module: nn.Module, optimizer: Mapping[str, Any], fused: bool = False
) -> torch.optim.AdamW:
    """AdamW as configured; `fused=True` is PyTorch's one-kernel implementation (on CPU the
    default is a Python loop over the parameters)."""
    # Matrices and conv kernels decay; biases and norm scales/offsets (all 1-D) do not.
    decayed = [p for p in module.parameters() if p.ndim > 1]
    not_decayed = [p for p in module.parameters() if p.ndim <= 1]
    groups = [
        {"params": decayed, "weight_decay": optimizer["weight_decay"]},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=optimizer["learning_rate"],
        betas=(optimizer["b1"], optimizer["b2"]),
        eps=optimizer["eps"],
        fused=fused or None,
    )


def train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    label_smoothing: float = 0.0,
    clip_global_norm: float = 0.0,
) -> TorchStep:
    """step(images uint8 [B, C, H, W], labels int64 [B]) -> loss of a classifier, images scaled
    to [0, 1] as dlx's classification task does; the learning-rate schedule is left out (a
    scalar a step). The step of every PyTorch classifier twin (MLP, CNN, ResNet, ViT)."""
    module.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        logits = module(images.float().div_(255.0))
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        loss.backward()
        if clip_global_norm:
            nn.utils.clip_grad_norm_(module.parameters(), clip_global_norm)
        optimizer.step()
        return loss

    return step


def to_torch_batch(batch: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """dlx's {"image": uint8 [B, H, W, C], "label": int32 [B]} as NCHW uint8 and int64 labels."""
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    return images, torch.from_numpy(batch["label"].astype(np.int64))
