"""The task contract (what the runner asks of every task) and `SupervisedTask`, the one-model,
one-optimizer task that classification, regression, language modelling and seq2seq build on.

A task is one module `dlx/tasks/<name>.py` with a class `Task`; `config.task = "<name>"` picks
it. The runner never learns what a task trains. It calls, in this order:

    Task.config_defaults()                    the task's own config keys, merged into the
                                              runner's (`dlx.train.config.base_config(task)`)
    Task.config_rules                         the type and range of each of those keys by
                                              full key (`dlx.schema`), checked by the runner; a
                                              key without one is checked against its default's
                                              type
    Task.check_config(config)                 ConfigError for relations between values (and
                                              the model's fields), before anything runs
    task = Task(config, data_info, data_dir, workdir)   may read the workdir, never writes
    task.check_for_mesh(data_parallel_size)   what depends on the device layout
    task.source(split, train=...)             the examples (see "Sources" below);
                                              examples_per_epoch()
    task.init_state(rng, batch)               the whole train state, any pytree, parameters
                                              boxed with logical axis names (the runner shards
                                              by them and jits this with out_shardings)
    task.train_step(state, batch, rng, step)  -> (state, metrics); jitted, state donated
    task.evaluator()                          an Evaluator (dlx.metrics.evaluators)
    task.write_run_files(workdir)             tokenizers, model summaries ...
    task.warm_start(state, restored)          config.init_from: the items `warm_start_items`
                                              of another run's state, into a fresh state
    task.pretrained_items(source)             config.init_from naming a pretrained checkpoint
                                              (not a dlx workdir): {item: partial tree} of
                                              its weights, which `warm_start` puts in; leaves
                                              it lacks (a new head) stay as initialised
    task.checkpointed(state)                  what a checkpoint holds of the state (default:
                                              all of it); with `checkpoints_whole_state()`
                                              False, a resume rebuilds the rest as a fresh run
                                              starts, `restore_checkpointed(fresh, saved)`
    task.sample(state, options, out)          `launch.py sample` (optional)
    task.layer_stats(state, batch, rng, step)  `config.layer_stats_every_steps` (optional):
                                              {"activation", "param", "grad", "update"}
                                              trees of that step (SupervisedTask has it)
    task.predict_images(predict, images, names, notes, workdir, out)
                                              `launch.py predict` on image files (optional;
                                              `predict(batch)` runs the jitted `predict` on
                                              host arrays of any length, in fixed-size
                                              chunks, and returns host arrays)

`nonfinite_metrics` are the train metrics the runner's NaN guard watches; `best_metric_default`
is the eval metric whose best checkpoint is kept; `resumable_keys` are the task's config keys a
resumed run may change.

Sources: `source(split, train=...)` returns one of
- random-access examples (the default: the TFDS split `config.data.name`; any `len` +
  `__getitem__`): the runner shuffles them into global batches of `config.data.batch_size`;
- `dlx.data.WholeBatchSource(columns, mask=...)`: the whole data set is every step's batch (a
  graph: node features, adjacency rows, labels, one row per node) and eval's one batch; `mask`
  marks the rows the split scores and arrives as the batch's "mask". The batch size must be the
  row count: call `source.check_batch_size(config.data.batch_size)` in `source`;
- `dlx.data.GeneratedSource(draw, num_examples, seed)`: train batch `step` drawn on the fly by
  `draw(numpy Generator, count)` from (seed, the run's seed, step); eval reads `num_examples`
  fixed draws.
Each is read through `dlx.data.train_iterator`, whose state (the step) the runner checkpoints,
so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlx import data as data_lib
from dlx import models, schema
from dlx.data import RandomAccessSource
from dlx.errors import ConfigError
from dlx.hub import is_dlx_workdir
from dlx.layers import activations
from dlx.metrics import BatchSums, Evaluator
from dlx.models import get_model
from dlx.optim import optimizer as optimizer_lib
from dlx.optim import rules
from dlx.optim.lora import LoRA
from dlx.optim.state import LossFn, ModelState, compute_gradients, gradient_step


def model_inputs(batch: dict) -> jax.Array:
    """Images arrive as uint8 (4x less host-to-device traffic) and become floats in [0, 1] here."""
    if "image" in batch:
        image = batch["image"]
        return image.astype(jnp.float32) / 255.0 if image.dtype == jnp.uint8 else image
    return batch["features"].astype(jnp.float32)


def apply_model(
    apply_fn, params, model_state: dict, x: jax.Array, *, train: bool, rng: jax.Array | None = None
) -> tuple[jax.Array, dict]:
    """Runs the model; in training the mutable collections (batch_stats ...) are updated."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else None
    if train and model_state:
        out, new_state = apply_fn(variables, x, train=True, rngs=rngs, mutable=list(model_state))
        return out, dict(new_state)
    return apply_fn(variables, x, train=train, rngs=rngs), model_state


