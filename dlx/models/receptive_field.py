"""Receptive fields of a stack of convolutions and pools.

For layer l with kernel k, stride s and dilation d, with j the distance in input pixels between
neighbouring outputs ("jump") and r the receptive field:
    j_l = j_{l-1} * s,    r_l = r_{l-1} + (d * (k - 1)) * j_{l-1}
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
    padding: str = "SAME"   # SAME or VALID
    dilation: int = 1


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    size: int        # spatial output size (square input assumed)
    jump: int
    receptive_field: int


def receptive_fields(layers: list[Layer], input_size: int) -> list[Field]:
    size, jump, field = input_size, 1, 1
    out = []
    for layer in layers:
        span = layer.dilation * (layer.kernel - 1) + 1
        if layer.padding == "SAME":
            size = math.ceil(size / layer.stride)
        else:
            size = (size - span) // layer.stride + 1
        field += (span - 1) * jump
        jump *= layer.stride
        out.append(Field(layer.name, size, jump, field))
    return out
