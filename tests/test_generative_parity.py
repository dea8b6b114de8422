"""The PyTorch references of bench/torch_generative.py are the dlx generative models: with the
same weights they give the same outputs (DCGAN generator in both batch-norm modes and
discriminator, U-Net, VAE); `upsample_conv`, the resize-convolution dlx runs, equals upsampling
followed by the convolution, and the U-Net's GroupNorm equals flax's, values and gradients."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from bench import torch_generative as reference  # noqa: E402
from dlx.layers import initializers  # noqa: E402
from dlx.layers.images import conv, upsample, upsample_conv  # noqa: E402
from dlx.models import autoencoder, dcgan, unet  # noqa: E402
from dlx.tasks import diffusion  # noqa: E402


def _random_variables(model: nn.Module, *args, seed: int = 0) -> dict:
    """Variables of `model`'s structure, every one random (none left at a zero or unit init):
    kernels with std 1/sqrt(fan-in), vectors around 0 (biases) or 1 (norm scales, variances)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if leaf.ndim > 1:
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
        center = 1.0 if name in ("scale", "var") else 0.0
        return center + rng.uniform(-0.5, 0.5, leaf.shape)

    shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), *args))
    return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), shapes)


def _nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


class _ResizeConv(nn.Module):
    factor: int
    kernel: int
    fused: bool

    @nn.compact
    def __call__(self, x):
        if self.fused:
            return upsample_conv(6, factor=self.factor, kernel=self.kernel)(x)
        return conv(6, kernel=self.kernel)(upsample(x, self.factor))


@pytest.mark.parametrize("factor,kernel,shape", [(2, 3, (7, 6)), (3, 5, (3, 4))])
def test_upsample_conv_equals_upsample_then_conv(factor, kernel, shape):
    x = jax.random.normal(jax.random.key(0), (2, *shape, 5))
    plain, fused = _ResizeConv(factor, kernel, False), _ResizeConv(factor, kernel, True)
    params = _random_variables(plain, x)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, _random_variables(fused, x))
    g = np.random.default_rng(3).normal(size=(2, factor * shape[0], factor * shape[1], 6))

    def value_and_grads(module):
        y, vjp = jax.vjp(module.apply, params, x)
        return y, vjp(g.astype(y.dtype))

    (expected, expected_grads), (got, grads) = (
        jax.jit(value_and_grads, static_argnums=0)(m) for m in (plain, fused)
    )
    assert got.shape == expected.shape == g.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(expected_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_unet_group_norm_equals_flax_group_norm():
    """The U-Net's GroupNorm (two-stage statistics, hand-written gradient) gives nn.GroupNorm's
    values and gradients, with the same parameters."""
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 16)) * 3 + 1
    ours, flax_norm = unet.GroupNorm(4), nn.GroupNorm(num_groups=4, epsilon=1e-5)
    params = _random_variables(flax_norm, x)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, _random_variables(ours, x))
    g = jax.random.normal(jax.random.key(1), x.shape)
    values, grads = [], []
    for module in (flax_norm, ours):
        loss = lambda p, x, m=module: jnp.sum(m.apply(p, x) * g)  # noqa: E731
        values.append(jax.jit(module.apply)(params, x))
        grads.append(jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x))
    np.testing.assert_allclose(values[1], values[0], atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_dcgan_reference_has_the_same_outputs():
    model = dcgan.Model(latent_dim=8, width=8)
    z = jax.random.normal(jax.random.key(1), (4, 8))
    x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1)) * 2 - 1
    variables = _random_variables(model, z, x)
    params, stats = variables["params"], variables["batch_stats"]
    generator = reference.Generator(8, 8, (28, 28, 1))
    discriminator = reference.Discriminator(8, (28, 28, 1))
    numpy = reference.jax_to_numpy
    reference.load_dlx(
        generator,
        numpy(params["generator"]),
        numpy(stats["generator"]),
        generator.dlx_permutations(),
    )
    reference.load_dlx(
        discriminator, numpy(params["discriminator"]), None, discriminator.dlx_permutations()
    )
    assert sum(p.numel() for p in generator.parameters()) + sum(
        p.numel() for p in discriminator.parameters()
    ) == sum(x.size for x in jax.tree.leaves(params))
    both = variables
    z_t = torch.from_numpy(np.array(z))

    generate = jax.jit(
        functools.partial(model.apply, method="generate", mutable=["batch_stats"]),
        static_argnames="train",
    )
    generator.eval()  # running averages
    images, _ = generate(both, z, train=False)
    np.testing.assert_allclose(_nhwc(generator(z_t)), images, atol=2e-5)
    generator.train()  # batch statistics
    images, _ = generate(both, z, train=True)
    np.testing.assert_allclose(_nhwc(generator(z_t)), images, atol=2e-5)
    logits = jax.jit(functools.partial(model.apply, method="discriminate"))(both, x)
    np.testing.assert_allclose(discriminator(_nchw(x)).detach().numpy(), logits, atol=2e-5)