def is_main_process() -> bool:
    return jax.process_index() == 0


class Task:
    """The base of every task: defaults for the optional parts of the contract (see the module
    docstring). Subclasses define `init_state`, `train_step` and `evaluator`."""

    nonfinite_metrics: tuple[str, ...] = ("loss",)
    best_metric_default: tuple[str, str] = ("loss", "min")
    warm_start_items: tuple[str, ...] = ()
    resumable_keys: frozenset[str] = frozenset()
    config_rules: dict[str, schema.Rule] = {}

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict()

    @staticmethod
    def check_config(config) -> None:
        """Raises ConfigError for values of the task's keys that do not fit together (each
        value alone is checked by `config_rules`)."""

    def __init__(self, config, data_info, data_dir: str | None = None, workdir: str | None = None):
        self.config = config
        self.data_info = data_info
        self.data_dir = data_dir
        self.workdir = workdir

    def check_for_mesh(self, data_parallel_size: int) -> None:
        """Raises ConfigError for what does not fit the device layout."""

    def source(self, split: str, *, train: bool) -> RandomAccessSource:
        """The examples of `split` (see "Sources" in the module docstring): by default random
        access to the TFDS split, shuffled batches for training (`train=True`), in order once
        for evaluation."""
        return data_lib.source(self.config.data.name, split, self.data_dir)

    def examples_per_epoch(self) -> int:
        split = self.config.data.train_split
        if split in self.data_info.num_examples:
            return self.data_info.num_examples[split]
        return len(self.source(split, train=True))  # a split expression: "train[:90%]"

    def total_steps(self) -> int:
        steps_per_epoch = self.examples_per_epoch() / self.config.data.batch_size
        return self.config.train_steps or max(1, round(self.config.num_epochs * steps_per_epoch))

    def init_state(self, rng: jax.Array, batch: dict) -> Any:
        raise NotImplementedError

    def train_step(
        self, state: Any, batch: dict, rng: jax.Array, step: jax.Array
    ) -> tuple[Any, dict]:
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def write_run_files(self, workdir: str) -> None:
        """Files the run needs besides its checkpoints (a tokenizer ...). By default
        `model_summary.txt`, Flax's table of `self.model` (when the task has one) as
        `init_state` calls it."""
        model = getattr(self, "model", None)
        if not isinstance(model, nn.Module):
            return
        from dlx.tasks.model_summary import example_batch, model_summary

        table = model_summary(self, model, example_batch(self))
        if table is not None:
            with open(os.path.join(workdir, "model_summary.txt"), "w") as f:
                f.write(table)

    def tokens_per_example(self) -> int | None:
        """Tokens in one training example, for tokens/s in the logs; None counts examples."""
        return None

    def train_flops_per_example(self) -> float | None:
        """Model FLOPs of one training example (forward + backward), for MFU in the logs; None
        when the model has no FLOPs count."""
        return None

    def warm_start(self, state: Any, restored: dict) -> Any:
        """A fresh state with the `warm_start_items` of another run (config.init_from), or the
        weights of a pretrained checkpoint (`pretrained_items`), leaf by leaf."""
        return state.replace(**{k: merge_leaves(getattr(state, k), v) for k, v in restored.items()})

    def pretrained_items(self, source: str) -> dict:
        """{item: partial tree} of the pretrained checkpoint `source` (config.init_from)."""
        raise ConfigError(
            f"config.init_from='{source}' is not a dlx workdir, and task "
            f"'{self.config.task}' starts only from another dlx run's checkpoint"
        )

    def checkpointed(self, state: Any) -> Any:
        """What a checkpoint holds of `state` (or of a tree of its shapes or shardings)."""
        return state

    def checkpoints_whole_state(self) -> bool:
        return True

    def restore_checkpointed(self, fresh: Any, saved: Any) -> Any:
        """The state from a checkpoint's `saved` part and the rest of a fresh run's state."""
        return saved

    def num_params(self, state: Any) -> int:
        """Trained parameters in `state` (abstract or real), for the run summary."""
        return 0

    def trainable_params(self, state: Any) -> int:
        """Of those, the ones the optimizer moves."""
        return self.num_params(state)


