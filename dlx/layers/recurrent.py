"""Recurrent layers: simple RNN (tanh), LSTM and GRU cells, one-direction layers over a scan,
and multi-layer, bidirectional stacks with padding masks.

The gate equations are PyTorch's (`torch.nn.RNN/LSTM/GRU`), gate order included, so weights copy
over with `params_from_torch`:
  rnn:  h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
  lstm: i, f, g, o = W_ih x + b_ih + W_hh h + b_hh;  c' = s(f) c + s(i) tanh(g);  h' = s(o) tanh(c')
  gru:  r = s(W_ir x + b_ir + W_hr h + b_hr);  z = s(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) n + z h

Parameters per layer (kernels stored input-major, i.e. torch's weight transposed):
  input_kernel [in, G*H] ("embed", "rnn_gates"), recurrent_kernel [H, G*H] ("rnn_hidden",
  "rnn_gates"), input_bias and recurrent_bias [G*H] ("rnn_gates",), with G = 1, 4, 3 gates.
The gate axis is not named "mlp" on purpose: the default rules would shard it over the `model`
mesh axis, which puts a collective into every time step of the scan.

Masks: a padded step keeps the carry and outputs zeros, so a reverse scan over a right-padded
sequence starts at each sequence's last valid token and padding never reaches a real position.

The input projection is one matmul before the scan; the scan body holds the recurrent matmul
and the gate arithmetic (one tanh over the LSTM's four gates); a custom VJP computes each
kernel gradient as one matmul after the backward scan. Why, with measurements: BENCHMARKS.md,
"Tuning notes".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlx.errors import ConfigError

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
Carry = Any  # h [B, H] for rnn and gru, (h, c) for lstm


def check_cell(cell: str) -> None:
    if cell not in GATES:
        raise ConfigError(f"recurrent cell must be one of {tuple(GATES)}, got '{cell}'")


class CellWeights(NamedTuple):
    input_kernel: jax.Array  # [in, G*H]
    recurrent_kernel: jax.Array  # [H, G*H]
    input_bias: jax.Array  # [G*H]
    recurrent_bias: jax.Array  # [G*H]


def zero_carry(cell: str, batch: int, hidden_dim: int, dtype=jnp.float32) -> Carry:
    h = jnp.zeros((batch, hidden_dim), dtype)
    return (h, h) if cell == "lstm" else h


def carry_hidden(cell: str, carry: Carry) -> jax.Array:
    """The hidden state h of a carry (an LSTM's carry is (h, c))."""
    return carry[0] if cell == "lstm" else carry


def hoisted_bias(cell: str, w: CellWeights) -> jax.Array:
    """Every bias that can be added outside the recurrence: b_ih + b_hh, except GRU's b_hn,
    which the reset gate multiplies."""
    if cell == "gru":
        hidden = w.recurrent_kernel.shape[0]
        return w.input_bias.at[: 2 * hidden].add(w.recurrent_bias[: 2 * hidden])
    return w.input_bias + w.recurrent_bias


def project_inputs(cell: str, w: CellWeights, x: jax.Array) -> jax.Array:
    """W_ih x + the hoisted biases for all steps in one matmul: [..., in] -> [..., G*H]. Give
    it time-major inputs for `run_cell`: transposing the [T, B, in] input first is ~3x faster on
    XLA:CPU than an einsum that writes a transposed [T, B, G*H] output."""
    return project(x, w.input_kernel) + hoisted_bias(cell, w)


def _step(
    cell: str, kernel: jax.Array, b_hn: jax.Array | None, carry: Carry, projected: jax.Array
) -> tuple[Carry, tuple[jax.Array, ...]]:
    """One step: (new carry, the gate activations the backward pass needs); see the module's
    notes on speed for how the gates are activated."""
    hidden = kernel.shape[0]
    h = carry_hidden(cell, carry)
    recurrent = h @ kernel
    gate = lambda x, k: x[:, k * hidden : (k + 1) * hidden]
    if cell == "rnn":
        return jnp.tanh(projected + recurrent), ()
    if cell == "lstm":
        # all four gates in one fused tanh; sigmoid(x) = (1 + tanh(x / 2)) / 2 for i, f and o
        halves = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], np.float32), hidden)
        activated = jnp.tanh((projected + recurrent) * halves.astype(projected.dtype))
        i, f, o = (0.5 * gate(activated, k) + 0.5 for k in (0, 1, 3))
        g = gate(activated, 2)
        c = f * carry[1] + i * g
        return (o * jnp.tanh(c), c), (i, f, g, o)
    r, z = (jax.nn.sigmoid(gate(projected, k) + gate(recurrent, k)) for k in (0, 1))
    hn = gate(recurrent, 2) + b_hn
    n = jnp.tanh(gate(projected, 2) + r * hn)
    return n + z * (h - n), (r, z, n, hn)  # (1 - z) n + z h with one multiply


