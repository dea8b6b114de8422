"""The feed-forward blocks of Transformers: GPT-2's GELU MLP (tanh GELU, or BERT's exact erf
GELU as "gelu_exact") and Llama's SwiGLU, by name (`make_mlp`). Projections name their input and output axes ("embed", "mlp")."""

from __future__ import annotations

import flax.linen as nn
import jax

from dlx.errors import ConfigError
from dlx.layers.linear import INIT_STDDEV, Projection


class GeluMLP(nn.Module):
    """fc (embed -> mlp), GELU, proj (mlp -> embed): GPT-2's MLP. `approximate=True` is the tanh
    form GPT-2 calls "gelu_new"."""

    hidden: int
    use_bias: bool = True
    approximate: bool = True
    out_stddev: float = INIT_STDDEV

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="fc")(x)
        h = nn.with_logical_constraint(
            jax.nn.gelu(h, approximate=self.approximate), ("batch", "length", "mlp")
        )
        return Projection(
            x.shape[-1], ("mlp",), ("embed",), self.use_bias, self.out_stddev, name="proj"
        )(h)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): Llama's MLP."""

    hidden: int
    use_bias: bool = False
    out_stddev: float = INIT_STDDEV

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="gate")(x)
        up = Projection(self.hidden, ("embed",), ("mlp",), self.use_bias, name="up")(x)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Projection(
            x.shape[-1], ("mlp",), ("embed",), self.use_bias, self.out_stddev, name="down"
        )(h)


MLPS = ("gelu", "gelu_exact", "swiglu")


def make_mlp(
    kind: str, hidden: int, use_bias: bool, out_stddev: float, name: str | None = None
) -> nn.Module:
    if kind in ("gelu", "gelu_exact"):  # tanh approximation (GPT-2) or erf (BERT, ViT)
        return GeluMLP(hidden, use_bias, kind == "gelu", out_stddev, name=name)
    if kind == "swiglu":
        return SwiGLU(hidden, use_bias, out_stddev, name=name)
    raise ConfigError(f"unknown mlp '{kind}'; choose from {MLPS}")