def merge_leaves(tree: Any, partial: Any) -> Any:
    """`tree` with the leaves `partial` has at the same dict paths replaced, each cast to the
    dtype and laid out with the sharding of the leaf it replaces."""
    if isinstance(tree, dict) and isinstance(partial, dict):
        return {k: merge_leaves(v, partial[k]) if k in partial else v for k, v in tree.items()}
    if isinstance(tree, jax.Array) and not isinstance(partial, jax.ShapeDtypeStruct):
        return jax.device_put(jnp.asarray(partial, tree.dtype), tree.sharding)
    return partial


def supervised_config() -> ml_collections.ConfigDict:
    """The config keys of every `SupervisedTask`: one optimizer, loss terms, accumulation, LoRA
    adapters (`lora.rank` 0: none) and whether checkpoints hold frozen parameters."""
    return ml_collections.ConfigDict(
        dict(
            optimizer=optimizer_lib.default_config(),
            loss=ml_collections.ConfigDict(dict(l1=0.0, l2=0.0, label_smoothing=0.0)),
            grad_accum_steps=1,
            lora=ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets="")),
            checkpoint_frozen=True,
        )
    )


SUPERVISED_RULES: dict[str, schema.Rule] = {
    **schema.under("optimizer", **optimizer_lib.RULES),
    **schema.under(
        "loss",
        l1=schema.Float(low=0),
        l2=schema.Float(low=0),
        label_smoothing=schema.Float(0, 1, high_open=True),
    ),
    "grad_accum_steps": schema.Int(low=1),
    **schema.under(
        "lora",
        rank=schema.Int(low=0),
        alpha=schema.Float(low=0, low_open=True),
        dropout=schema.Float(0, 1, high_open=True),
        targets=schema.Str(),
    ),
    "checkpoint_frozen": schema.Bool(),
}