def test_unet_reference_has_the_same_outputs():
    # two levels on 16x16: the stride-2 conv pads (0, 1); attention at 8x8
    model = unet.Model(
        channels=(8, 16), attention_levels=(1,), time_dim=16, groups=4, image_shape=(16, 16, 1)
    )
    x = jax.random.normal(jax.random.key(5), (3, 16, 16, 1))
    t = jnp.array([0, 37, 999])
    params = _random_variables(model, x, t)["params"]
    net = reference.UNet((8, 16), 1, (1,), 16, 4, 0.0, (16, 16, 1))
    reference.load_dlx(net, reference.jax_to_numpy(params))
    assert sum(p.numel() for p in net.parameters()) == sum(x.size for x in jax.tree.leaves(params))
    got = _nhwc(net(_nchw(x), torch.from_numpy(np.array(t))))
    np.testing.assert_allclose(got, jax.jit(model.apply)({"params": params}, x, t), atol=3e-5)
    for kind in ("linear", "cosine"):
        np.testing.assert_array_equal(
            reference.noise_schedule(kind, 50), diffusion.noise_schedule(kind, 50)
        )


def test_vae_reference_has_the_same_outputs():
    model = autoencoder.Model(kind="dense", latent_dim=4, hidden=(16, 8), variational=True)
    x = jax.random.uniform(jax.random.key(5), (3, 28, 28, 1))
    params = _random_variables(model, x)["params"]
    vae = reference.DenseVAE(4, (16, 8), (28, 28, 1))
    reference.load_dlx(vae, reference.jax_to_numpy(params))
    apply = jax.jit(model.apply, static_argnames="method")
    mean, log_variance = apply({"params": params}, x, method="encode")
    mean_t, log_variance_t = vae.encode(torch.from_numpy(np.array(x)))
    np.testing.assert_allclose(mean_t.detach().numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(log_variance_t.detach().numpy(), log_variance, atol=1e-5)
    np.testing.assert_allclose(
        vae.decode(mean_t).detach().numpy(),
        apply({"params": params}, mean, method="decode"),
        atol=1e-5,
    )


def test_reference_initializers_draw_like_dlx():
    """`--init torch`: each kernel is drawn like dlx's initializer of the same name draws it
    (truncated normal, variance 2 or 1 over fan-in), biases zero."""
    generator = reference.Generator(64, 64, (28, 28, 1))
    reference.init_like_dlx(generator, seed=0)
    layers = [
        (path, layer, init)
        for path, layer, init in generator.leaves()
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert len(layers) == 4
    weights = [layer.weight.detach().numpy() for _, layer, _ in layers]
    dlx_shapes = [w.T.shape if w.ndim == 2 else w.transpose(2, 3, 1, 0).shape for w in weights]
    dlx_kernels = jax.jit(
        lambda key: [
            initializers.get(init)(key, shape) for (_, _, init), shape in zip(layers, dlx_shapes)
        ]
    )(jax.random.key(0))
    for (path, layer, _), weight, dlx_kernel in zip(layers, weights, dlx_kernels):
        dlx_kernel = np.asarray(dlx_kernel)
        assert 0.9 < weight.std() / dlx_kernel.std() < 1.1, path
        assert 0.95 < np.abs(weight).max() / np.abs(dlx_kernel).max() < 1.05, path  # truncation
        assert layer.bias is None or not layer.bias.detach().numpy().any()
