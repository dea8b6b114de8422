"""The runner trains any task that keeps the contract of `dlx.tasks.base.Task`, with no edit to
`dlx/train/`: here a task defined in this file (registered as `dlx.tasks.two_player_toy`) with two
players, two optimizers, an EMA copy and a counter in its state, alternating updates, and an
evaluator whose result is not a sum (a median over the eval split)."""

from __future__ import annotations

import json
import sys
import types

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dlx.parallel import gather_fsdp
from dlx.tasks.base import Task as TaskBase
from dlx.train import config as config_lib
from dlx.train import loop
from helpers import train_losses


class Player(nn.Module):
    @nn.compact
    def __call__(self, x):
        dense = lambda n, names: nn.Dense(  # noqa: E731
            n, kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
        )
        return dense(10, ("mlp", "classes"))(nn.relu(dense(32, ("embed", "mlp"))(x)))


@flax.struct.dataclass
class TwoPlayerState:
    a_params: dict
    a_opt: optax.OptState
    b_params: dict
    b_opt: optax.OptState
    a_ema: dict
    updates: jax.Array


class MedianLoss:
    """Non-additive: the median per-example loss of the EMA player over the split."""

    def __init__(self, task):
        self.task = task

    def init(self):
        return []

    def update(self, acc, state, batch):
        losses = jax.jit(self.task.per_example_loss, out_shardings=jax.sharding.PartitionSpec())(
            state.a_ema, batch
        )
        mask = np.asarray(batch["mask"]).astype(bool)
        return [*acc, np.asarray(losses)[mask]]

    def merge(self, acc):
        return np.concatenate(acc)  # replicated outputs: every process saw the whole split

    def result(self, acc):
        return {"median_loss": float(np.median(acc)), "examples": float(acc.size)}

    def write_artifacts(self, acc, state, workdir, step):
        with open(f"{workdir}/median_step_{step}.txt", "w") as f:
            f.write(f"{np.median(acc)}\n")


class Task(TaskBase):
    best_metric_default = ("median_loss", "min")
    nonfinite_metrics = ("loss_a", "loss_b")

    @staticmethod
    def config_defaults():
        return ml_collections.ConfigDict({"two_player": dict(lr_a=0.1, lr_b=3e-3, ema=0.9)})

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        super().__init__(config, data_info, data_dir, workdir)
        self.player = Player()
        self.tx_a = optax.sgd(config.two_player.lr_a, momentum=0.9)
        self.tx_b = optax.adam(config.two_player.lr_b)

    def _x(self, batch):
        image = batch["image"]  # digits: 8x8 uint8 in [0, 16]
        return image.reshape(image.shape[0], -1).astype(jnp.float32) / 16.0

    def init_state(self, rng, batch):
        key_a, key_b = jax.random.split(rng)
        a = self.player.init(key_a, self._x(batch))["params"]
        b = self.player.init(key_b, self._x(batch))["params"]
        return TwoPlayerState(a, self.tx_a.init(a), b, self.tx_b.init(b), a, jnp.int32(0))

    @property
    def specs(self):
        x = jax.ShapeDtypeStruct((1, 64), jnp.float32)
        return nn.get_partition_spec(jax.eval_shape(self.player.init, jax.random.key(0), x))[
            "params"
        ]

    def per_example_loss(self, params, batch, noise=0.0):
        logits = self.player.apply({"params": params}, self._x(batch) + noise)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    def train_step(self, state, batch, rng, step):
        specs = self.specs

        def loss_a(p):  # player A: cross-entropy on inputs with noise drawn from this step's rng
            noise = 0.1 * jax.random.normal(rng, self._x(batch).shape)
            return self.per_example_loss(gather_fsdp(p, specs), batch, noise).mean()

        def loss_b(p):  # player B: squared error to A's softened predictions
            target = jax.nn.softmax(self.player.apply({"params": state.a_params}, self._x(batch)))
            out = self.player.apply({"params": gather_fsdp(p, specs)}, self._x(batch))
            return jnp.mean((jax.nn.softmax(out) - target) ** 2)

        def update_a(s):
            grads = jax.grad(loss_a)(s.a_params)
            updates, opt = self.tx_a.update(grads, s.a_opt, s.a_params)
            return s.replace(a_params=optax.apply_updates(s.a_params, updates), a_opt=opt)

        def update_b(s):
            grads = jax.grad(loss_b)(s.b_params)
            updates, opt = self.tx_b.update(grads, s.b_opt, s.b_params)
            return s.replace(b_params=optax.apply_updates(s.b_params, updates), b_opt=opt)

        new = jax.lax.cond(step % 2 == 0, update_a, update_b, state)
        decay = self.config.two_player.ema
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, new.a_ema, new.a_params)
        new = new.replace(a_ema=ema, updates=new.updates + 1)
        la, lb = loss_a(new.a_params), loss_b(new.b_params)
        return new, {"loss": la + lb, "loss_a": la, "loss_b": lb}

    def evaluator(self):
        return MedianLoss(self)

    def num_params(self, state):
        return sum(x.size for x in jax.tree.leaves((state.a_params, state.b_params)))


