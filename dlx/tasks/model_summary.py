"""`model_summary.txt`: Flax's own table of a task's model (`nn.Module.tabulate`), for any
model and any task, with nothing allocated.

The task's `init_state` is traced once (`jax.eval_shape`) with an interceptor that records how
it calls the model (method, argument shapes, keyword arguments, random streams); the model is
then tabulated with the same call, so a GAN's (noise, images), a diffusion U-Net's (x, t) or a
seq2seq model's (inputs, targets) need no code of their own.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dlx.models.receptive_field import receptive_fields

TABLE_WIDTH = 160


@dataclasses.dataclass
class ModelCall:
    method: str
    args: tuple
    kwargs: dict
    rng_streams: list[str]


def _abstract(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype)
            if hasattr(x, "shape") and hasattr(x, "dtype")
            else x
        ),
        tree,
    )


def first_model_call(task, model: nn.Module, example: dict) -> ModelCall | None:
    """How `task.init_state` calls `model` at its top level (the first such call)."""
    calls: list[ModelCall] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if (
            not calls
            and type(module) is type(model)
            and module.scope is not None
            and not module.scope.path
            and context.method_name != "setup"
        ):
            calls.append(
                ModelCall(
                    context.method_name,
                    _abstract(args),
                    _abstract(kwargs),
                    sorted(module.scope.rngs),
                )
            )
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(task.init_state, jax.random.PRNGKey(0), example)
    return calls[0] if calls else None


def _receptive_field_lines(module, model: nn.Module, call: ModelCall) -> list[str]:
    """Per convolution and pool: output size and receptive field in input pixels, for model
    families that list their layers (`layer_stack`); tabulate knows no receptive fields."""
    images = [a for a in call.args if len(getattr(a, "shape", ())) == 4]  # a GAN's (z, x)
    if not hasattr(module, "layer_stack") or not images:
        return []
    _, height, width, _ = images[0].shape
    stack = module.layer_stack(model)
    if not stack:
        return []
    lines = ["", f"{'layer':<20}{'output':>12}{'receptive field':>18}  (input pixels)"]
    for along_h, along_w in zip(receptive_fields(stack, height), receptive_fields(stack, width)):
        lines.append(
            f"{along_h.name:<20}{f'{along_h.size}x{along_w.size}':>12}"
            f"{f'{along_h.receptive_field}x{along_w.receptive_field}':>18}"
        )
    return lines


def model_summary(task, model: nn.Module, example: dict) -> str | None:
    """The table of `model` as `task` calls it on `example` (one example with a batch axis of
    1), or None when the task's state never calls the model."""
    call = first_model_call(task, model, example)
    if call is None:
        return None
    rngs = {name: jax.random.PRNGKey(i) for i, name in enumerate(call.rng_streams or ["params"])}
    kwargs = dict(call.kwargs)
    if call.method != "__call__":
        kwargs["method"] = call.method
    args = jax.tree.map(
        lambda x: (
            np.zeros(x.shape, x.dtype)  # tabulate needs concrete inputs
            if isinstance(x, jax.ShapeDtypeStruct)
            else x
        ),
        call.args,
    )
    table = model.tabulate(
        rngs, *args, console_kwargs={"width": TABLE_WIDTH, "force_terminal": False}, **kwargs
    )
    module = importlib.import_module(type(model).__module__)
    return "\n".join([table.rstrip(), *_receptive_field_lines(module, model, call)]) + "\n"


def example_batch(task) -> dict:
    """The first training example of the task's source, with a batch axis of 1."""
    example = task.source(task.config.data.train_split, train=True)[0]
    return {k: np.asarray(v)[None] for k, v in example.items()}
