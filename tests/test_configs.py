"""Every config file in configs/ and each of its variants (the common names and those a file
lists in `VARIANTS`) loads and passes validation (model fields, task options, optimizer), so a
typo in a config fails here, not an hour into a run."""

from __future__ import annotations

import importlib
import json

import pytest

from dlx.train import config as config_lib
from helpers import REPO, load_config

CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.stem.startswith("_"))
VARIANTS = (None, "small", "test", "demo")


def variants_of(name: str):
    module = importlib.import_module(f"configs.{name}")
    declared = tuple(v for v in getattr(module, "VARIANTS", ()) if v not in VARIANTS)
    for variant in VARIANTS + declared:
        try:
            yield variant, module.get_config(variant)
        except ValueError as error:  # configs reject variants they do not have
            assert variant is not None and variant not in declared, error
            assert "variant" in str(error), error


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_and_variants_validate(name, tmp_path):
    loaded = list(variants_of(name))
    assert loaded and loaded[0][0] is None
    for variant, config in loaded:
        config_lib.validate(config)
        saved = tmp_path / f"{variant}.json"  # what a run's config.json reproduces
        saved.write_text(config_lib.to_json(config))
        assert config_lib.differences(config, config_lib.from_json(str(saved))) == [], variant


def test_epoch_cadence_falls_on_the_steps_completing_each_period():
    config = config_lib.base_config()
    config.eval_every_epochs, config.checkpoint_every_steps = 2.0, 3
    steps_per_epoch = 112_434 / 256  # cmudict's train split: 439.2 steps an epoch
    total = round(8 * steps_per_epoch)
    every = config_lib.period(config, "eval_every", steps_per_epoch)
    due = [step for step in range(1, total + 1) if config_lib.is_due(step, every)]
    # One eval per 2 epochs, the 4th on the run's last step (a period rounded to 878 steps put
    # the 4th on 3512 and a 5th eval on the last step).
    assert due == [879, 1757, 2636, 3514] and total == 3514
    every = config_lib.period(config, "checkpoint_every", steps_per_epoch)
    assert [s for s in range(1, 10) if config_lib.is_due(s, every)] == [3, 6, 9]
    config.eval_every_epochs = 0.0
    assert not any(
        config_lib.is_due(s, config_lib.period(config, "eval_every", 5.0)) for s in range(1, 20)
    )


def test_command_line_may_set_any_model_field_and_typos_name_the_field():
    config = config_lib.load(str(REPO / "configs/cmudict_transformer.py:small"))
    assert "dtype" not in config.model  # left at the model's default by the file
    config_lib.prepare_overrides(config, ["model.dtype", "optimizer.learning_rate"])
    assert config.model.dtype == "float32" and config.model.embed_dim == 128
    config_lib.validate(config)
    for path, expected in [
        ("model.dtyp", "did you mean 'dtype'"),
        ("optimizer.learnig_rate", "did you mean 'learning_rate'"),
        ("data.batch_size.x", "no key 'x' under data.batch_size"),
    ]:
        with pytest.raises(config_lib.ConfigError, match=expected):
            config_lib.prepare_overrides(config, [path])


def test_a_config_json_from_before_task_groups_still_loads(tmp_path):
    """Runs saved before tasks declared their own keys hold every task's keys (a classification
    run has `decoding` and `data.tokenizer`); they still resume and reproduce."""
    values = json.loads(config_lib.to_json(config_lib.base_config()))
    values["decoding"] = {
        "prompt": "\n",
        "num_samples": 2,
        "max_new_tokens": 200,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 1.0,
        "beam_size": 1,
        "length_penalty": 0.0,
    }
    values["data"].update(tokenizer="char", vocab_size=0, seq_len=0)
    values["num_epochs"] = 1.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    config = config_lib.from_json(str(path))
    config_lib.validate(config)
    assert "decoding" not in config and "tokenizer" not in config.data


@pytest.mark.parametrize(
    "spec", ["fashion_cnn.py:test", "cmudict_transformer.py:small", "shakespeare_gpt.py:test"]
)
def test_a_config_json_older_than_the_added_keys_loads_with_their_defaults(spec, tmp_path):
    """A run saved before a key existed (config_lib.ADDED_KEYS) resumes: the key comes in with
    the default of its task's schema, which is what that run did."""
    config = load_config(f"configs/{spec}")
    values = json.loads(config.to_json())
    defaults = json.loads(config_lib.base_config(config.task).to_json())
    removed = []
    for path in config_lib.ADDED_KEYS:
        *groups, key = path.split(".")
        node = values
        for group in groups:
            node = node.get(group, {})
        if key in node:
            del node[key]
            removed.append(path)
    assert "lora" in removed and "checkpoint_frozen" in removed
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(values))
    restored = config_lib.from_json(str(saved))
    config_lib.validate(restored)
    restored_values = json.loads(restored.to_json())
    for path in removed:
        value, default = restored_values, defaults
        for part in path.split("."):
            value, default = value[part], default[part]
        assert value == default, path
