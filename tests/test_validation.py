"""Every bad config value is refused before anything is written: each runner key, each task's
group and each model field by type and range (NaN and inf wherever a number is expected), with
one line naming the full key, the bad value and what is allowed; a GPT-2 import's config.json is
checked against the safetensors headers before any model is built."""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from dlx import models, registry
from dlx.errors import ConfigError, DataError
from dlx.hub import gpt2
from dlx.models.transformer import Model as Transformer
from dlx.tasks.base import SUPERVISED_RULES
from dlx.train import config as config_lib
from helpers import REPO

# One config per task (regression has no keys of its own) and per model family.
CONFIGS = [
    "digits_mlp",
    "fashion_cnn:test",
    "shakespeare_gpt:test",
    "shakespeare_lstm:test",
    "cmudict_gru_attention:test",
    "fashion_autoencoder:test",
    "fashion_vae:test",
    "fashion_dcgan:test",
    "fashion_ddpm:test",
]
# Values of every kind: each key's rule must refuse some (at least one of another type).
PROBES = [
    "not-a-value",
    "",
    True,
    None,
    ("abc",),
    1.5,
    -7,
    0,
    7,
    2**40,
    float("nan"),
    float("inf"),
    -float("inf"),
]


def _kind(value) -> str:
    if isinstance(value, float):
        return "float" if math.isfinite(value) else repr(value)
    return "int" if type(value) is int else "other"


def _bad_values(rule) -> list:
    """The first value `rule` refuses of each kind: another type, a finite float, an int, NaN,
    inf, -inf."""
    firsts = {}
    for value in PROBES:
        if not rule.accepts(value):
            firsts.setdefault(_kind(value), value)
    return list(firsts.values())


def _load(spec: str) -> ml_collections.ConfigDict:
    name, _, variant = spec.partition(":")
    return config_lib.load(f"{REPO / 'configs' / name}.py" + (f":{variant}" if variant else ""))


def _with(config: ml_collections.ConfigDict, key: str, value) -> ml_collections.ConfigDict:
    """`config` with `key` set to `value` of any type, as a config.json edited by hand gives it
    (a ConfigDict refuses to change a field's type by assignment)."""
    values = config.to_dict()
    *groups, last = key.split(".")
    node = values
    for group in groups:
        node = node[group]
    node[last] = value
    return ml_collections.ConfigDict(values)


def _refusal(config: ml_collections.ConfigDict) -> str:
    with pytest.raises(ConfigError) as raised:
        config_lib.validate(config)
    return str(raised.value)


def _rules(config: ml_collections.ConfigDict, runner_keys: bool) -> dict:
    """Every key of `config`'s task and model with its rule; the runner's and the supervised
    tasks' shared keys only when `runner_keys`."""
    task = registry.task_class(config.task)
    shared = {**config_lib.RUNNER_RULES, **SUPERVISED_RULES}
    rules = {k: r for k, r in task.config_rules.items() if runner_keys or k not in shared}
    if runner_keys:
        rules.update(config_lib.RUNNER_RULES)
    for named in ("task", "model.name"):  # found by name: their own error, tested below
        rules.pop(named, None)
    rules.update(
        {f"model.{field}": rule for field, rule in models.field_rules(config.model.name).items()}
    )
    return rules


