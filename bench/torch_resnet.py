"""PyTorch references of dlx's ResNets (dlx/models/resnet.py), written the way a PyTorch user
writes them (torchvision's layout and parameter names: conv1/bn1, layer1.0.conv1, downsample,
fc; NCHW; `nn.BatchNorm2d` with momentum 0.1, i.e. dlx's 0.9), a converter from dlx's
variables, and a plain train step (SGD with Nesterov momentum, label smoothing).

torchvision cannot be installed next to this torch (FIELD-NOTES), so the networks are here; with
1000 classes and 3 input channels ResNet-18/50 have torchvision's parameter counts (checked in
tests/test_resnet.py).

    net = from_dlx_model(resnet.Model(depth=20), in_channels=1)
    load_dlx(net, params, batch_stats)            # dlx's params / batch_stats trees (numpy)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class PadShortcut(nn.Module):
    """Option A: subsample by `stride`, zero channels appended on both sides (as dlx's
    `pad_shortcut`)."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


def _shortcut(in_channels: int, out_channels: int, stride: int, kind: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "pad":
        return PadShortcut(out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, width, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, shortcut: str):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: str,
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        num_outputs: int,
        in_channels: int = 3,
        stem: str = "imagenet",
        shortcut: str = "projection",
    ):
        super().__init__()
        block_class = Bottleneck if block == "bottleneck" else BasicBlock
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        self.stages = len(blocks)
        for i, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for b in range(count):
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(block_class(channels, width, stride, shortcut))
                channels = width * block_class.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def from_dlx_model(model, in_channels: int) -> ResNet:
    """The reference network of a dlx `resnet.Model` (its depth, style, stem, widths,
    shortcuts and outputs), initialised by PyTorch."""
    if model.stochastic_depth:
        raise ValueError("the PyTorch reference has no stochastic depth")
    from dlx.models import resnet

    block, blocks, widths = resnet.plan(model)
    return ResNet(
        block,
        blocks,
        widths,
        model.num_outputs,
        in_channels,
        resnet.resolved_stem(model),
        resnet.resolved_shortcut(model),
    )


def dlx_to_torch_name(path: tuple[str, ...]) -> str:
    """A dlx variable path, e.g. ("stage2_block1", "shortcut_bn", "scale"), as the reference's
    state_dict key ("layer2.0.downsample.1.weight")."""
    *modules, leaf = path
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }[leaf]
    names = []
    for module in modules:
        if module == "stem":
            continue
        if module == "head":
            names.append("fc")
        elif module.startswith("stage"):
            stage, block = module[len("stage") :].split("_block")
            names.append(f"layer{stage}.{int(block) - 1}")
        elif module == "shortcut_conv":
            names.append("downsample.0")
        elif module == "shortcut_bn":
            names.append("downsample.1")
        elif modules[0] == "stem":
            names.append({"conv": "conv1", "bn": "bn1"}[module])
        else:
            names.append(module)
    return ".".join([*names, leaf])


def _to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv kernel HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # dense [in, out] -> Linear.weight [out, in]
        return value.T
    return value


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = np.array(value, np.float32)  # a writable copy
    return flat


def load_dlx(
    net: ResNet, params: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None
) -> None:
    """Copies dlx's params (and batch_stats) into `net`; every reference tensor must be set."""
    values = {**_flatten(params), **_flatten(batch_stats or {})}
    state = net.state_dict()
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    if batch_stats is None:
        expected = {k for k in expected if not k.endswith(("running_mean", "running_var"))}
    loaded = {}
    for path, value in values.items():
        name = dlx_to_torch_name(path)
        if name not in state:
            raise KeyError(f"dlx variable {'/'.join(path)} -> {name}: not in the reference")
        loaded[name] = torch.from_numpy(np.ascontiguousarray(_to_torch_layout(name, value)))
        if loaded[name].shape != state[name].shape:
            raise ValueError(f"{name}: dlx {tuple(loaded[name].shape)} vs {state[name].shape}")
    missing = expected - set(loaded)
    if missing:
        raise KeyError(f"reference tensors not set from dlx: {sorted(missing)}")
    net.load_state_dict(loaded, strict=False)


# ------------------------------------------------------------------------------------------------
# Optimizer (the step is bench/torch_models.py's `train_step`)
# ------------------------------------------------------------------------------------------------
def sgd(net: nn.Module, optimizer: Mapping[str, Any]) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum as configured; kernels decay, BN parameters and biases (the
    1-D tensors) do not. PyTorch's decay is coupled (added to the gradient, so it passes through
    the momentum); dlx's is decoupled, configured (1 - momentum) times larger for the same
    strength, so the reference uses weight_decay * (1 - momentum)."""
    decay = optimizer["weight_decay"] * (1 - optimizer["momentum"])
    groups = [
        {"params": [p for p in net.parameters() if p.ndim > 1], "weight_decay": decay},
        {"params": [p for p in net.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups,
        lr=optimizer["learning_rate"],
        momentum=optimizer["momentum"],
        nesterov=optimizer["nesterov"],
    )