class SupervisedTask(Task):
    """One model (`config.model`, found by name), one Optax chain (`config.optimizer`), a loss
    over batches, metrics that are sums over the eval split. Subclasses define `loss_fn`,
    `eval_step` (per-batch sums) and `summarize_eval` (sums -> metrics), and may define
    `write_eval_artifacts`.

    Construction happens before the workdir is touched (a bad config must not harm a run), so a
    task may read files of an existing `workdir` (a saved tokenizer) but writes them only in
    `write_run_files`.
    """

    nonfinite_metrics = ("loss", "grad_norm")
    warm_start_items = ("params", "model_state")
    config_rules = SUPERVISED_RULES
    # Whether every path of the task (loss, eval, sampling) applies the model through
    # `apply_fn` / `model_params`, so that LoRA adapters (config.lora) reach it.
    supports_lora = False

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        return supervised_config()

    @staticmethod
    def check_config(config) -> None:
        models.check_config(config.model)
        optimizer_lib.check_config(config.optimizer)
        if config.lora.rank:
            if not config.lora.targets:
                raise ConfigError(
                    "config.lora.rank > 0 needs config.lora.targets, a regex of the layers "
                    "to adapt (e.g. r'h_\\d+/attn/(qkv|proj)')"
                )
            LoRA(**config.lora)
        if config.optimizer.weight_decay > 0 and config.loss.l2 > 0:
            raise ConfigError(
                "optimizer.weight_decay and loss.l2 are both set: that decays "
                "weights twice; keep one (weight_decay is decoupled, loss.l2 is a "
                "loss term)"
            )
        if config.data.batch_size % config.grad_accum_steps:
            raise ConfigError(
                f"config.data.batch_size={config.data.batch_size} must divide into "
                f"config.grad_accum_steps={config.grad_accum_steps} micro-batches"
            )

    def __init__(self, config, data_info, data_dir: str | None = None, workdir: str | None = None):
        super().__init__(config, data_info, data_dir, workdir)
        self.model = get_model(config.model.name, **self.model_kwargs())
        self.lora = LoRA(**config.lora) if config.lora.rank else None
        if self.lora is not None and not self.supports_lora:
            raise ConfigError(
                f"task '{config.task}' does not take LoRA adapters (config.lora.rank="
                f"{config.lora.rank}); they fit text_classification, token_classification, "
                f"language_model, classification and regression"
            )

    def check_for_mesh(self, data_parallel_size: int) -> None:
        micro = self.config.data.batch_size // self.config.grad_accum_steps
        if micro % data_parallel_size:
            raise ConfigError(
                f"micro-batch {micro} (batch_size / grad_accum_steps) is not "
                f"divisible by the data-parallel size {data_parallel_size}"
            )

    @functools.cached_property
    def pretrained(self):
        """The pretrained checkpoint config.init_from names (None for a dlx workdir or none)."""
        return _pretrained(self.config, self.data_dir)

    def model_kwargs(self) -> dict:
        """config.model's fields; starting from a pretrained checkpoint, its architecture with
        the fields config.model may change (dropout, the head ...) taken from config.model."""
        kwargs = {k: v for k, v in self.config.model.items() if k != "name"}
        if self.pretrained is None:
            return kwargs
        return pretrained_model_kwargs(self.config, self.pretrained, kwargs)

    def model_input(self, batch: dict) -> jax.Array:
        return model_inputs(batch)

    def init(self, rng: jax.Array, batch: dict) -> Any:
        """The model's boxed variables; with LoRA, params are {"model": the model's, "lora":
        the adapters}."""
        params_rng, dropout_rng = jax.random.split(rng)
        x = self.model_input(batch)
        variables = self.model.init({"params": params_rng, "dropout": dropout_rng}, x, train=False)
        if self.lora is None:
            return variables
        shapes = self.lora.shapes(self.model, variables, x, train=False)
        adapters = self.lora.init(shapes, jax.random.fold_in(rng, 1))
        return {**variables, "params": {"model": variables["params"], "lora": adapters}}

    def apply_fn(self, variables: dict, *args, rngs: dict | None = None, **kwargs) -> Any:
        """`model.apply`, with the LoRA adapters added when the task has them."""
        if self.lora is None:
            return self.model.apply(variables, *args, rngs=rngs, **kwargs)
        params = variables["params"]
        rng = (rngs or {}).get("dropout")
        train = bool(kwargs.get("train")) and rng is not None
        with self.lora.applied(params["lora"], rng=rng, train=train):
            return self.model.apply(
                {**variables, "params": params["model"]}, *args, rngs=rngs, **kwargs
            )

    def model_params(self, params: Any) -> Any:
        """The model's own params: LoRA adapters merged in (W + scale A B) when there are any,
        as an export or a plain `model.apply` wants them."""
        if self.lora is None:
            return params
        return self.lora.merge(params["model"], params["lora"])

    def pretrained_items(self, source: str) -> dict:
        if self.pretrained is None:
            return super().pretrained_items(source)
        params = self.pretrained.params
        return {"params": params if self.lora is None else {"model": params}}

    def _trainable(self, params: Any) -> Any:
        """The params the optimizer moves (all but `optimizer.frozen`), as a partial tree."""
        frozen = rules.regex_mask(params, self.config.optimizer.frozen)
        return _select(params, frozen, keep=False)

    def checkpoints_whole_state(self) -> bool:
        return self.config.checkpoint_frozen or not self.config.optimizer.frozen

    def checkpointed(self, state: Any) -> Any:
        if self.checkpoints_whole_state():
            return state
        return {
            "params": self._trainable(state.params),
            "opt_state": state.opt_state,
            "model_state": state.model_state,
        }

    def restore_checkpointed(self, fresh: Any, saved: Any) -> Any:
        if self.checkpoints_whole_state():
            return saved
        return fresh.replace(
            params=merge_leaves(fresh.params, saved["params"]),
            opt_state=saved["opt_state"],
            model_state=saved["model_state"],
        )

    @functools.cached_property
    def tx(self):
        return optimizer_lib.build_optimizer(self.config.optimizer, self.total_steps())

    @functools.cached_property
    def schedule(self):
        return optimizer_lib.build_schedule(self.config.optimizer, self.total_steps())

    def init_state(self, rng: jax.Array, batch: dict) -> ModelState:
        return ModelState.create(
            apply_fn=self.apply_fn, variables=self.init(rng, batch), tx=self.tx
        )

    @functools.cached_property
    def param_specs(self) -> Any:
        """The logical PartitionSpec of every parameter, from the model's boxed variables."""
        example = {
            k: np.asarray(v)[None]
            for k, v in self.source(self.config.data.train_split, train=True)[0].items()
        }
        variables = jax.eval_shape(self.init, jax.random.PRNGKey(0), example)
        return nn.get_partition_spec(variables)["params"]

    loss_fn: LossFn

    def step_loss(self, step: jax.Array) -> LossFn:
        """The loss the train step at `step` differentiates; a task whose loss changes over
        training (a KL weight's warm-up) returns that step's."""
        return self.loss_fn

    def train_step(
        self, state: ModelState, batch: dict, rng: jax.Array, step: jax.Array
    ) -> tuple[ModelState, dict]:
        state, metrics = gradient_step(
            state,
            batch,
            rng,
            self._frozen_stopped(self.step_loss(step)),
            self.config.grad_accum_steps,
            self.param_specs,
        )
        return state, {**metrics, "learning_rate": self.schedule(step)}

    def _frozen_stopped(self, loss_fn: LossFn) -> LossFn:
        """`loss_fn` with no gradient into `optimizer.frozen` params: the optimizer ignores
        those, and the backward pass then skips them (a frozen encoder costs its forward only)
        and the gradient norm counts what trains."""
        frozen = self.config.optimizer.frozen
        if not frozen:
            return loss_fn

        def stopped(params, *args):
            mask = rules.regex_mask(params, frozen)
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, mask)
            return loss_fn(params, *args)

        return stopped

    def layer_stats(self, state: Any, batch: dict, rng: jax.Array, step: jax.Array) -> dict:
        """What the train step at `step` does, layer by layer: the hidden layers' outputs (those
        the model marks, `dlx.layers.activations.LayerOutput`) and, per parameter, its value,
        its gradient and the optimizer's update of it (the step's own, same batch and rng)."""
        loss_fn = self.step_loss(step)
        model_state = getattr(state, "model_state", {})
        with activations.recording_activations() as hidden:
            loss_fn(state.params, model_state, batch, rng)
        grads = compute_gradients(
            state.params,
            model_state,
            batch,
            rng,
            loss_fn,
            self.config.grad_accum_steps,
            self.param_specs,
        )[0]
        updates, _ = self.tx.update(grads, state.opt_state, state.params)
        return {"activation": hidden, "param": state.params, "grad": grads, "update": updates}

    def eval_step(self, state: ModelState, batch: dict) -> dict:
        raise NotImplementedError

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        raise NotImplementedError

    def write_eval_artifacts(self, state: ModelState, sums: dict, workdir: str, step: int) -> None:
        """Figures and samples beyond the learning curves, under `workdir`. Called on every
        process (sampling runs sharded); only the main process writes."""

    def evaluator(self) -> Evaluator:
        return BatchSums(self.eval_step, self.summarize_eval, self.write_eval_artifacts)

    def predict(self, state: ModelState, batch: dict) -> jax.Array:
        """The model's output (logits, values) on a batch as the task feeds the model."""
        return apply_model(
            state.apply_fn, state.params, state.model_state, self.model_input(batch), train=False
        )[0]

    def tokens_per_example(self) -> int | None:
        """The length of a token-id model input (a [batch, length] integer array), else None."""
        example = {
            k: np.asarray(v)[None]
            for k, v in self.source(self.config.data.train_split, train=True)[0].items()
        }
        try:
            x = self.model_input(example)
        except KeyError:  # the task feeds the model more than one array
            return None
        is_tokens = getattr(x, "ndim", 0) == 2 and np.issubdtype(x.dtype, np.integer)
        return int(x.shape[1]) if is_tokens else None

    def train_flops_per_example(self) -> float | None:
        """From the model family's count: per token for token inputs
        (`train_flops_per_token(model, seq_len)`, dlx/models/transformer.py), per image for image
        inputs (`train_flops_per_example(model, (H, W, C))`, dlx/models/vit.py, resnet.py)."""
        family = importlib.import_module(type(self.model).__module__)
        per_token = getattr(family, "train_flops_per_token", None)
        tokens = self.tokens_per_example()
        if per_token and tokens:
            return tokens * per_token(self.model, tokens)
        per_image = getattr(family, "train_flops_per_example", None)
        image = self.data_info.features.get("image")
        if per_image and image is not None and None not in image.shape:
            return float(per_image(self.model, tuple(image.shape)))
        return None

    def num_params(self, state: ModelState) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))

    def trainable_params(self, state: ModelState) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self._trainable(state.params)))


