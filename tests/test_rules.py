import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax.core import FrozenDict

from dlx.errors import ConfigError
from dlx.optim import rules


def _params():
    return {
        "Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
        "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "head": {"kernel": jnp.ones((4, 2))},
    }


def test_tree_paths_of_nested_dicts_and_lists():
    tree = {"a": {"b": 1, "c": [2, 3]}}
    assert rules.tree_paths(tree) == {"a": {"b": "a/b", "c": ["a/c/0", "a/c/1"]}}


def test_tree_paths_of_frozen_dict():
    paths = rules.tree_paths(FrozenDict(_params()))
    assert paths["Dense_0"]["kernel"] == "Dense_0/kernel"
    assert paths["BatchNorm_0"]["scale"] == "BatchNorm_0/scale"


def test_boxed_leaves_get_the_same_paths_as_unboxed():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
            return nn.Dense(4, kernel_init=init)(x)

    boxed = jax.eval_shape(Model().init, jax.random.key(0), jnp.ones((1, 3)))["params"]
    assert isinstance(boxed["Dense_0"]["kernel"], nn.Partitioned)
    assert rules.tree_paths(boxed) == rules.tree_paths(nn.unbox(boxed))
    assert rules.tree_paths(boxed)["Dense_0"] == {
        "kernel": "Dense_0/kernel",
        "bias": "Dense_0/bias",
    }


def test_match_takes_the_first_rule_that_fullmatches():
    got = rules.match(_params(), [(".*/bias", "b"), ("Dense_0/.*", "dense"), (".*", "rest")])
    assert got == {
        "Dense_0": {"kernel": "dense", "bias": "b"},
        "BatchNorm_0": {"scale": "rest", "bias": "b"},
        "head": {"kernel": "rest"},
    }


def test_match_uses_fullmatch_not_search():
    got = rules.match(_params(), [("kernel", 1)], default=0)
    assert jax.tree.leaves(got) == [0] * 5


def test_match_fails_loudly_on_unmatched_parameters():
    with pytest.raises(ConfigError) as e:
        rules.match(_params(), [(".*/kernel", True)])
    message = str(e.value)
    assert "Dense_0/bias" in message and "BatchNorm_0/scale" in message
    assert ".*/kernel" in message


def test_match_default_fills_unmatched():
    got = rules.match(_params(), [(".*/kernel", True)], default=False)
    assert got["head"]["kernel"] is True and got["BatchNorm_0"]["scale"] is False


def test_match_values_may_be_tuples_or_none():
    got = rules.match(_params(), [(".*/kernel", ("embed", None)), (".*", None)])
    assert got["Dense_0"]["kernel"] == ("embed", None)
    assert got["Dense_0"]["bias"] is None


def test_strict_unused_rejects_a_rule_that_matches_nothing():
    with pytest.raises(ConfigError, match="Dense_1"):
        rules.match(_params(), [("Dense_1/.*", 0.1)], default=1.0, strict_unused=True)
    rules.match(_params(), [("Dense_1/.*", 0.1)], default=1.0)  # not strict: fine


def test_strict_unused_rejects_a_shadowed_rule():
    with pytest.raises(ConfigError, match="head/kernel"):
        rules.match(_params(), [(".*", 1), ("head/kernel", 2)], strict_unused=True)


def test_invalid_regex_is_a_config_error():
    with pytest.raises(ConfigError, match="regular expression"):
        rules.match(_params(), [("(unclosed", 1)])


def test_regex_mask():
    mask = rules.regex_mask(_params(), r".*(bias|scale)")
    assert mask["Dense_0"] == {"kernel": False, "bias": True}
    assert mask["BatchNorm_0"] == {"scale": True, "bias": True}
    assert not any(jax.tree.leaves(rules.regex_mask(_params(), "")))
