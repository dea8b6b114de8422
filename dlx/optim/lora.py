r"""LoRA (Hu et al. 2021): low-rank adapters on a model's dense layers, kept as their own pytree
next to the frozen base parameters.

A targeted layer computes y = x W + b + scale * dropout(x) A B, with A [in, rank], B [rank, out],
scale = alpha / rank: the formulation of Hugging Face peft's `LoraLayer` (A drawn uniform in
+-1/sqrt(in) as its kaiming-uniform(a=sqrt(5)) gives, B zero, so training starts at the base
model). The adapters are added by intercepting the `__call__` of dlx's `Projection` and Flax's
`nn.Dense` (whatever model holds them), so no model is edited to carry them; `merge` folds them
into the kernels for export or fast inference (W + scale * A B, the same function).

    lora = LoRA(rank=8, alpha=16, dropout=0.05, targets=r"h_\d+/attn/(query|proj)")
    shapes = lora.shapes(model, variables, tokens)          # {layer path: (in, out shape)}
    adapters = lora.init(shapes, jax.random.key(0))         # {"h_0/attn/query": {"a", "b"}}
    with lora.applied(adapters, rng=key, train=True):
        logits = model.apply(variables, tokens)
    merged = lora.merge(params, adapters)                   # plain params, same outputs

Layer paths are the module paths joined by "/" ("h_3/attn/query", "encoder/h_0/mlp/fc"), and
`targets` is a regex that must `fullmatch` them; `shapes` raises ConfigError when it matches no
layer, so a typo cannot silently train nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.errors import ConfigError
from dlx.layers.activations import random_bits
from dlx.layers.linear import Projection

Adapters = dict[str, dict[str, jax.Array]]


def _inputs_contracted(module: nn.Module) -> int:
    """How many trailing axes of x the layer contracts."""
    return len(module.in_names) if isinstance(module, Projection) else 1


def _is_dense(module: nn.Module) -> bool:
    return isinstance(module, (Projection, nn.Dense))


@dataclasses.dataclass(frozen=True)
class LoRA:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = r".*"

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        try:
            re.compile(self.targets)
        except re.error as error:
            raise ConfigError(f"lora.targets {self.targets!r} is not a regex: {error}") from error

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.targets, path) is not None

    def shapes(self, model: nn.Module, variables: Any, *args, **kwargs) -> dict[str, tuple]:
        """{layer path: (in features, out shape)} of every dense layer `targets` matches, found
        by tracing `model.apply(variables, *args, **kwargs)` abstractly (nothing computed)."""
        found: dict[str, tuple] = {}
        seen: list[str] = []

        def record(next_fun, call_args, call_kwargs, context):
            module = context.module
            if context.method_name == "__call__" and _is_dense(module):
                path = "/".join(module.path)
                seen.append(path)
                if self.matches(path):
                    x = call_args[0]
                    y = next_fun(*call_args, **call_kwargs)
                    contracted = _inputs_contracted(module)
                    features = math.prod(x.shape[x.ndim - contracted :])
                    found[path] = (features, tuple(y.shape[x.ndim - contracted :]))
                    return y
            return next_fun(*call_args, **call_kwargs)

        def trace(variables):
            with nn.intercept_methods(record):
                return model.apply(variables, *args, **kwargs)

        jax.eval_shape(trace, variables)
        if not found:
            raise ConfigError(
                f"lora.targets {self.targets!r} matches none of the model's dense layers "
                f"{sorted(set(seen))[:8]}{' ...' if len(set(seen)) > 8 else ''}"
            )
        return found

    def init(self, shapes: Mapping[str, tuple], rng: jax.Array) -> Adapters:
        """A uniform in +-1/sqrt(in), B zero: the adapted model starts as the base model."""
        adapters = {}
        for i, (path, (features, out_shape)) in enumerate(sorted(shapes.items())):
            bound = 1.0 / math.sqrt(features)
            adapters[path] = {
                "a": jax.random.uniform(
                    jax.random.fold_in(rng, i), (features, self.rank), jnp.float32, -bound, bound
                ),
                "b": jnp.zeros((self.rank, math.prod(out_shape)), jnp.float32),
            }
        return adapters

    @contextlib.contextmanager
    def applied(
        self, adapters: Adapters, *, rng: jax.Array | None = None, train: bool = False
    ) -> Iterator[None]:
        """Inside this context every `model.apply` adds the adapters to their layers (dropout on
        the adapter's input when `train` and a dropout rate, from `rng`, per layer)."""
        use_dropout = train and self.dropout > 0
        # The base model's dropout mask (dlx.layers.activations.Dropout): a fused Threefry;
        # jax.random.bernoulli's rolled loop cost a MiniLM LoRA step a quarter of its time.
        keep_threshold = jnp.uint32(min(round((1.0 - self.dropout) * 2**32), 2**32 - 1))
        if use_dropout and rng is None:
            raise ValueError("LoRA dropout in training needs an rng")

        def adapt(next_fun, call_args, call_kwargs, context):
            module = context.module
            if context.method_name != "__call__" or not _is_dense(module):
                return next_fun(*call_args, **call_kwargs)
            path = "/".join(module.path)
            adapter = adapters.get(path)
            y = next_fun(*call_args, **call_kwargs)
            if adapter is None:
                return y
            x = call_args[0]
            contracted = _inputs_contracted(module)
            flat = x.reshape(*x.shape[: x.ndim - contracted], -1).astype(jnp.float32)
            if use_dropout:
                key = jax.random.fold_in(rng, zlib.crc32(path.encode()))
                keep = random_bits(key, flat.shape) < keep_threshold
                flat = jnp.where(keep, flat / (1.0 - self.dropout), 0.0)
            delta = (flat @ adapter["a"]) @ adapter["b"] * self.scale
            return y + delta.reshape(y.shape).astype(y.dtype)

        with nn.intercept_methods(adapt):
            yield

    def merge(self, params: Mapping[str, Any], adapters: Adapters) -> dict[str, Any]:
        """params (unboxed) with each adapted kernel replaced by kernel + scale * A B,
        reshaped to the kernel's shape; the input tree is not modified."""
        merged = dict(nn.meta.unbox(params))
        for path, adapter in adapters.items():
            node = merged
            for key in path.split("/"):
                if key not in node:
                    raise ConfigError(f"LoRA adapter {path} has no layer in these params")
                node[key] = dict(node[key])
                node = node[key]
            kernel = node["kernel"]
            delta = (adapter["a"] @ adapter["b"]) * self.scale
            node["kernel"] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
        return merged

    def trainable_parameters(self, adapters: Adapters) -> int:
        return sum(x.size for x in jax.tree.leaves(adapters))
