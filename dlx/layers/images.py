"""Image building blocks for encoders, decoders and generators: strided convolutions down,
nearest-neighbour upsampling followed by a convolution up (a "resize-convolution": no
checkerboard artifacts, and on XLA:CPU no transposed convolution, a known slow path), computed
as one convolution on the small map (`upsample_conv`; BENCHMARKS.md, tuning notes).
Parameters carry the conv layers' logical axis names."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlx.layers import initializers

CONV_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")


def conv(
    features: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    init: str = "he_normal",
    use_bias: bool = True,
    name: str | None = None,
) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding="SAME",
        use_bias=use_bias,
        name=name,
        kernel_init=nn.with_logical_partitioning(initializers.get(init), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
    )


def upsample_conv(
    features: int,
    *,
    factor: int = 2,
    kernel: int = 3,
    init: str = "he_normal",
    use_bias: bool = True,
    name: str | None = None,
) -> nn.Conv:
    """`conv(features, kernel=kernel)(upsample(x, factor))` as one convolution on the small map:
    the same module and parameters (an nn.Conv's kernel and bias), the same numbers up to float
    rounding, 2.25x fewer multiply-adds (factor 2, kernel 3) and no upsampled input in memory.

    Output pixel (factor*i + a, factor*j + b) sees only small-map pixels near (i, j), through
    weights that are sums of the kernel's (`_phase_taps`). One convolution computes every
    phase (a, b) as a group of output channels, and a depth-to-space reshape and a slice put the
    groups in place (`_upsampled_conv`)."""
    if kernel % 2 == 0:
        raise ValueError(f"upsample_conv needs an odd kernel (SAME padding), got {kernel}")
    return nn.Conv(
        features,
        (kernel, kernel),
        padding="SAME",
        use_bias=use_bias,
        name=name,
        kernel_init=nn.with_logical_partitioning(initializers.get(init), CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        conv_general_dilated=functools.partial(_upsampled_conv, factor=factor),
    )


def _phase_taps(kernel: int, factor: int) -> tuple[np.ndarray, tuple[int, int], int]:
    """For one spatial axis: (taps [factor, span, kernel] of 0/1, (pad_low, pad_high), start).

    Output row factor*i + a under kernel row d reads upsampled row factor*i + a + d - kernel//2,
    that is small row i + (a + d - kernel//2) // factor. A VALID convolution of `span` taps over
    the small map padded by (pad_low, pad_high) computes, at row j, each phase's sum over the
    rows its kernel rows read, phase a in channel group ("slot") (a - kernel//2) % factor, so
    that after depth-to-space (row j, slot r -> row factor*j + r) output row p is row
    start + p: taps[slot, t, d] = 1 where kernel row d reads tap t."""
    half = kernel // 2
    offsets = np.array([[(a + d - half) // factor for d in range(kernel)] for a in range(factor)])
    first = offsets.min(axis=1)  # phase a's taps start at padded row j = i + first[a] + low
    span = int((offsets.max(axis=1) - first).max()) + 1
    low, high = int(-first.min()), int(first.max()) + span - 1
    taps = np.zeros((factor, span, kernel), np.float32)
    for a in range(factor):
        slot = (a - half) % factor
        taps[slot, offsets[a] - first[a], np.arange(kernel)] = 1.0
    return taps, (low, high), factor * low - half


def _upsampled_conv(
    x,
    kernel,
    window_strides,
    padding,
    *,
    factor: int,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
):
    """nn.Conv's `conv_general_dilated` for `upsample_conv` (NHWC, HWIO kernel, stride 1, SAME).
    The input is padded explicitly and convolved VALID: with the padding inside the convolution,
    XLA:CPU took ~100x longer for the 2x2 kernel's gradient."""
    del window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers
    size, _, c_in, c_out = kernel.shape
    taps, (low, high), start = _phase_taps(size, factor)
    span = taps.shape[1]
    # [span, span, in, row slot, column slot, out]: the kernel of every phase
    small = jnp.einsum("atd,bse,dexo->tsxabo", taps, taps, kernel, precision=precision)
    y = jax.lax.conv_general_dilated(
        jnp.pad(x, ((0, 0), (low, high), (low, high), (0, 0))),
        small.reshape(span, span, c_in, factor * factor * c_out),
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=feature_group_count,
        precision=precision,
    )
    b, h, w, _ = y.shape
    y = y.reshape(b, h, w, factor, factor, c_out).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, h * factor, w * factor, c_out)  # depth to space
    return y[:, start : start + factor * x.shape[1], start : start + factor * x.shape[2]]


def upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling of [B, H, W, C] by `factor` in H and W (a broadcast and a
    reshape: no gather, no transposed convolution)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


def image_grid(images, columns: int | None = None, pad: int = 1):
    """[N, H, W, C] in [0, 1] -> one [rows*(H+pad), columns*(W+pad), C] numpy image."""
    import numpy as np

    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + col * (w + pad) : pad + col * (w + pad) + w,
        ] = image
    return np.clip(grid, 0.0, 1.0)


def save_image(path: str, image) -> None:
    """A [H, W, 1 or 3] image in [0, 1] as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = image[..., 0] if image.shape[-1] == 1 else image
    plt.imsave(path, image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
