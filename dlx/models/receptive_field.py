"""Receptive fields of a stack of convolutions and pools, along one spatial axis.

For layer l with kernel k, stride s and dilation d (span k' = d * (k - 1) + 1), with j the distance
in input pixels between neighbouring outputs ("jump") and r the receptive field:
    j_l = j_{l-1} * s,    r_l = r_{l-1} + (k' - 1) * j_{l-1}
starting from j_0 = r_0 = 1 at the input.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    kernel: int
    stride: int = 1
    padding: str | int = "SAME"  # SAME, VALID, or explicit zeros on each side
    dilation: int = 1


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    size: int  # output size along the axis
    jump: int
    receptive_field: int


def output_size(layer: Layer, size: int) -> int:
    span = layer.dilation * (layer.kernel - 1) + 1
    if layer.padding == "SAME":
        return math.ceil(size / layer.stride)
    pad = 0 if layer.padding == "VALID" else int(layer.padding)
    return (size + 2 * pad - span) // layer.stride + 1


def receptive_fields(layers: list[Layer], input_size: int) -> list[Field]:
    """One `Field` per layer: its output size, jump and receptive field (in input pixels)."""
    size, jump, field = input_size, 1, 1
    out = []
    for layer in layers:
        size = output_size(layer, size)
        field += layer.dilation * (layer.kernel - 1) * jump
        jump *= layer.stride
        out.append(Field(layer.name, size, jump, field))
    return out
