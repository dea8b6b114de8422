"""Analytic model FLOPs of the benchmarked networks (matmuls and convolutions only).

A multiply-add is 2 FLOPs. A train step costs 3x the forward: the backward pass computes, for
every dense/conv layer, the gradient w.r.t. its input and w.r.t. its weights, each a matmul of the
forward's size. (The first layer's input gradient is not needed, so XLA may skip it; the x3 is
the usual convention for utilisation numbers, as in PaLM/nanoGPT MFU.)

XLA's `cost_analysis()` counts differently: it leaves out the multiply-adds on the zero padding
of SAME convolutions (for a 3x3 SAME conv on 28x28 it counts (82/84)^2 of `conv_flops`), and it
adds elementwise and optimizer work.
"""

from __future__ import annotations

from collections.abc import Sequence

TRAIN_STEP_MULTIPLIER = 3  # forward + backward (input grads + weight grads)


def dense_flops(batch: int, in_features: int, out_features: int) -> int:
    return 2 * batch * in_features * out_features


def conv_flops(
    batch: int,
    out_height: int,
    out_width: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
) -> int:
    # Every output element is a dot product over a kernel_size^2 x in_channels window.
    return 2 * batch * out_height * out_width * out_channels * kernel_size**2 * in_channels


def mlp_forward_flops(batch: int, in_features: int, hidden: Sequence[int], num_outputs: int) -> int:
    widths = [in_features, *hidden, num_outputs]
    return sum(dense_flops(batch, a, b) for a, b in zip(widths, widths[1:]))


def _conv_out(size: int, kernel_size: int, padding: str) -> int:
    return size if padding.upper() == "SAME" else size - kernel_size + 1


def cnn_forward_flops(
    batch: int,
    image_shape: tuple[int, int, int],
    features: Sequence[int],
    kernel_size: int,
    dense: Sequence[int],
    num_outputs: int,
    padding: str = "SAME",
    pool_window: int = 2,
) -> int:
    """Conv stages (each followed by a pool that divides height and width by pool_window), then
    dense layers on the flattened feature map. Pooling, norms and activations are not counted."""
    height, width, channels = image_shape
    total = 0
    for out_channels in features:
        height = _conv_out(height, kernel_size, padding)
        width = _conv_out(width, kernel_size, padding)
        total += conv_flops(batch, height, width, channels, out_channels, kernel_size)
        height, width, channels = height // pool_window, width // pool_window, out_channels
    return total + mlp_forward_flops(batch, height * width * channels, dense, num_outputs)
