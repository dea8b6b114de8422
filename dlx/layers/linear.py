"""Dense, conv and batch-norm layers whose parameters carry logical axis names."""
from __future__ import annotations

import math

import flax.linen as nn
import jax

from dlx.layers import initializers


def dense(features: int, names: tuple[str, str], init: str = "lecun_normal",
          name: str | None = None) -> nn.Dense:
    return nn.Dense(features, name=name,
                    kernel_init=nn.with_logical_partitioning(initializers.get(init), names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]))


def conv(features: int, kernel_size: int, strides: int, padding: str, init: str) -> nn.Conv:
    names = ("conv_height", "conv_width", "conv_in", "conv_out")
    return nn.Conv(features, (kernel_size, kernel_size), strides=strides, padding=padding,
                   kernel_init=nn.with_logical_partitioning(initializers.get(init), names),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))


def batch_norm(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def param_count(tree) -> int:
    """Parameters in a (possibly abstract, possibly boxed) tree."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(tree)))