@pytest.fixture(autouse=True, scope="module")
def registered():
    module = types.ModuleType("dlx.tasks.two_player_toy")
    module.Task = Task
    sys.modules[module.__name__] = module
    yield
    del sys.modules[module.__name__]


def _config(**changes):
    config = config_lib.base_config("two_player_toy")
    config.data.update(name="digits", batch_size=64, eval_batch_size=120)
    config.update(
        {
            **dict(
                train_steps=12,
                log_every_steps=1,
                eval_every_steps=6,
                checkpoint_every_steps=6,
                progress_bar=False,
            ),
            **changes,
        }
    )
    return config


def test_a_two_player_task_trains_evaluates_and_resumes_exactly(tmp_path):
    whole = loop.train_and_evaluate(_config(), str(tmp_path / "whole"))
    assert set(whole["final_eval"]) == {"median_loss", "examples"}
    assert whole["final_eval"]["examples"] == 360  # every test example once, padding dropped
    assert (tmp_path / "whole" / "median_step_12.txt").is_file()
    losses = train_losses(tmp_path / "whole")
    assert losses[12] < losses[1]

    # Stopped after 6 steps, then the same config resumes: both players, both optimizer
    # states, the EMA and the counter come back, and steps 7-12 repeat exactly.
    loop.train_and_evaluate(_config(train_steps=6), str(tmp_path / "resumed"))
    resumed = loop.train_and_evaluate(_config(), str(tmp_path / "resumed"))
    assert resumed["resumed_from_step"] == 6
    again = train_losses(tmp_path / "resumed")
    assert [again[s] for s in range(1, 13)] == [losses[s] for s in range(1, 13)]
    assert resumed["final_eval"] == whole["final_eval"]
    run = loop.prepare_run(_config())
    state, _ = loop.restore_latest(run, str(tmp_path / "resumed"))
    assert int(state.updates) == 12


def test_a_two_player_state_trains_the_same_on_a_data_fsdp_model_mesh(tmp_path):
    def train(mesh_shape):
        config = _config()
        config.mesh.data, config.mesh.fsdp, config.mesh.model = mesh_shape
        run = loop.prepare_run(config, devices=jax.devices()[: int(np.prod(mesh_shape))])
        state, step = loop.init_state(run), loop.compile_steps(run)
        source = run.task.source("train", train=True)
        batches = iter([source.read_rows(np.arange(i * 64, (i + 1) * 64)) for i in range(4)])
        with loop._tracing_context(run.mesh, config):
            for i in range(4):
                state, _ = step(state, next(batches), np.int32(i))
        return jax.device_get(state)

    sharded, single = train((2, 2, 2)), train((1, 1, 1))
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_task_config_keys_are_checked_like_the_runners(tmp_path):
    config = _config()
    config.two_player.lr_aa = 1.0
    with pytest.raises(config_lib.ConfigError, match="two_player.lr_aa.*did you mean 'lr_a'"):
        loop.train_and_evaluate(config, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
    saved = json.loads(config_lib.to_json(_config()))
    assert saved["two_player"] == {"lr_a": 0.1, "lr_b": 3e-3, "ema": 0.9}
    assert "optimizer" not in saved and "decoding" not in saved