def cell_step(
    cell: str, w: CellWeights, carry: Carry, projected: jax.Array
) -> tuple[Carry, jax.Array]:
    """One time step given the projected input (`project_inputs`): (new carry, h)."""
    b_hn = w.recurrent_bias[2 * w.recurrent_kernel.shape[0] :] if cell == "gru" else None
    new, _ = _step(cell, w.recurrent_kernel, b_hn, carry, projected)
    return new, carry_hidden(cell, new)


def weight_gradient(inputs: jax.Array, grads: jax.Array) -> jax.Array:
    """sum over rows of inputs[..., K]^T grads[..., N] -> [K, N], as one [K, rows] x [rows, N]
    matmul on a transposed copy of `inputs` (the smaller operand here)."""
    inputs_t = lax.optimization_barrier(inputs.reshape(-1, inputs.shape[-1]).T)
    return inputs_t @ grads.reshape(-1, grads.shape[-1])


@jax.custom_vjp
def project(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., in] @ kernel [in, G*H]. The kernel's gradient transposes x, not the (G*H / in
    times larger) output gradient, which is what XLA:CPU picks for the plain matmul."""
    return x @ kernel


def _project_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _project_bwd(residuals, d_out):
    x, kernel = residuals
    return d_out @ kernel.T, weight_gradient(x, d_out)


project.defvjp(_project_fwd, _project_bwd)


def _where(valid: jax.Array | None, new: Any, old: Any) -> Any:
    if valid is None:
        return new
    return jax.tree.map(lambda n, o: jnp.where(valid[:, None], n, o), new, old)


def _previous(seq: jax.Array, first: jax.Array, reverse: bool) -> jax.Array:
    """The carry before each step of a scan that produced `seq` from `first`."""
    if reverse:
        return jnp.concatenate([seq[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


def _scan_forward(
    cell: str,
    reverse: bool,
    unroll: int,
    kernel: jax.Array,
    b_hn: jax.Array | None,
    bias: jax.Array | None,
    projected: jax.Array,
    carry: Carry,
    mask: jax.Array | None,
    keep_residuals: bool,
):
    """The forward scan. Emits the carried h per step (and, for the backward pass, the carried c
    and the gate activations). `bias` (or None) is added to each step's projected input."""

    def step(carry, inputs):
        xp, valid = inputs if mask is not None else (inputs, None)
        if bias is not None:  # fused into the step's gate arithmetic: no pass over [T, B, G*H]
            xp = xp + bias
        new, residuals = _step(cell, kernel, b_hn, carry, xp)
        new = _where(valid, new, carry)
        if not keep_residuals:
            return new, carry_hidden(cell, new)
        return new, (new if cell == "lstm" else (new,)) + residuals

    inputs = projected if mask is None else (projected, mask)
    return lax.scan(step, carry, inputs, reverse=reverse, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _scan(cell, reverse, unroll, kernel, b_hn, bias, projected, carry, mask):
    return _scan_forward(cell, reverse, unroll, kernel, b_hn, bias, projected, carry, mask, False)


def _scan_fwd(cell, reverse, unroll, kernel, b_hn, bias, projected, carry, mask):
    final, saved = _scan_forward(
        cell, reverse, unroll, kernel, b_hn, bias, projected, carry, mask, True
    )
    return (final, saved[0]), (kernel, b_hn, bias is not None, carry, mask, saved)


def _scan_bwd(cell, reverse, unroll, residuals, cotangents):
    """Backward scan for the input and carry gradients only; the recurrent kernel's gradient is
    one [H, T*B] x [T*B, G*H] matmul afterwards instead of T small ones inside the loop."""
    kernel, b_hn, has_bias, carry, mask, saved = residuals
    d_final, d_hseq = cotangents
    hidden = kernel.shape[0]
    h_prev = _previous(saved[0], carry_hidden(cell, carry), reverse)
    kernel_t = kernel.T

    def step(d_carry, inputs):
        if cell == "lstm":
            (dh_out, h, c, i, f, g, o, c_prev), valid = inputs
            dh, dc = d_carry
            dh = dh + dh_out
            tanh_c = jnp.tanh(c)
            dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
            d_gates = jnp.concatenate(
                [
                    dc_total * g * i * (1 - i),
                    dc_total * c_prev * f * (1 - f),
                    dc_total * i * (1 - g * g),
                    dh * tanh_c * o * (1 - o),
                ],
                axis=-1,
            )
            d_gates = _where(valid, d_gates, jnp.zeros_like(d_gates))
            new = (d_gates @ kernel_t, dc_total * f)
            return _where(valid, new, (dh, dc)), d_gates
        if cell == "rnn":
            (dh_out, h), valid = inputs
            dh = d_carry + dh_out
            d_pre = _where(valid, dh * (1 - h * h), jnp.zeros_like(dh))
            return _where(valid, d_pre @ kernel_t, dh), d_pre
        (dh_out, h, r, z, n, hn, h_before), valid = inputs
        dh = d_carry + dh_out
        dn_pre = dh * (1 - z) * (1 - n * n)
        d_rz = jnp.concatenate(
            [dn_pre * hn * r * (1 - r), dh * (h_before - n) * z * (1 - z)], axis=-1
        )
        d_recurrent = jnp.concatenate([d_rz, dn_pre * r], axis=-1)
        d_recurrent = _where(valid, d_recurrent, jnp.zeros_like(d_recurrent))
        d_projected = jnp.concatenate([d_recurrent[:, : 2 * hidden], dn_pre], axis=-1)
        d_projected = _where(valid, d_projected, jnp.zeros_like(d_projected))
        d_h = dh * z + d_recurrent @ kernel_t
        return _where(valid, d_h, dh), (d_projected, d_recurrent)

    if cell == "lstm":
        c_prev = _previous(saved[1], carry[1], reverse)
        per_step = (d_hseq, *saved, c_prev)
    elif cell == "rnn":
        per_step = (d_hseq, *saved)
    else:
        per_step = (d_hseq, *saved, h_prev)
    d_carry, d_steps = lax.scan(step, d_final, (per_step, mask), reverse=not reverse, unroll=unroll)
    d_projected, d_recurrent = d_steps if cell == "gru" else (d_steps, d_steps)
    d_kernel = weight_gradient(h_prev, d_recurrent)
    d_b_hn = None if b_hn is None else d_recurrent[..., 2 * hidden :].sum(axis=(0, 1))
    d_bias = d_projected.sum(axis=(0, 1)) if has_bias else None
    return d_kernel, d_b_hn, d_bias, d_projected, d_carry, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def run_cell(
    cell: str,
    w: CellWeights,
    projected: jax.Array,
    carry: Carry,
    mask: jax.Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
    bias: jax.Array | None = None,
) -> tuple[Carry, jax.Array]:
    """Scans the cell over time-major projected inputs [T, B, G*H] (`project_inputs`): (final
    carry, h [T, B, H]). With `mask` [T, B], a masked step keeps the carry and outputs zeros.
    `bias` [G*H], if given, is added to every step's projected input inside the scan (cheaper
    than `project_inputs` adding it to the whole [T, B, G*H] array first).
    Same values as scanning `cell_step`; the gradient has its own, faster backward scan."""
    hidden = w.recurrent_kernel.shape[0]
    b_hn = w.recurrent_bias[2 * hidden :] if cell == "gru" else None
    final, h = _scan(cell, reverse, unroll, w.recurrent_kernel, b_hn, bias, projected, carry, mask)
    if mask is not None:
        h = jnp.where(mask[..., None], h, 0.0)
    return final, h


def _forget_bias_one(hidden_dim: int):
    """LSTM input bias: 1 on the forget gate (Jozefowicz et al. 2015), 0 elsewhere."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.zeros(shape, dtype).at[hidden_dim : 2 * hidden_dim].set(1.0)

    return init


class Recurrent(nn.Module):
    """One direction of one recurrent layer: x [B, T, in] -> (h [B, T, H], final carry)."""

    cell: str
    hidden_dim: int
    reverse: bool = False
    unroll: int = 1

    def __post_init__(self):
        check_cell(self.cell)
        super().__post_init__()

    @nn.compact
    def weights(self, input_dim: int) -> CellWeights:
        """The layer's parameters (created on first use), for callers that run their own scan."""
        gates = GATES[self.cell] * self.hidden_dim
        bias_init = (
            _forget_bias_one(self.hidden_dim) if self.cell == "lstm" else nn.initializers.zeros
        )
        gate_axes = ("rnn_gates",)
        return CellWeights(
            self.param(
                "input_kernel",
                nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("embed", "rnn_gates")
                ),
                (input_dim, gates),
            ),
            self.param(
                "recurrent_kernel",
                nn.with_logical_partitioning(
                    nn.initializers.orthogonal(), ("rnn_hidden", "rnn_gates")
                ),
                (self.hidden_dim, gates),
            ),
            self.param("input_bias", nn.with_logical_partitioning(bias_init, gate_axes), (gates,)),
            self.param(
                "recurrent_bias",
                nn.with_logical_partitioning(nn.initializers.zeros, gate_axes),
                (gates,),
            ),
        )

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        carry: Carry | None = None,
        *,
        time_major: bool = False,
    ) -> tuple[jax.Array, Carry]:
        """x [B, T, in] and `mask` [B, T] (True at real tokens), or [T, ...] for both with
        `time_major`; `carry` defaults to zeros. Returns h in the layout of x."""
        if not time_major:
            x, mask = jnp.swapaxes(x, 0, 1), None if mask is None else mask.T
        w = self.weights(x.shape[-1])
        if carry is None:
            carry = zero_carry(self.cell, x.shape[1], self.hidden_dim, x.dtype)
        carry, h = run_cell(
            self.cell,
            w,
            project(x, w.input_kernel),
            carry,
            mask,
            reverse=self.reverse,
            unroll=self.unroll,
            bias=hoisted_bias(self.cell, w),
        )
        return (h if time_major else jnp.swapaxes(h, 0, 1)), carry


