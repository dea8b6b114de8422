"""The Vision Transformer (dlx/models/vit.py) and its layers (dlx/layers/patches.py): shapes and
parameter counts (ViT-B/16's published one), the patch embedding as a strided convolution, 2-D
positions, class-token and mean pooling, parity with the PyTorch reference of bench/torch_vit.py
on the same weights (a block with gradients, the whole model), attention maps, sharded
execution, and an end-to-end run with the attention study."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlx.errors import ConfigError
from dlx.layers.patches import PatchEmbedding, patchify, sinusoidal_2d
from dlx.layers.positional import sinusoidal
from dlx.models import check_config, get_model, parameter_counts, vit
from dlx.models.receptive_field import receptive_fields
from dlx.train.config import DEFAULT_RULES
from dlx.train.sharding import logical_shardings
from helpers import REPO, train

torch = pytest.importorskip("torch")
from bench import torch_vit  # noqa: E402

D, H, M, L, K = 16, 2, 24, 2, 10  # width, heads, MLP width, blocks, classes
TINY = dict(num_outputs=K, patch_size=7, num_layers=L, embed_dim=D, num_heads=H, mlp_dim=M)
IMAGES = (3, 28, 28, 1)


def _images(shape=IMAGES, seed=1) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape)


def _random_params(module: nn.Module, *args, seed: int = 0) -> dict:
    """Params of `module`'s structure, all random (no zero biases, no unit scales): matrices
    N(0, 1/fan-in), vectors around 0 (biases, tokens) or 1 (norm scales)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        if leaf.ndim == 1:
            center = 1.0 if names[-1] == "scale" else 0.0
            return center + rng.uniform(-0.5, 0.5, leaf.shape)
        if names[-1] == "embedding":
            return rng.normal(0, 0.5, leaf.shape)
        path = "/".join(["", *names])
        convolution = path in ("/kernel", "/patch_embed/kernel") or path.endswith("conv/kernel")
        input_axes = 3 if convolution else 1
        if path.endswith("attn/proj/kernel"):
            input_axes = 2  # [heads, head_dim, embed]
        return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:input_axes])), leaf.shape)

    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
    return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), shapes)


def _torch_vit(
    model: vit.Model, params: dict, batch_stats=None, image_shape=IMAGES[1:]
) -> torch_vit.ViT:
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
    net = torch_vit.ViT.from_fields(fields, image_shape)
    torch_vit.load_dlx(net, params, batch_stats)
    return net


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


# ---- layers ----


@pytest.mark.parametrize("patch, shape", [(4, (2, 12, 8, 3)), (7, (2, 28, 28, 1))])
def test_patch_embedding_is_the_strided_convolution(patch, shape):
    x = _images(shape)
    layer = PatchEmbedding(5, patch)
    params = _random_params(layer, x)
    got = jax.jit(layer.apply)({"params": params}, x)
    conv = jax.lax.conv_general_dilated(
        x, params["kernel"], (patch, patch), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    rows, cols = shape[1] // patch, shape[2] // patch
    assert got.shape == (shape[0], rows * cols, 5)
    np.testing.assert_allclose(got, (conv + params["bias"]).reshape(got.shape), atol=1e-5)
    assert patchify(x, patch).shape == (shape[0], rows, cols, patch, patch, shape[3])
    with pytest.raises(ValueError, match="does not split"):
        patchify(x, 5)


def test_2d_sinusoidal_positions_encode_row_and_column():
    table = np.asarray(sinusoidal_2d(3, 5, 8)).reshape(3, 5, 8)
    rows, cols = table[..., :4], table[..., 4:]
    assert (rows == rows[:, :1]).all() and (cols == cols[:1]).all()  # one axis each
    np.testing.assert_allclose(rows[:, 0], sinusoidal(jnp.arange(3), 4), atol=1e-6)
    np.testing.assert_allclose(cols[0], sinusoidal(jnp.arange(5), 4), atol=1e-6)
    assert len({tuple(v) for v in table.reshape(15, 8).round(5)}) == 15  # every patch differs
    np.testing.assert_allclose(torch_vit.sinusoidal_2d(3, 5, 8), table.reshape(15, 8), atol=1e-6)


# ---- the model: sizes ----


def _expected_count(pool: str, positions: str, patch=7, channels=1, tokens=16) -> int:
    block = 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + 2 * D + (D * M + M) + (M * D + D)
    count = (patch * patch * channels * D + D) + L * block + 2 * D + (D * K + K)
    if pool == "cls":
        count, tokens = count + D, tokens + 1
    return count + (tokens * D if positions == "learned" else 0)


@pytest.mark.parametrize("pool", vit.POOLS)
@pytest.mark.parametrize("positions", vit.POSITIONS)
def test_shapes_parameter_counts_and_logical_names(pool, positions):
    model = get_model("vit", **TINY, pool=pool, positions=positions)
    abstract = jax.eval_shape(model.init, jax.random.key(0), _images())
    params = nn.meta.unbox(abstract["params"])
    assert sum(p.size for p in jax.tree.leaves(params)) == _expected_count(pool, positions)
    assert ("cls_token" in params) == (pool == "cls")
    assert ("pos_embedding" in params) == (positions == "learned")
    specs = nn.get_partition_spec(abstract["params"])
    for spec, leaf in zip(
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)), jax.tree.leaves(params)
    ):
        assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), spec
    assert specs["h_0"]["mlp"]["fc"]["kernel"] == P("embed", "mlp")
    assert specs["patch_embed"]["kernel"][-1] == "embed"
    logits = jax.eval_shape(model.apply, abstract, _images())
    assert logits.shape == (3, K) and logits.dtype == jnp.float32
    assert model.num_tokens(IMAGES[1:]) == 16 + (pool == "cls")


