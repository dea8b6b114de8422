"""The optimizer: an Optax chain and a learning-rate schedule built from ``config.optimizer``.

Chain order (each piece only when switched on):

    clip(value) -> clip_by_global_norm -> scale_by_<optimizer> -> add_decayed_weights (decoupled)
    -> scale_by_learning_rate(schedule) -> lr multipliers          [all inside the "frozen" split]

With every extra off, the chain is the same transformation ``optax.<name>`` builds. Masks and
multipliers are regex rules (``dlx.optim.rules``) evaluated on the params structure when the
optimizer is initialised, so one optimizer config works for any model.

Weight decay here is always DECOUPLED (AdamW-style, scaled by the learning rate, never part of the
loss). Coupled L1/L2 penalties are loss terms: ``regularization_penalty`` gives them to a task.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.core import meta

from dlx import schema
from dlx.errors import ConfigError
from dlx.optim import rules
from dlx.schema import Bool, Fixed, Float, Int, Named, OneOf, Seq, Str

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adagrad", "adadelta", "adam", "adamw", "nadam")
SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "linear")
NO_DECAY = r".*(bias|scale)"

_TRAINABLE, _FROZEN = "trainable", "frozen"


def default_config() -> ml_collections.ConfigDict:
    """Every field the optimizer and schedule read, with defaults.

    Optimizer (``name``): sgd | momentum | rmsprop | adagrad | adadelta | adam | adamw | nadam.
      momentum, nesterov          momentum (SGD with momentum; nesterov=True for Nesterov).
      b1, b2, eps                 adam, adamw, nadam; eps is also the epsilon of rmsprop,
                                  adagrad and adadelta.
      rho                         decay of the squared-gradient average: rmsprop's ``decay``,
                                  adadelta's ``rho``.
      initial_accumulator_value   adagrad.
      Advice: adamw means adam + decoupled weight decay, so set ``weight_decay`` with it
      (0.01-0.1 is typical for transformers; with 0.0 adamw is exactly adam). Since weight decay
      is decoupled for every optimizer, adam with weight_decay > 0 is adamw too.
      adadelta is meant for learning_rate=1.0 (and Zeiler's eps=1e-6).

    Schedule (``schedule``), base value ``learning_rate``, over the run's total steps:
      constant                    learning_rate throughout.
      step                        times ``decay_rate`` at each of ``boundaries`` (fractions of the
                                  total steps, increasing, in (0, 1)).
      cosine                      cosine decay to ``end_lr_factor * learning_rate``.
      warmup_cosine               the same, after ``warmup_steps`` (> 0) of warmup.
      linear                      linear decay to ``end_lr_factor * learning_rate``.
      Every schedule first ramps linearly from 0 over ``warmup_steps`` (0 = no warmup); the
      decay then runs over the remaining steps.

    Extras:
      weight_decay                decoupled weight decay (0 = off), scaled by the learning rate.
      weight_decay_exclude        regex of parameter paths not decayed ("" = decay all).
      clip_value                  clip each gradient element to [-v, v] (0 = off).
      clip_global_norm            rescale gradients to this global norm at most (0 = off).
      lr_multipliers              ((regex, factor), ...): the first match scales that parameter's
                                  update; unmatched parameters keep factor 1.
      frozen                      regex of parameter paths that never change ("" = none); they
                                  carry no optimizer state and do not count in the global norm.
    Parameter paths are '/'-joined, e.g. "Encoder/Dense_0/kernel"; regexes must fullmatch them.
    """
    return ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=1e-3,
            schedule="constant",
            warmup_steps=0,
            end_lr_factor=0.0,
            boundaries=(0.5, 0.75),
            decay_rate=0.1,
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            rho=0.9,
            initial_accumulator_value=0.1,
            weight_decay=0.0,
            weight_decay_exclude=NO_DECAY,
            clip_value=0.0,
            clip_global_norm=0.0,
            lr_multipliers=(),
            frozen="",
        )
    )


_DECAY = Float(0, 1, high_open=True)  # a decay of 1 never forgets (b1 = 1 divides by zero)
# The type and range of every field of `default_config()`.
RULES: dict[str, schema.Rule] = dict(
    # learning_rate 0 is allowed: a run that must not move its weights (checking a warm start)
    name=OneOf(*OPTIMIZERS),
    learning_rate=Float(low=0),
    schedule=OneOf(*SCHEDULES),
    warmup_steps=Int(low=0),
    end_lr_factor=Float(low=0),
    boundaries=Named(
        Seq(Float(0, 1, low_open=True, high_open=True)),
        "increasing fractions of the total steps, each in (0, 1), e.g. (0.5, 0.75)",
    ),
    decay_rate=Float(low=0),
    momentum=_DECAY,
    nesterov=Bool(),
    b1=_DECAY,
    b2=_DECAY,
    eps=Float(low=0),
    rho=_DECAY,
    initial_accumulator_value=Float(low=0),
    weight_decay=Float(low=0),
    weight_decay_exclude=Str(),
    clip_value=Float(low=0),
    clip_global_norm=Float(low=0),
    lr_multipliers=Named(
        Seq(Fixed(Str(), Float(low=0))), "a sequence of (regex, factor >= 0) pairs"
    ),
    frozen=Str(),
)


def check_config(cfg: Any, where: str = "optimizer") -> None:
    """Raises ConfigError for anything wrong that does not depend on the run's length or params:
    each field by type and range (`RULES`), boundaries, regexes; `where` is the config group
    the messages name. ``build_optimizer`` also checks the rest."""
    schema.check_values(cfg, RULES, f"{where}.")
    if cfg.schedule == "warmup_cosine" and cfg.warmup_steps == 0:
        raise ConfigError("schedule 'warmup_cosine' needs optimizer.warmup_steps > 0")
    if cfg.schedule == "step":
        _boundary_fractions(cfg)
    masks = [(pattern, None) for pattern in (cfg.weight_decay_exclude, cfg.frozen) if pattern]
    rules.compile_rules([*masks, *cfg.lr_multipliers])


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------------


def _boundary_fractions(cfg: Any) -> list[float]:
    fractions = [float(f) for f in cfg.boundaries]
    if any(not 0.0 < f < 1.0 for f in fractions) or fractions != sorted(set(fractions)):
        raise ConfigError(
            f"optimizer.boundaries={tuple(cfg.boundaries)} must be increasing fractions of the "
            "total steps, each in (0, 1), e.g. (0.5, 0.75)"
        )
    return fractions


def _step_boundaries(cfg: Any, total_steps: int, warmup_steps: int) -> list[int]:
    steps = [round(f * total_steps) for f in _boundary_fractions(cfg)]
    if any(step <= warmup_steps for step in steps) or len(set(steps)) != len(steps):
        raise ConfigError(
            f"optimizer.boundaries={tuple(cfg.boundaries)} give steps {steps} for {total_steps} "
            f"total steps: they must be distinct and after the {warmup_steps} warmup steps"
        )
    return steps


def build_schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step, for a run of ``total_steps`` steps."""
    check_config(cfg)
    name, warmup = cfg.schedule, int(cfg.warmup_steps)
    if total_steps < 1:
        raise ConfigError(f"the run must have at least one step, got total_steps={total_steps}")
    if warmup >= total_steps:
        raise ConfigError(
            f"optimizer.warmup_steps={warmup} must be fewer than the run's {total_steps} steps"
        )

    peak = float(cfg.learning_rate)
    end = float(cfg.end_lr_factor) * peak
    decay_steps = total_steps - warmup  # the decay is joined after the warmup, so it restarts at 0
    if name == "constant":
        after_warmup = optax.constant_schedule(peak)
    elif name == "step":
        boundaries = _step_boundaries(cfg, total_steps, warmup)
        scales = {step - warmup: float(cfg.decay_rate) for step in boundaries}
        after_warmup = optax.piecewise_constant_schedule(peak, scales)
    elif name in ("cosine", "warmup_cosine"):
        after_warmup = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_factor)
    else:  # linear
        after_warmup = optax.linear_schedule(peak, end, decay_steps)

    if warmup == 0:
        return after_warmup
    warmup_schedule = optax.linear_schedule(0.0, peak, warmup)
    return optax.join_schedules([warmup_schedule, after_warmup], [warmup])


