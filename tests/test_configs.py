"""Every config file in configs/ and each of its variants loads and passes validation (model
fields, task options, optimizer), so a typo in a config fails here, not an hour into a run."""
from __future__ import annotations

import importlib

import pytest

from dlx.train import config as config_lib
from helpers import REPO

CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.stem.startswith("_"))
VARIANTS = (None, "small", "test", "demo")


def variants_of(name: str):
    module = importlib.import_module(f"configs.{name}")
    for variant in VARIANTS:
        try:
            yield variant, module.get_config(variant)
        except ValueError as error:  # configs reject variants they do not have
            assert variant is not None and "variant" in str(error), error


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_and_variants_validate(name, tmp_path):
    loaded = list(variants_of(name))
    assert loaded and loaded[0][0] is None
    for variant, config in loaded:
        config_lib.validate(config)
        saved = tmp_path / f"{variant}.json"  # what a run's config.json reproduces
        saved.write_text(config_lib.to_json(config))
        assert config_lib.differences(config, config_lib.from_json(str(saved))) == [], variant