@pytest.mark.parametrize("spec", CONFIGS)
def test_every_key_refuses_wrong_types_out_of_range_values_and_nan(spec):
    config = _load(spec)
    config_lib.validate(config)
    rules = _rules(config, runner_keys=spec == CONFIGS[0])
    for key, rule in rules.items():
        refused = _bad_values(rule)
        assert len(refused) >= 2, f"{key} is not typed"  # e.g. a string and a float
        if any(rule.accepts(x) for x in (0.5, 1.5, 1000.5)):  # a float is expected
            assert {repr(v) for v in refused} >= {"nan", "inf", "-inf"}, key
        for value in refused:
            message = _refusal(_with(config, key, value))
            assert message.startswith(f"config.{key}={value!r} is not allowed; expected "), (
                key,
                value,
                message,
            )
            assert "\n" not in message


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        # the cases
        ("model.hidden", ("abc",), "a sequence, each item an integer >= 1"),
        ("sharding_rules", ("abc",), "(logical_name, mesh_axis | tuple of mesh axes | None) pairs"),
        ("optimizer.learning_rate", float("nan"), "a finite number >= 0"),
        ("keep_checkpoints", -1, "an integer >= 1"),
        ("log_every_steps", -5, "an integer >= 0"),
        # the ranges users rely on
        ("keep_checkpoints", 0, "an integer >= 1"),
        ("optimizer.learning_rate", -1e-3, "a finite number >= 0"),
        ("optimizer.b1", 1.0, "in [0, 1)"),
        ("data.batch_size", 0, "an integer >= 1"),
        ("seed", 2**32, "an integer in [0, 4294967295]"),
        ("nan_policy", "halt", "one of ('stop', 'skip')"),
        ("mesh.fsdp", 0, "-1 or an integer >= 1"),
        ("mesh.data", -2, "-1 or an integer >= 1"),
        ("sharding_rules", (("batch", "dat"),), "the mesh axes among ('data', 'fsdp', 'model')"),
        ("sharding_rules", (("batch", ("data", "x")),), "mesh axes among"),
        ("sharding_rules", (("batch",),), "pairs"),
        ("sharding_rules", ((3, "data"),), "pairs"),
        ("loss.label_smoothing", 1.0, "in [0, 1)"),
        ("grad_accum_steps", 0, "an integer >= 1"),
        ("model.dropout", 1.0, "in [0, 1)"),
        ("model.num_outputs", 2.0, "an integer >= 1"),
        ("model.batch_norm", 1, "True or False"),
        ("num_epochs", float("inf"), "a finite number >= 0"),
    ],
)
def test_out_of_range_values_name_the_key_and_what_is_allowed(key, value, allowed):
    message = _refusal(_with(_load("digits_mlp"), key, value))
    assert message.startswith(f"config.{key}={value!r} is not allowed") and allowed in message


@pytest.mark.parametrize(
    "spec, key, value, allowed",
    [
        ("shakespeare_gpt:test", "decoding.top_p", 0.0, "in (0, 1]"),
        ("shakespeare_gpt:test", "data.tokenizer", "chars", "did you mean 'char'"),
        ("shakespeare_gpt:test", "model.norm_eps", 0.0, "> 0"),
        ("fashion_ddpm:test", "diffusion.ema_decay", 1.0, "in [0, 1)"),
        ("fashion_ddpm:test", "diffusion.timesteps", 1, ">= 2"),
        ("fashion_dcgan:test", "gan.discriminator_optimizer.b2", 1.0, "in [0, 1)"),
        ("cmudict_gru_attention:test", "decoding.beam_size", 0, ">= 1"),
        ("fashion_vae:test", "vae.importance_samples", -1, ">= 0"),
    ],
)
def test_task_groups_have_ranges(spec, key, value, allowed):
    message = _refusal(_with(_load(spec), key, value))
    assert message.startswith(f"config.{key}={value!r} is not allowed") and allowed in message


def _leaves(config: ml_collections.ConfigDict, where: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_leaves(value, f"{where}{key}."))
        else:
            out[where + key] = value
    return out


def test_every_key_declares_a_range_and_every_default_is_in_it():
    for name in registry.available("dlx.tasks", "Task"):
        rules = {**config_lib.RUNNER_RULES, **registry.task_class(name).config_rules}
        defaults = _leaves(config_lib.base_config(name))
        assert set(defaults) == set(rules), (name, set(defaults) ^ set(rules))
        for key, default in defaults.items():
            assert rules[key].accepts(default), (name, key, default)
    for name in models.available():
        rules = models.field_rules(name)
        for field, default in models.model_defaults(name).items():
            assert not rules[field].accepts(object()), (name, field)  # typed
            assert rules[field].accepts(default), (name, field, default)


def test_unknown_model_and_relations_between_values_are_still_one_line():
    config = _load("digits_mlp")
    assert "did you mean 'mlp'" in _refusal(_with(config, "model.name", "mlpp"))
    assert "did you mean 'regression'" in _refusal(_with(config, "task", "regresion"))
    message = _refusal(_with(_load("fashion_ddpm:test"), "diffusion.sample_steps", 10**6))
    assert "sample_steps=1000000 must be <= config.diffusion.timesteps" in message


# ---- launch.py: exit code 2, one error line, no workdir -------------------------------------