def test_conv_stem_reaches_the_patch_grid_by_stride_2_convolutions():
    """stem="conv" (a hybrid ViT: Xiao et al. 2021's convolutional stem): log2(patch_size)
    stride-2 3x3 conv + batch norm + ReLU, widths doubling up to embed_dim, then a 1x1
    projection; the same tokens, a 7x7 receptive field each instead of a 4x4 patch."""
    model = vit.Model(**{**TINY, "patch_size": 4}, pool="mean", stem="conv")
    assert model.stem_channels == (D // 2, D)
    abstract = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), _images()))
    params = abstract["params"]
    assert params["stem_0"]["conv"]["kernel"].shape == (3, 3, 1, D // 2)
    assert params["stem_1"]["conv"]["kernel"].shape == (3, 3, D // 2, D)
    assert params["patch_embed"]["kernel"].shape == (1, 1, D, D)
    stem = 9 * D // 2 + 2 * D // 2 + 9 * D // 2 * D + 2 * D + D * D + D
    patch = vit.Model(**{**TINY, "patch_size": 4}, pool="mean")
    counts = {m: sum(parameter_counts(m, IMAGES).values()) for m in (model, patch)}
    assert counts[model] - counts[patch] == stem - (16 * D + D)
    assert set(abstract["batch_stats"]) == {"stem_0", "stem_1"}
    assert model.num_tokens(IMAGES[1:]) == 49
    logits = jax.eval_shape(model.apply, abstract, _images())
    assert logits.shape == (3, K)
    fields = receptive_fields(vit.layer_stack(model), 28)
    assert [(f.size, f.receptive_field) for f in fields] == [(14, 3), (7, 7), (7, 7)]
    patch_field = receptive_fields(vit.layer_stack(patch), 28)[-1]
    assert (patch_field.size, patch_field.receptive_field) == (7, 4)
    # Matmul FLOPs: the two 3x3 convs at 14x14 and 7x7 added, the 1x1 costs the 4x4 patch's.
    stem_flops = 2 * (14 * 14 * 9 * 1 * D // 2 + 7 * 7 * 9 * D // 2 * D)
    assert vit.forward_flops_per_example(model, IMAGES[1:]) == pytest.approx(
        vit.forward_flops_per_example(patch, IMAGES[1:]) + stem_flops
    )
    with pytest.raises(ConfigError, match="power of 2.*got 7"):
        vit.Model(**TINY, stem="conv")
    with pytest.raises(ConfigError, match="model.stem"):
        check_config({"name": "vit", "stem": "resnet"})


def test_vit_b16_has_the_published_parameter_count():
    model = vit.Model(
        num_outputs=1000, patch_size=16, num_layers=12, embed_dim=768, num_heads=12, mlp_dim=3072
    )
    counts = parameter_counts(model, (1, 224, 224, 3))  # eval_shape: nothing allocated
    assert sum(counts.values()) == 86_567_656
    assert counts["pos_embedding"] == 197 * 768 and counts["h_0"] == 7_087_872


def test_pooling_reads_the_class_token_or_the_mean_of_the_patches():
    x = _images()
    for pool in vit.POOLS:
        model = vit.Model(**TINY, pool=pool)
        params = _random_params(model, x)
        apply = functools.partial(
            model.apply,
            capture_intermediates=lambda m, method: m.name == "ln_f",
            mutable=["intermediates"],
        )
        logits, captured = jax.jit(apply)({"params": params}, x)
        tokens = captured["intermediates"]["ln_f"]["__call__"][0]
        assert tokens.shape == (3, model.num_tokens(x.shape[1:]), D)
        pooled = tokens[:, 0] if pool == "cls" else tokens.mean(1)
        head = params["head"]
        np.testing.assert_allclose(logits, pooled @ head["kernel"] + head["bias"], atol=1e-5)


def test_bad_fields_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        vit.Model(embed_dim=30, num_heads=4)
    with pytest.raises(ConfigError, match="vit.pool='max' is not allowed.*'cls', 'mean'"):
        vit.Model(pool="max")
    # Built in Python, a module meets the ranges its config would be held to.
    with pytest.raises(ConfigError, match=r"vit.drop_path=1.0 .*\[0, 1\)"):
        vit.Model(drop_path=1.0)
    with pytest.raises(ConfigError, match="patch_size=5"):
        jax.eval_shape(vit.Model(patch_size=5).init, jax.random.key(0), _images())
    with pytest.raises(ConfigError, match="model.positions"):
        check_config({"name": "vit", "positions": "rope"})
    with pytest.raises(ConfigError, match="unknown config key 'model.depth'"):
        check_config({"name": "vit", "depth": 6})


def test_dropout_and_stochastic_depth_only_in_training():
    x = _images()
    variables = {"params": _random_params(vit.Model(**TINY), x)}
    plain = jax.jit(vit.Model(**TINY).apply)(variables, x)
    apply = jax.jit(
        vit.Model(**TINY, dropout=0.1, attention_dropout=0.1, drop_path=0.5).apply,
        static_argnames="train",
    )
    np.testing.assert_allclose(apply(variables, x), plain, atol=1e-6)
    a, b = (apply(variables, x, train=True, rngs={"dropout": jax.random.key(s)}) for s in (0, 1))
    assert not np.allclose(a, b) and not np.allclose(a, plain)


def test_drop_path_drops_whole_examples():
    dropped = jax.jit(vit.drop_path, static_argnums=1)(jnp.ones((64, 2, 3)), 0.5, jax.random.key(0))
    assert set(np.unique(dropped)) == {0.0, 2.0}  # kept ones scaled by 1 / (1 - rate)
    assert (dropped == dropped[:, :1, :1]).all() and 16 < (dropped[:, 0, 0] == 0).sum() < 48


# ---- parity with PyTorch ----


def test_block_matches_pytorch_with_gradients():
    x = jax.random.normal(jax.random.key(2), (3, 17, D))
    block = vit.Block(H, M)
    params = _random_params(block, x)
    reference = torch_vit.Block(D, H, M, 0.0, 0.0, 0.0, 1e-6)
    torch_vit.copy_parameters(reference, torch_vit.block_state_dict(params))
    g = jax.random.normal(jax.random.key(3), x.shape)

    def value_and_grads(p, x):
        y, vjp = jax.vjp(lambda p, x: block.apply({"params": p}, x), p, x)
        return y, vjp(g)

    y, (grads, x_grad) = jax.jit(value_and_grads)(params, x)
    x_t = torch.tensor(np.array(x), requires_grad=True)
    y_t = reference(x_t)
    (y_t * torch.from_numpy(np.array(g))).sum().backward()
    np.testing.assert_allclose(y_t.detach().numpy(), y, atol=1e-5)
    np.testing.assert_allclose(x_t.grad.numpy(), x_grad, atol=1e-5)
    expected = torch_vit.block_state_dict(jax.tree.map(np.asarray, grads))
    for name, p in reference.named_parameters():
        np.testing.assert_allclose(
            p.grad.numpy(), expected[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize(
    "pool, positions, patch, stem",
    [
        ("cls", "learned", 7, "patch"),
        ("mean", "sinusoidal", 4, "patch"),
        ("cls", "learned", 4, "conv"),
    ],
)
def test_whole_vit_matches_pytorch_in_training(pool, positions, patch, stem):
    """Logits and every gradient of a training step; the conv stem's batch norm normalises with
    the batch's statistics and moves its running mean as PyTorch's (momentum 0.1 there, 0.9 of
    the old average here; PyTorch's running variance is the unbiased one, so it is not compared)."""
    x = _images()
    model = vit.Model(**{**TINY, "patch_size": patch}, pool=pool, positions=positions, stem=stem)
    params = _random_params(model, x)
    stats = nn.meta.unbox(model.init(jax.random.key(0), x)).get("batch_stats", {})
    net = _torch_vit(model, params, stats).train()
    labels = jnp.array([1, 4, 7])

    def loss(p):
        logits, updated = model.apply(
            {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        log_p = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(log_p, labels[:, None], 1).mean(), (logits, updated)

    grads, (logits, updated) = jax.jit(jax.grad(loss, has_aux=True))(params)
    logits_t = net(_nchw(x))
    torch.nn.functional.cross_entropy(
        logits_t, torch.tensor(np.array(labels), dtype=torch.int64)
    ).backward()
    np.testing.assert_allclose(logits_t.detach().numpy(), logits, atol=1e-5)
    expected = torch_vit.dlx_state_dict(jax.tree.map(np.asarray, grads), L)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(
            p.grad.numpy(), expected[name], rtol=1e-5, atol=1e-5, err_msg=name
        )
    for i, features in enumerate(model.stem_channels):
        running_mean = updated["batch_stats"][f"stem_{i}"]["bn"]["mean"]
        assert running_mean.shape == (features,) and float(np.abs(running_mean).max()) > 0
        np.testing.assert_allclose(
            net.stem[3 * i + 1].running_mean.numpy(), running_mean, atol=1e-6
        )


def test_conv_stem_in_eval_reads_the_running_averages_as_pytorch():
    x = _images()
    model = vit.Model(**{**TINY, "patch_size": 4}, stem="conv")
    params = _random_params(model, x)
    rng = np.random.default_rng(5)
    stats = {
        f"stem_{i}": {"bn": {"mean": rng.normal(0, 0.3, c), "var": rng.uniform(0.5, 2.0, c)}}
        for i, c in enumerate(model.stem_channels)
    }
    stats = jax.tree.map(lambda a: a.astype(np.float32), stats)
    logits = jax.jit(model.apply)({"params": params, "batch_stats": stats}, x)
    net = _torch_vit(model, params, stats).eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(_nchw(x)).numpy(), logits, atol=1e-5)


# ---- attention maps ----


def test_attention_maps_are_pytorchs_attention_weights():
    x = _images()
    model = vit.Model(**TINY)
    params = _random_params(model, x)
    maps = jax.jit(vit.attention_maps, static_argnums=0)(model, {"params": params}, x)
    tokens = model.num_tokens(x.shape[1:])
    assert maps.shape == (L, 3, H, tokens, tokens)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert float(maps.std(-1).min()) > 0  # not uniform: the random weights make them differ
    net = _torch_vit(model, params).eval()
    np.testing.assert_allclose(net.attention_maps(_nchw(x)).numpy(), maps, atol=1e-5)


# ---- sharding ----


def test_runs_sharded_on_data_fsdp_model_mesh_and_matches_one_device():
    mesh = Mesh(
        np.array(jax.devices()[:8]).reshape(2, 2, 2),
        ("data", "fsdp", "model"),
        axis_types=(AxisType.Auto,) * 3,
    )
    x = _images((8, 28, 28, 1))
    model = vit.Model(**TINY)
    variables = {"params": _random_params(model, x)}
    expected = jax.jit(model.apply)(variables, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    placed = jax.device_put(variables, logical_shardings(abstract, mesh, DEFAULT_RULES))
    assert placed["params"]["h_0"]["mlp"]["fc"]["kernel"].sharding.spec == P("fsdp", "model")
    assert placed["params"]["h_0"]["attn"]["qkv"]["kernel"].sharding.spec[2] == "model"
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = jax.jit(model.apply)(
            placed, jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
        )
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


# ---- end to end ----


def test_test_config_trains_and_the_attention_study_draws_its_maps(tmp_path):
    from experiments import vit_attention

    summary = train("configs/fashion_vit.py:test", tmp_path)
    assert summary["steps"] == 6 and summary["device_count"] == 8
    assert np.isfinite(summary["final_eval"]["loss"]) and 0 <= summary["final_eval"]["accuracy"]
    with contextlib.chdir(REPO):
        figure = vit_attention.main(["--workdir", str(tmp_path), "--images", "3"])
    assert figure == tmp_path / "plots" / "attention_maps.png"
    assert figure.stat().st_size > 10_000


@pytest.mark.parametrize("cls", [True, False])
def test_attention_study_reads_what_the_pooled_token_attends_to(cls):
    from experiments import vit_attention

    tokens = 5 if cls else 4  # 4 patches, plus the class token when there is one
    attention = np.random.default_rng(0).dirichlet(np.ones(tokens), size=(2, 3, tokens))
    row = vit_attention.pooled_row(attention, cls)  # [batch, heads, patches]
    assert row.shape == (2, 3, 4)
    expected = attention[:, :, 0, 1:] if cls else attention.mean(axis=2)
    np.testing.assert_allclose(row, expected)
    rolled = vit_attention.rollout(attention[None].repeat(2, axis=0))  # 2 blocks
    assert rolled.shape[-2:] == (tokens, tokens)
    np.testing.assert_allclose(rolled.sum(-1), 1.0, rtol=1e-6)  # rows stay distributions