class RecurrentStack(nn.Module):
    """`num_layers` recurrent layers, optionally bidirectional (the two directions' outputs are
    concatenated, forward first), with dropout between layers (rng "dropout").

    Returns (outputs [B, T, H or 2H], finals): finals[i] is layer i's final carry, a
    (forward, backward) pair when bidirectional, in the same structure as `carries` takes.
    """

    cell: str
    hidden_dim: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    unroll: int = 1

    def __post_init__(self):
        check_cell(self.cell)
        if self.num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1, got {self.num_layers}")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        carries: Sequence[Any] | None = None,
        *,
        train: bool = False,
    ) -> tuple[jax.Array, list[Any]]:
        # time-major inside: one transpose in and one out, none per layer
        x, mask = jnp.swapaxes(x, 0, 1), None if mask is None else mask.T
        finals = []
        for i in range(self.num_layers):
            if i > 0 and self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            initial = None if carries is None else carries[i]
            forward = Recurrent(self.cell, self.hidden_dim, unroll=self.unroll, name=f"layer_{i}")
            if not self.bidirectional:
                x, final = forward(x, mask, initial, time_major=True)
            else:
                backward = Recurrent(
                    self.cell,
                    self.hidden_dim,
                    reverse=True,
                    unroll=self.unroll,
                    name=f"layer_{i}_reverse",
                )
                fwd_initial, bwd_initial = (None, None) if initial is None else initial
                out_f, final_f = forward(x, mask, fwd_initial, time_major=True)
                out_b, final_b = backward(x, mask, bwd_initial, time_major=True)
                x, final = jnp.concatenate([out_f, out_b], axis=-1), (final_f, final_b)
            finals.append(final)
        return jnp.swapaxes(x, 0, 1), finals


def params_from_torch(
    state_dict: Mapping[str, Any], cell: str, num_layers: int, bidirectional: bool = False
) -> dict:
    """A `RecurrentStack`'s params from a `torch.nn.RNN/LSTM/GRU` state dict (values as numpy
    arrays, e.g. `{k: v.detach().numpy() for k, v in m.state_dict().items()}`); the torch module
    must have bias=True, proj_size=0 and the same cell."""
    check_cell(cell)
    params = {}
    for i in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            get = lambda name: jnp.asarray(np.asarray(state_dict[f"{name}_l{i}{suffix}"]))  # noqa: B023
            params[f"layer_{i}{suffix}"] = {
                "input_kernel": get("weight_ih").T,
                "recurrent_kernel": get("weight_hh").T,
                "input_bias": get("bias_ih"),
                "recurrent_bias": get("bias_hh"),
            }
    return params