@pytest.fixture
def run_launch(monkeypatch, capsys):
    """launch.main in this process. Flags it defines on absl's global FLAGS (launch.py did
    before its per-call FlagValues) are removed after each call, so the next can define them."""
    from absl import flags

    import launch

    def run(*args: str) -> tuple[int, str]:
        defined = set(flags.FLAGS)
        monkeypatch.setattr(sys, "argv", ["launch.py"])
        try:
            launch.main(["launch.py", *args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        finally:
            for name in set(flags.FLAGS) - defined:
                delattr(flags.FLAGS, name)
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    "flag, error",
    [
        ("--config.model.hidden=abc", "config.model.hidden=('abc',) is not allowed"),
        ("--config.sharding_rules=abc", "config.sharding_rules=('abc',) is not allowed"),
        (
            "--config.optimizer.learning_rate=nan",
            "config.optimizer.learning_rate=nan is not allowed",
        ),
        ("--config.keep_checkpoints=-1", "config.keep_checkpoints=-1 is not allowed"),
        ("--config.log_every_steps=-5", "config.log_every_steps=-5 is not allowed"),
        ("--config.model.dropout=inf", "config.model.dropout=inf is not allowed"),
        ("--config.mesh.model=0", "config.mesh.model=0 is not allowed"),
        ("--config.keep_checkpoints=abc", "--config.keep_checkpoints=abc"),  # absl refuses it
        # fewer outputs than classes: the labels beyond them would score as zero, silently
        ("--config.model.num_outputs=5", "set config.model.num_outputs=10"),
    ],
)
def test_launch_refuses_bad_values_with_exit_code_2_and_writes_nothing(
    run_launch, tmp_path, flag, error
):
    workdir = tmp_path / "run"
    code, stderr = run_launch(
        "--config",
        str(REPO / "configs/digits_mlp.py"),
        "--workdir",
        str(workdir),
        "--config.train_steps=2",
        flag,
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert error in lines[0]
    assert not workdir.exists()


# ---- GPT-2 import: config.json against the safetensors headers ------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    model = Transformer(vocab_size=64, num_layers=2, embed_dim=32, num_heads=2, max_len=16)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 4), "int32"))
    params = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), variables["params"])
    return gpt2.export_gpt2(model, params, tmp_path_factory.mktemp("gpt2") / "tiny")


@pytest.mark.parametrize(
    "claim, message",
    [
        ({"n_layer": 100_000}, "claims n_layer=100000 but the weights in .* hold 2 block"),
        ({"vocab_size": 50257}, "claims vocab_size=50257 .* have 64 \\(rows of wte.weight\\)"),
        ({"n_embd": 64}, "claims n_embd=64 .* have 32 \\(columns of wte.weight\\)"),
        ({"n_positions": 1024}, "claims n_positions=1024 .* have 16 \\(rows of wpe.weight\\)"),
        ({"n_inner": 4096}, "claims n_inner=4096 .* have 128"),
    ],
)
def test_gpt2_config_is_checked_against_the_weights_before_building(
    tiny_gpt2, tmp_path, monkeypatch, claim, message
):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for path in tiny_gpt2.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    config = json.loads((directory / gpt2.CONFIG_FILE).read_text())
    (directory / gpt2.CONFIG_FILE).write_text(json.dumps({**config, **claim}))

    def no_model(**fields):
        raise AssertionError("the model was built before the sizes were checked")

    monkeypatch.setattr(gpt2, "Model", no_model)
    with pytest.raises(DataError, match=message) as raised:
        gpt2.load_gpt2(directory)
    assert "\n" not in str(raised.value)


def test_gpt2_config_of_absurd_values_is_refused_in_one_line(tiny_gpt2, tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for path in tiny_gpt2.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    config = json.loads((directory / gpt2.CONFIG_FILE).read_text())
    for key, value in [
        ("n_layer", -1),
        ("n_head", 0),
        ("layer_norm_epsilon", math.nan),
        ("n_positions", "1024"),
    ]:
        (directory / gpt2.CONFIG_FILE).write_text(json.dumps({**config, key: value}))
        with pytest.raises(ConfigError, match=key) as raised:
            gpt2.load_gpt2(directory)
        assert "\n" not in str(raised.value)