def learning_rate_at(cfg: Any, total_steps: int, step: int) -> float:
    """The learning rate the optimizer uses at ``step`` (for logging)."""
    return float(build_schedule(cfg, total_steps)(step))


# ---------------------------------------------------------------------------------------------
# Optimizer chain
# ---------------------------------------------------------------------------------------------


def _scale_by_optimizer(cfg: Any, name: str) -> optax.GradientTransformation:
    """The optimizer's own statistics, before weight decay and the learning rate."""
    if name == "sgd":
        return optax.identity()
    if name == "momentum":
        return optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov)
    if name == "rmsprop":
        return optax.scale_by_rms(decay=cfg.rho, eps=cfg.eps)
    if name == "adagrad":
        return optax.scale_by_rss(
            initial_accumulator_value=cfg.initial_accumulator_value, eps=cfg.eps
        )
    if name == "adadelta":
        return optax.scale_by_adadelta(rho=cfg.rho, eps=cfg.eps)
    return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, nesterov=name == "nadam")


def scale_by_rules(multipliers: rules.Rules) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first rule matching its path (else 1).

    A rule that matches no parameter is a ConfigError at ``init`` (it is most likely a typo).
    """
    multipliers = [(pattern, float(factor)) for pattern, factor in multipliers]

    def init(params):
        rules.match(params, multipliers, default=1.0, strict_unused=True)
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        factors = rules.match(updates, multipliers, default=1.0)
        scaled = jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors)
        return scaled, state

    return optax.GradientTransformation(init, update)


def _decay_mask(exclude: str):
    def mask(params):
        return jax.tree.map(lambda excluded: not excluded, rules.regex_mask(params, exclude))

    return mask


def _frozen_labels(frozen: str):
    def labels(params):
        return rules.match(params, [(frozen, _FROZEN)], default=_TRAINABLE, strict_unused=True)

    return labels


def build_optimizer(
    cfg: Any, total_steps: int, params_for_mask: Any = None
) -> optax.GradientTransformation:
    """The Optax chain ``cfg`` describes (see ``default_config``) for a run of ``total_steps``.

    Masks are computed from the params when the optimizer is initialised. Pass any params-like
    tree (real, abstract from ``jax.eval_shape``, or boxed) as ``params_for_mask`` to check the
    regex rules against it now, so a bad rule fails at build time rather than at ``init``.
    """
    check_config(cfg)
    chain = []
    if cfg.clip_value > 0:
        chain.append(optax.clip(cfg.clip_value))
    if cfg.clip_global_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.clip_global_norm))
    chain.append(_scale_by_optimizer(cfg, cfg.name))
    if cfg.weight_decay > 0:
        decay_mask = _decay_mask(cfg.weight_decay_exclude) if cfg.weight_decay_exclude else None
        chain.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    chain.append(optax.scale_by_learning_rate(build_schedule(cfg, total_steps)))
    if cfg.lr_multipliers:
        chain.append(scale_by_rules(cfg.lr_multipliers))
    tx = optax.chain(*chain)

    if cfg.frozen:
        # Partitioning (rather than zeroing updates at the end) keeps frozen parameters out of
        # the optimizer state and out of the global gradient norm.
        tx = optax.multi_transform(
            {_TRAINABLE: tx, _FROZEN: optax.set_to_zero()}, _frozen_labels(cfg.frozen)
        )

    if params_for_mask is not None:
        jax.eval_shape(tx.init, meta.unbox(params_for_mask))  # evaluates every mask and rule
    return tx


# ---------------------------------------------------------------------------------------------
# Coupled penalties (loss terms)
# ---------------------------------------------------------------------------------------------


def regularization_penalty(params: Any, l1: float, l2: float, exclude: str = NO_DECAY) -> jax.Array:
    """``l1 * sum|w| + l2 / 2 * sum w^2`` over parameters whose path does not match ``exclude``.

    This is a coupled penalty the task adds to its loss (its gradient passes through the
    optimizer's statistics), unlike the optimizer's decoupled ``weight_decay``. Use one or the
    other. Computed in float32 whatever the parameter dtype.
    """
    total = jnp.zeros((), jnp.float32)
    if not l1 and not l2:
        return total
    params = meta.unbox(params)
    excluded = rules.regex_mask(params, exclude)
    for w, skip in zip(jax.tree.leaves(params), jax.tree.leaves(excluded)):
        if skip:
            continue
        if l1:
            total += l1 * jnp.sum(jnp.abs(w), dtype=jnp.float32)
        if l2:
            total += 0.5 * l2 * jnp.sum(jnp.square(w.astype(jnp.float32)))
    return total