def _select(tree: Any, mask: Any, *, keep: bool) -> Any:
    """The nested-dict `tree` with only the leaves whose `mask` is `keep` (empty dicts go)."""
    if isinstance(tree, dict):
        picked = {k: _select(v, mask[k], keep=keep) for k, v in tree.items()}
        return {k: v for k, v in picked.items() if not (isinstance(v, dict) and not v)}
    return tree if mask == keep else {}


def _pretrained(config, data_dir: str | None):
    """The pretrained checkpoint config.init_from names (None for a dlx workdir or nothing)."""
    if not config.init_from or is_dlx_workdir(config.init_from):
        return None
    from dlx.hub import load_pretrained

    try:
        return load_pretrained(config.init_from, data_dir)
    except ConfigError as error:
        raise ConfigError(f"config.init_from: {error}") from None


def pretrained_model_kwargs(config, pretrained, requested: dict) -> dict:
    """The checkpoint's architecture, with config.model's values for the fields a checkpoint's
    weights do not fix (`PRETRAINED_OVERRIDES` of the model family); a config.model value
    that contradicts the checkpoint is a ConfigError."""
    family = importlib.import_module(f"dlx.models.{config.model.name}")
    overridable = getattr(family, "PRETRAINED_OVERRIDES", None)
    if overridable is None:
        raise ConfigError(
            f"config.init_from='{config.init_from}' is a {pretrained.family} checkpoint, which "
            f"builds a 'transformer'; config.model.name is '{config.model.name}'"
        )
    kwargs = dict(pretrained.model_fields)
    for key, value in requested.items():
        if key in overridable:
            kwargs[key] = value
        elif kwargs.get(key) != value:
            raise ConfigError(
                f"config.model.{key}={value!r}, but the checkpoint config.init_from="
                f"'{config.init_from}' has {key}={kwargs.get(key)!r}; leave it out (the "
                f"architecture comes from the checkpoint; config.model may set "
                f"{', '.join(overridable)})"
            )
    return kwargs
