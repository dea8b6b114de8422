"""Multi-layer perceptron: flatten -> [Dense -> (BatchNorm) -> activation -> (Dropout)] x depth
-> linear head."""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx.layers import activations
from dlx.layers.linear import batch_norm, dense, param_count


class Model(nn.Module):
    num_outputs: int = 10
    hidden: Sequence[int] = (256, 256)
    activation: str = "relu"
    kernel_init: str = "he_normal"  # "init" would shadow Module.init
    dropout: float = 0.0
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        act = activations.get(self.activation)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = dense(width, ("embed", "mlp"), self.kernel_init)(x)
            if self.batch_norm:
                x = batch_norm(train)(x)
            x = nn.with_logical_constraint(act(x), ("batch", "mlp"))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_outputs, ("mlp", "classes"), "lecun_normal", name="head")(x)


def summarize(model: Model, input_shape: tuple[int, ...]) -> str:
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
    width = 1
    for d in input_shape[1:]:
        width *= d
    rows = [("input (flattened)", f"{width}", 0)]
    for i, out in enumerate(model.hidden):
        params = (width + 1) * out + (2 * out if model.batch_norm else 0)
        rows.append((f"dense_{i} + {model.activation}", f"{out}", params))
        width = out
    rows.append(("head", f"{model.num_outputs}", (width + 1) * model.num_outputs))
    lines = [f"{'layer':<28}{'output':>10}{'params':>12}"]
    lines += [f"{name:<28}{shape:>10}{params:>12,}" for name, shape, params in rows]
    lines.append(f"total parameters: {param_count(variables['params']):,}")
    return "\n".join(lines)
