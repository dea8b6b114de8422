"""Multi-layer perceptron: flatten -> [Dense -> (BatchNorm | LayerNorm) -> activation (+ skip) ->
(Dropout)] x depth -> linear head.

With `residual`, a hidden layer whose width equals its input's adds that input to its output
(x + act(norm(dense(x)))); the first hidden layer, and any that changes the width, is a plain
projection. Parameter names do not depend on `residual`: Dense_<i> per hidden layer, BatchNorm_<i>
or LayerNorm_<i> for its norm, then `head`. Each hidden layer's output (after its activation and
skip, before dropout) passes through `LayerOutput("hidden_<i>")` for per-layer statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from dlx import schema
from dlx.errors import ConfigError
from dlx.layers import activations, initializers
from dlx.layers.linear import batch_norm, dense
from dlx.layers.norms import LayerNorm
from dlx.models import parameter_counts
from dlx.schema import Float, Int, OneOf, Seq

NORMS = ("none", "batch", "layer")

FIELD_RULES = dict(  # ranges, checked before the model is built (dlx.models.check_config)
    num_outputs=Int(low=1),
    hidden=Seq(Int(low=1)),
    dropout=Float(0, 1, high_open=True),
    norm=OneOf(*NORMS),
)


class Model(nn.Module):
    num_outputs: int = 10
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    kernel_init: str = "he_normal"  # "init" would shadow Module.init
    dropout: float = 0.0
    batch_norm: bool = False  # the same as norm="batch" (kept for existing configs and runs)
    norm: str = "none"  # after each hidden Dense: "none", "batch" or "layer"
    residual: bool = False  # x + layer(x) where a hidden layer keeps the width

    def __post_init__(self):
        activations.get(self.activation)
        initializers.get(self.kernel_init)
        schema.check_fields("mlp", self, FIELD_RULES)
        if self.batch_norm and self.norm not in ("none", "batch"):
            raise ConfigError(
                f"mlp batch_norm=True and norm='{self.norm}' ask for two norms; set one of them"
            )
        super().__post_init__()

    @property
    def norm_kind(self) -> str:
        """The norm after each hidden Dense: "none", "batch" or "layer"."""
        return "batch" if self.batch_norm else self.norm

    def skips(self, i: int) -> bool:
        """Whether hidden layer i adds its input to its output."""
        return self.residual and i > 0 and self.hidden[i] == self.hidden[i - 1]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        norm = self.norm_kind
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden):
            h = dense(width, ("embed", "mlp"), self.kernel_init)(x)
            if norm == "batch":
                h = batch_norm(train)(h)
            elif norm == "layer":
                h = LayerNorm(name=f"LayerNorm_{i}")(h)
            h = act(h)
            x = nn.with_logical_constraint(x + h if self.skips(i) else h, ("batch", "mlp"))
            x = activations.LayerOutput(name=f"hidden_{i}")(x)
            if self.dropout:
                x = activations.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def summarize(model: Model, input_shape: tuple[int, ...]) -> str:
    """A table: per layer its output width and parameters (norm, activation, "+ skip" where the
    layer is residual)."""
    counts = parameter_counts(model, input_shape)
    norm = {"none": "", "batch": "bn, ", "layer": "ln, "}[model.norm_kind]
    rows = [("input (flattened)", math.prod(input_shape[1:]), 0)]
    for i, width in enumerate(model.hidden):
        skip = " + skip" if model.skips(i) else ""
        params = counts[f"Dense_{i}"] + counts.get(f"BatchNorm_{i}", 0)
        params += counts.get(f"LayerNorm_{i}", 0)
        rows.append((f"dense_{i} ({norm}{model.activation}){skip}", width, params))
    rows.append(("head", model.num_outputs, counts["head"]))
    lines = [f"{'layer':<28}{'output':>10}{'params':>12}"]
    lines += [f"{name:<28}{width:>10}{params:>12,}" for name, width, params in rows]
    lines.append(f"total parameters: {sum(counts.values()):,}")
    return "\n".join(lines)
