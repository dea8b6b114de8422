"""A PyTorch twin of dlx's YOLO-style detector (`dlx.models.yolo`), written as a PyTorch user
would (torch.nn, NCHW, `F.interpolate` for the nearest upsampling), for the inference bench
(`bench/detection.py`) and the parity test (tests/test_detection.py).

    net = Detector.from_dlx_model(model, in_channels=1)
    load_dlx(net, variables)            # dlx params and batch_stats (numpy or jax)
    raw = net(images_nchw_float)        # [B, 5 + classes, G, G], dlx's raw outputs as NCHW

Kept from dlx because it changes the numbers: SAME padding of a stride-2 3x3 convolution on an
even size pads (0, 1), not (1, 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.stride, self.kernel = stride, kernel
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2 and self.kernel == 3:
            x = F.pad(x, (0, 1, 0, 1))  # XLA's SAME for stride 2 on an even size
        return F.silu(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.reduce = ConvBN(features, features // 2, 1)
        self.expand = ConvBN(features // 2, features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.reduce(x))


class Detector(nn.Module):
    def __init__(self, in_channels: int, widths, blocks, num_classes: int):
        super().__init__()
        self.stem = ConvBN(in_channels, max(widths[0] // 2, 1), 3)
        stages, cin = [], max(widths[0] // 2, 1)
        for width, repeats in zip(widths, blocks):
            stages.append(
                nn.Sequential(ConvBN(cin, width, 3, 2), *(Residual(width) for _ in range(repeats)))
            )
            cin = width
        self.stages = nn.ModuleList(stages)
        self.merge_1x1 = ConvBN(widths[2] + widths[3], widths[2], 1)
        self.merge_3x3 = ConvBN(widths[2], widths[2], 3)
        self.head = nn.Conv2d(widths[2], 5 + num_classes, 1)

    @classmethod
    def from_dlx_model(cls, model, in_channels: int) -> Detector:
        return cls(in_channels, tuple(model.widths), tuple(model.blocks), model.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        up = F.interpolate(features[3], scale_factor=2, mode="nearest")
        x = self.merge_3x3(self.merge_1x1(torch.cat([features[2], up], dim=1)))
        return self.head(x)

    def dlx_layers(self) -> list[nn.Module]:
        """The ConvBN layers in the order dlx's Model creates them (ConvBN_0, ConvBN_1, ... at its
        top level, a residual block's two inside Residual_k)."""
        return [self.stem, *(s[0] for s in self.stages), self.merge_1x1, self.merge_3x3]


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(value, np.float32))


def _load_conv_bn(layer: ConvBN, params: Mapping, stats: Mapping) -> None:
    layer.conv.weight.data = _tensor(params["Conv_0"]["kernel"]).permute(3, 2, 0, 1).contiguous()
    layer.bn.weight.data = _tensor(params["BatchNorm_0"]["scale"])
    layer.bn.bias.data = _tensor(params["BatchNorm_0"]["bias"])
    layer.bn.running_mean.data = _tensor(stats["BatchNorm_0"]["mean"])
    layer.bn.running_var.data = _tensor(stats["BatchNorm_0"]["var"])


def load_dlx(net: Detector, variables: Mapping) -> None:
    """Copies a dlx yolo model's {"params", "batch_stats"} (unboxed) into `net`."""
    params, stats = variables["params"], variables["batch_stats"]
    for i, layer in enumerate(net.dlx_layers()):
        _load_conv_bn(layer, params[f"ConvBN_{i}"], stats[f"ConvBN_{i}"])
    residual = 0
    for stage in net.stages:
        for block in list(stage)[1:]:
            name = f"Residual_{residual}"
            _load_conv_bn(block.reduce, params[name]["ConvBN_0"], stats[name]["ConvBN_0"])
            _load_conv_bn(block.expand, params[name]["ConvBN_1"], stats[name]["ConvBN_1"])
            residual += 1
    net.head.weight.data = _tensor(params["head"]["kernel"]).permute(3, 2, 0, 1).contiguous()
    net.head.bias.data = _tensor(params["head"]["bias"])
