"""Multi-layer perceptron: flatten -> [Dense -> (BatchNorm) -> activation -> (Dropout)] x depth
-> linear head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from dlx.layers import activations, initializers
from dlx.layers.linear import batch_norm, dense
from dlx.models import parameter_counts
from dlx.schema import Float, Int, Seq

FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    num_outputs=Int(low=1), hidden=Seq(Int(low=1)), dropout=Float(0, 1, high_open=True)
)


class Model(nn.Module):
    num_outputs: int = 10
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    kernel_init: str = "he_normal"  # "init" would shadow Module.init
    dropout: float = 0.0
    batch_norm: bool = False

    def __post_init__(self):
        activations.get(self.activation)
        initializers.get(self.kernel_init)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            x = dense(width, ("embed", "mlp"), self.kernel_init)(x)
            if self.batch_norm:
                x = batch_norm(train)(x)
            x = nn.with_logical_constraint(act(x), ("batch", "mlp"))
            x = activations.LayerOutput(name=f"hidden_{i}")(x)
            if self.dropout:
                x = activations.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def summarize(model: Model, input_shape: tuple[int, ...]) -> str:
    """A table: per layer its output width and parameters."""
    counts = parameter_counts(model, input_shape)
    rows = [("input (flattened)", math.prod(input_shape[1:]), 0)]
    for i, width in enumerate(model.hidden):
        norm = "bn, " if model.batch_norm else ""
        rows.append(
            (
                f"dense_{i} ({norm}{model.activation})",
                width,
                counts[f"Dense_{i}"] + counts.get(f"BatchNorm_{i}", 0),
            )
        )
    rows.append(("head", model.num_outputs, counts["head"]))
    lines = [f"{'layer':<28}{'output':>10}{'params':>12}"]
    lines += [f"{name:<28}{width:>10}{params:>12,}" for name, width, params in rows]
    lines.append(f"total parameters: {sum(counts.values()):,}")
    return "\n".join(lines)
