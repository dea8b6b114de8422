"""PyTorch references of dlx's generative models, trained as dlx trains them: DCGAN
(`dlx.models.dcgan` + `dlx.tasks.gan`), the VAE (`dlx.models.autoencoder`, variational, +
`dlx.tasks.vae`) and DDPM (`dlx.models.unet` + `dlx.tasks.diffusion`, DDIM sampling).

    .venv/bin/python bench/torch_generative.py dcgan            # the config's full budget
    .venv/bin/python bench/torch_generative.py vae --steps 20 --num-samples 100   # a smoke run
    .venv/bin/python bench/torch_generative.py ddpm --device cuda  # the same code on a GPU

Every size and hyperparameter comes from the dlx config (configs/fashion_dcgan.py, fashion_vae.py,
fashion_ddpm.py; `--config` picks another file or variant) and the defaults of the dlx model and
task it names; the step budget is the config's (`--steps` overrides it). Batches are dlx's own train
iterator (the same images in the same order as a dlx run of the config). `--init dlx` (the
default) starts from the dlx run's initial weights, copied; `--init torch` draws them with this
file's initializers, which follow dlx's (truncated-normal He / LeCun fan-in, zero biases).

Written the way a PyTorch user would: `torch.nn` in NCHW, `F.interpolate` for nearest upsampling,
`torch.optim.Adam`, `clip_grad_norm_`, `F.scaled_dot_product_attention`. Where dlx's layout differs
(the flattened feature maps of DCGAN are NHWC in dlx) the weight converter permutes, not the model.
Kept from dlx because they change the numbers: SAME padding of a stride-2 3x3 conv on an even size
pads (0, 1), not (1, 1); the generator's forward pass that makes the discriminator's fakes does not
update the batch-norm running statistics; the generator step computes no discriminator gradients.

Writes to --out (default runs/torch_<model>): `samples.npy` (float32 [N, H, W, C] in [0, 1],
N = --num-samples; DDPM: DDIM from the EMA weights, cropped to the data's size), `metrics.json`
(the train losses every --log-every steps, train seconds, the test-split evaluation dlx's
evaluator reports: DCGAN discriminator accuracy on test images vs as many samples, VAE negative
ELBO and IWAE NLL in nats, DDPM denoising loss of the EMA weights). Untested on a GPU here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "dcgan": "configs/fashion_dcgan.py",
    "vae": "configs/fashion_vae.py",
    "ddpm": "configs/fashion_ddpm.py",
}
TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


# ------------------------------------------------------------------------------------------------
# Layers, their dlx names, initialization and the weight converter
# ------------------------------------------------------------------------------------------------
class DlxNamed(nn.Module):
    """A module whose leaf layers are registered under their dlx (flax) parameter paths, with
    the initializer dlx gives them, so weights can be drawn like dlx's or copied from dlx."""

    def __init__(self):
        super().__init__()
        self.dlx_layers: dict[str, tuple[nn.Module, str]] = {}
        self._counts: dict[str, int] = {}

    def named(self, kind: str, layer: nn.Module, init: str = "", name: str = "") -> nn.Module:
        """Registers `layer` as the next dlx `kind` (Conv, Dense, GroupNorm ...) or as `name`."""
        if not name:
            name = f"{kind}_{self._counts.get(kind, 0)}"
            self._counts[kind] = self._counts.get(kind, 0) + 1
        self.dlx_layers[name] = (layer, init)
        return layer

    def child(self, kind: str, module: DlxNamed) -> DlxNamed:
        """Registers a composite child (a dlx submodule such as ResidualBlock_3)."""
        return self.named(kind, module)

    def leaves(self, prefix: str = "") -> Iterator[tuple[str, nn.Module, str]]:
        for name, (layer, init) in self.dlx_layers.items():
            if isinstance(layer, DlxNamed):
                yield from layer.leaves(f"{prefix}{name}/")
            else:
                yield f"{prefix}{name}", layer, init


def init_like_dlx(module: DlxNamed, seed: int = 0) -> None:
    """dlx's initializers: kernels truncated-normal with variance scale / fan_in (He: 2, LeCun:
    1), biases zero, norm scales one; "zeros" kernels zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer, init in module.leaves():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                scale = {"he_normal": 2.0, "lecun_normal": 1.0, "zeros": 0.0}[init]
                std = math.sqrt(scale / fan_in) / TRUNCATED_NORMAL_STD
                layer.weight.copy_(
                    torch.nn.init.trunc_normal_(
                        torch.empty_like(layer.weight), 0.0, 1.0, -2.0, 2.0, generator=generator
                    )
                    * std
                )
                if layer.bias is not None:
                    layer.bias.zero_()
            else:  # batch / group norm
                layer.reset_parameters()


def nhwc_to_nchw_order(height: int, width: int, channels: int) -> np.ndarray:
    """Index i of a flattened NCHW map holds element order[i] of the flattened NHWC map."""
    return (
        np.arange(height * width * channels)
        .reshape(height, width, channels)
        .transpose(2, 0, 1)
        .ravel()
    )


def load_dlx(
    module: DlxNamed,
    params: dict,
    batch_stats: dict | None = None,
    permutations: dict[str, tuple[str, np.ndarray]] | None = None,
) -> None:
    """Copies dlx parameters (a nested dict of arrays, flax layout) into `module`.
    `permutations[name] = ("in" | "out", order)` reorders that layer's features (NHWC flattening
    in dlx, NCHW here)."""

    def lookup(tree: dict, path: str) -> dict:
        for key in path.split("/"):
            tree = tree[key]
        return tree

    permutations = permutations or {}
    with torch.no_grad():
        for path, layer, _ in module.leaves():
            p = {k: np.asarray(v, np.float32) for k, v in lookup(params, path).items()}
            side, order = permutations.get(path, ("", None))
            if isinstance(layer, nn.Conv2d):
                weights = {"weight": p["kernel"].transpose(3, 2, 0, 1), "bias": p.get("bias")}
            elif isinstance(layer, nn.Linear):
                kernel = p["kernel"]
                if side == "in":
                    kernel = kernel[order]
                bias = p.get("bias")
                if side == "out":
                    kernel, bias = kernel[:, order], None if bias is None else bias[order]
                weights = {"weight": kernel.T, "bias": bias}
            else:
                weights = {"weight": p["scale"], "bias": p["bias"]}
                if batch_stats is not None and isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    stats = {
                        k: np.asarray(v, np.float32) for k, v in lookup(batch_stats, path).items()
                    }
                    weights["running_mean"], weights["running_var"] = stats["mean"], stats["var"]
                if order is not None:
                    weights = {k: v[order] for k, v in weights.items()}
            for name, value in weights.items():
                if value is not None:
                    target = getattr(layer, name)
                    if tuple(target.shape) != value.shape:
                        raise ValueError(
                            f"{path}.{name}: torch {tuple(target.shape)}, dlx {value.shape}"
                        )
                    target.copy_(torch.tensor(value))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of XLA's SAME for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A convolution padded like flax's padding="SAME" for inputs of `input_size`: asymmetric for
    a stride-2 3x3 convolution of an even size, which torch's `padding=` cannot express."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        input_size: int = 0,
        bias: bool = True,
    ):
        low, high = (
            same_padding(input_size, kernel, stride)
            if stride > 1
            else ((kernel - 1) // 2, kernel // 2)
        )
        super().__init__(
            in_channels, out_channels, kernel, stride, padding=low if low == high else 0, bias=bias
        )
        self.extra_pad = (0, 0, 0, 0) if low == high else (low, high, low, high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.extra_pad) if any(self.extra_pad) else x)


def upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


# ------------------------------------------------------------------------------------------------
# DCGAN
# ------------------------------------------------------------------------------------------------
class Generator(DlxNamed):
    def __init__(self, latent_dim: int, width: int, image_shape: Sequence[int]):
        super().__init__()
        height, width_px, channels = image_shape
        self.start = (2 * width, height // 4, width_px // 4)
        features = math.prod(self.start)
        self.project = self.named("Dense", nn.Linear(latent_dim, features, bias=False), "he_normal")
        self.project_norm = self.named(
            "BatchNorm", nn.BatchNorm1d(features, eps=1e-5, momentum=0.1)
        )
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        for c_in, c_out in ((2 * width, 2 * width), (2 * width, width)):
            self.convs.append(
                self.named("Conv", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), "he_normal")
            )
            self.norms.append(
                self.named("BatchNorm", nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))
            )
        self.to_image = self.named("Conv", nn.Conv2d(width, channels, 3, padding=1), "lecun_normal")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.project_norm(self.project(z))).view(z.shape[0], *self.start)
        for conv, norm in zip(self.convs, self.norms):
            h = F.relu(norm(conv(upsample(h))))
        return torch.tanh(self.to_image(h))

    def dlx_permutations(self) -> dict[str, tuple[str, np.ndarray]]:
        channels, height, width = self.start
        order = nhwc_to_nchw_order(height, width, channels)
        return {"Dense_0": ("out", order), "BatchNorm_0": ("out", order)}


class Discriminator(DlxNamed):
    def __init__(self, width: int, image_shape: Sequence[int]):
        super().__init__()
        height, width_px, channels = image_shape
        self.convs = nn.ModuleList(
            [
                self.named("Conv", SameConv2d(channels, width, 4, 2, height), "he_normal"),
                self.named(
                    "Conv", SameConv2d(width, 2 * width, 4, 2, -(-height // 2)), "he_normal"
                ),
            ]
        )
        self.final = (2 * width, -(-height // 4), -(-width_px // 4))
        self.logit = self.named("Dense", nn.Linear(math.prod(self.final), 1), "lecun_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return self.logit(h.flatten(1))[:, 0]

    def dlx_permutations(self) -> dict[str, tuple[str, np.ndarray]]:
        channels, height, width = self.final
        return {"Dense_0": ("in", nhwc_to_nchw_order(height, width, channels))}


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Batch norms normalise with batch statistics but leave their running averages alone
    (dlx's discriminator step generates its fakes so: train mode, statistics discarded)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


class DcganTrainer:
    """One train step = dlx.tasks.gan's: the discriminator on a real batch and fresh fakes, then
    the generator's non-saturating loss on new noise through the updated discriminator."""

    def __init__(self, config, m: dict[str, Any], device: str):
        self.latent_dim, self.device = m["latent_dim"], device
        self.generator = Generator(m["latent_dim"], m["width"], m["image_shape"]).to(device)
        self.discriminator = Discriminator(m["width"], m["image_shape"]).to(device)
        self.g_opt = adam(self.generator, config.gan.generator_optimizer)
        self.d_opt = adam(self.discriminator, config.gan.discriminator_optimizer)
        self.generator.train()

    def modules(self) -> dict[str, DlxNamed]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def load_dlx_state(self, state) -> None:
        load_dlx(
            self.generator, state.generator, state.batch_stats, self.generator.dlx_permutations()
        )
        load_dlx(
            self.discriminator, state.discriminator, None, self.discriminator.dlx_permutations()
        )

    def step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        real = images * 2.0 - 1.0
        count = real.shape[0]
        ones = torch.ones(count, device=self.device)
        zeros = torch.zeros(count, device=self.device)
        with torch.no_grad(), frozen_running_stats(self.generator):
            fake = self.generator(torch.randn(count, self.latent_dim, device=self.device))
        d_loss = F.binary_cross_entropy_with_logits(
            self.discriminator(real), ones
        ) + F.binary_cross_entropy_with_logits(self.discriminator(fake), zeros)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()

        self.discriminator.requires_grad_(False)  # the generator step needs only input gradients
        fake = self.generator(torch.randn(count, self.latent_dim, device=self.device))
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss, "g_loss": g_loss}

    @torch.no_grad()
    def generate(self, count: int) -> torch.Tensor:
        """[count, C, H, W] in [-1, 1], batch norms on their running averages."""
        self.generator.eval()
        images = self.generator(torch.randn(count, self.latent_dim, device=self.device))
        self.generator.train()
        return images

    def sample(self, count: int) -> torch.Tensor:
        return ((self.generate(count) + 1) / 2).permute(0, 2, 3, 1)

    @torch.no_grad()
    def evaluate(self, test_images: torch.Tensor) -> dict[str, float]:
        """dlx.tasks.gan's eval: the discriminator on the test images and on as many samples."""
        real = torch.sigmoid(self.discriminator(test_images * 2 - 1))
        fake = torch.sigmoid(self.discriminator(self.generate(len(test_images))))
        correct = torch.cat([real > 0.5, fake < 0.5]).float()
        return {
            "d_accuracy": correct.mean().item(),
            "d_real": real.mean().item(),
            "d_fake": fake.mean().item(),
        }


# ------------------------------------------------------------------------------------------------
# VAE (the dense variational autoencoder)
# ------------------------------------------------------------------------------------------------
class DenseVAE(DlxNamed):
    def __init__(self, latent_dim: int, hidden: Sequence[int], image_shape: Sequence[int]):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(image_shape)
        widths = [pixels, *hidden]
        self.encoder = nn.ModuleList(
            [
                self.named("", nn.Linear(a, b), "he_normal", f"encoder_layers_{i}")
                for i, (a, b) in enumerate(zip(widths, widths[1:]))
            ]
        )
        self.encoder_head = self.named(
            "", nn.Linear(hidden[-1], 2 * latent_dim), "lecun_normal", "encoder_head"
        )
        widths = [latent_dim, *reversed(hidden)]
        self.decoder = nn.ModuleList(
            [
                self.named("", nn.Linear(a, b), "he_normal", f"decoder_layers_{i}")
                for i, (a, b) in enumerate(zip(widths, widths[1:]))
            ]
        )
        self.decoder_head = self.named(
            "", nn.Linear(hidden[0], pixels), "lecun_normal", "decoder_head"
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)  # dlx flattens NHWC; images stay NHWC on this side
        for layer in self.encoder:
            h = F.relu(layer(h))
        return self.encoder_head(h).chunk(2, dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.decoder:
            h = F.relu(layer(h))
        return self.decoder_head(h).view(z.shape[0], *self.image_shape)


def gaussian_kl(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    return 0.5 * (log_variance.exp() + mean**2 - 1.0 - log_variance).sum(-1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


class VaeTrainer:
    """dlx.tasks.vae's step: pixels binarized afresh, one z from q(z|x), Bernoulli NLL + beta *
    KL with beta ramping linearly to 1 over vae.kl_warmup_steps."""

    def __init__(self, config, m: dict[str, Any], device: str):
        if m["kind"] != "dense" or m["activation"] != "relu":
            raise ValueError("the PyTorch VAE reference is the dense ReLU autoencoder only")
        self.device, self.latent_dim = device, m["latent_dim"]
        self.warmup, self.importance_samples = (
            config.vae.kl_warmup_steps,
            config.vae.importance_samples,
        )
        self.model = DenseVAE(m["latent_dim"], m["hidden"], m["image_shape"]).to(device)
        self.opt = adam(self.model, config.optimizer)

    def modules(self) -> dict[str, DlxNamed]:
        return {"model": self.model}

    def load_dlx_state(self, state) -> None:
        load_dlx(self.model, state.params)

    def step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        x = torch.bernoulli(images)
        mean, log_variance = self.model.encode(x)
        z = mean + (0.5 * log_variance).exp() * torch.randn_like(mean)
        nll, kl = bernoulli_nll(self.model.decode(z), x), gaussian_kl(mean, log_variance)
        beta = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        loss = nll.mean() + beta * kl.mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss, "negative_elbo": (nll + kl).mean(), "kl": kl.mean()}

    @torch.no_grad()
    def sample(self, count: int) -> torch.Tensor:
        z = torch.randn(count, self.latent_dim, device=self.device)
        return torch.sigmoid(self.model.decode(z))  # Bernoulli means, as dlx's samples

    @torch.no_grad()
    def evaluate(self, test_images: torch.Tensor) -> dict[str, float]:
        """Negative ELBO (one z) and the IWAE NLL with vae.importance_samples samples, in nats
        per binarized test image."""
        sums = {"negative_elbo": 0.0, "nll": 0.0}
        for images in test_images.split(1000):
            x = torch.bernoulli(images)
            mean, log_variance = self.model.encode(x)
            std = (0.5 * log_variance).exp()
            z = mean + std * torch.randn_like(mean)
            elbo = bernoulli_nll(self.model.decode(z), x) + gaussian_kl(mean, log_variance)
            sums["negative_elbo"] += elbo.sum().item()
            k = self.importance_samples
            if k:
                log_weights = []
                for _ in range(k):
                    eps = torch.randn_like(mean)
                    z = mean + std * eps
                    log_prior = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
                    log_posterior = -0.5 * (eps**2 + math.log(2 * math.pi)).sum(-1) - std.log().sum(
                        -1
                    )
                    log_weights.append(
                        -bernoulli_nll(self.model.decode(z), x) + log_prior - log_posterior
                    )
                nll = -(torch.logsumexp(torch.stack(log_weights), 0) - math.log(k))
                sums["nll"] += nll.sum().item()
        metrics = {k: v / len(test_images) for k, v in sums.items()}
        return metrics if self.importance_samples else {"negative_elbo": metrics["negative_elbo"]}


# ------------------------------------------------------------------------------------------------
# DDPM: U-Net, noise schedule, DDIM
# ------------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(DlxNamed):
    def __init__(self, c_in: int, c_out: int, time_features: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = self.named("GroupNorm", nn.GroupNorm(groups, c_in, eps=1e-5))
        self.conv1 = self.named("Conv", nn.Conv2d(c_in, c_out, 3, padding=1), "he_normal")
        self.time = self.named("Dense", nn.Linear(time_features, c_out), "lecun_normal")
        self.norm2 = self.named("GroupNorm", nn.GroupNorm(groups, c_out, eps=1e-5))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = self.named("Conv", nn.Conv2d(c_out, c_out, 3, padding=1), "lecun_normal")
        self.skip = (
            nn.Identity()
            if c_in == c_out
            else self.named("Conv", nn.Conv2d(c_in, c_out, 1), "he_normal")
        )

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(time)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(DlxNamed):
    """Single-head attention over the H*W positions, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = self.named("GroupNorm", nn.GroupNorm(groups, channels, eps=1e-5))
        self.q, self.k, self.v, self.out = (
            self.named("Dense", nn.Linear(channels, channels), "lecun_normal") for _ in range(4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        out = self.out(F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h)))
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class UpsampleConv2d(nn.Conv2d):
    """Nearest-neighbour upsampling by 2, then this convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(upsample(x))


class UNet(DlxNamed):
    def __init__(
        self,
        channels: Sequence[int],
        blocks: int,
        attention_levels: Sequence[int],
        time_dim: int,
        groups: int,
        dropout: float,
        image_shape: Sequence[int],
    ):
        super().__init__()
        self.time_dim, levels = time_dim, len(channels)
        size, _, image_channels = image_shape
        time_features = 4 * time_dim
        self.time_mlp = self.named("Dense", nn.Linear(time_dim, time_features), "lecun_normal")

        def level_layers(c_in: int, features: int, level: int) -> nn.ModuleList:
            layers = nn.ModuleList()
            for _ in range(blocks):
                layers.append(
                    self.child(
                        "ResidualBlock",
                        ResidualBlock(c_in, features, time_features, groups, dropout),
                    )
                )
                c_in = features
                if level in attention_levels:
                    layers.append(self.child("SelfAttention", SelfAttention(features, groups)))
            return layers

        self.conv_in = self.named(
            "Conv", nn.Conv2d(image_channels, channels[0], 3, padding=1), "he_normal"
        )
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = channels[0]
        for level, features in enumerate(channels):
            self.down.append(level_layers(c, features, level))
            c = features
            if level < levels - 1:
                self.downsample.append(
                    self.named("Conv", SameConv2d(c, c, 3, 2, size >> level), "he_normal")
                )
        self.middle = nn.ModuleList(
            [
                self.child("ResidualBlock", ResidualBlock(c, c, time_features, groups, dropout)),
                self.child("SelfAttention", SelfAttention(c, groups)),
                self.child("ResidualBlock", ResidualBlock(c, c, time_features, groups, dropout)),
            ]
        )
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            layers = level_layers(c + channels[level], channels[level], level)  # skip concatenated
            c = channels[level]
            if level > 0:
                layers.append(
                    self.named(
                        "Conv", UpsampleConv2d(c, channels[level - 1], 3, padding=1), "he_normal"
                    )
                )
                c = channels[level - 1]
            self.up.append(layers)
        self.norm_out = self.named("GroupNorm", nn.GroupNorm(groups, c, eps=1e-5))
        self.conv_out = self.named("Conv", nn.Conv2d(c, image_channels, 3, padding=1), "zeros")

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, time) if isinstance(layer, ResidualBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time = F.silu(self.time_mlp(timestep_embedding(t, self.time_dim)))
        h, skips = self.conv_in(x), []
        for level, layers in enumerate(self.down):
            h = self._run(layers, h, time)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        h = self._run(self.middle, h, time)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, skips.pop()], dim=1), time)
        return self.conv_out(F.silu(self.norm_out(h)))


def noise_schedule(kind: str, timesteps: int) -> np.ndarray:
    """beta_1..beta_T: Ho et al.'s linear 1e-4..0.02 (rescaled to T) or the cosine schedule."""
    if kind == "linear":
        scale = 1000.0 / timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    s = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = np.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


class DdpmTrainer:
    """dlx.tasks.diffusion's step: pixels in [-1, 1] padded with -1 to diffusion.image_size,
    t uniform, the noise-prediction MSE, Adam (clipped as configured), then the EMA update."""

    def __init__(self, config, m: dict[str, Any], device: str):
        d = config.diffusion
        self.device, self.size, self.d = device, d.image_size, d
        self.model = UNet(
            m["channels"],
            m["blocks"],
            m["attention_levels"],
            m["time_dim"],
            m["groups"],
            m["dropout"],
            m["image_shape"],
        ).to(device)
        self.ema = copy.deepcopy(self.model)  # the EMA weights start as the weights
        self.ema.requires_grad_(False).eval()
        self.opt = adam(self.model, config.optimizer)
        self.clip = config.optimizer.clip_global_norm
        betas = noise_schedule(d.schedule, d.timesteps)
        self.alpha_bar = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32, device=device)
        self.crop = tuple(m["image_shape"][:2])  # samples' size: `build` sets the data's
        self.model.train()

    def modules(self) -> dict[str, DlxNamed]:
        return {"model": self.model}

    def load_dlx_state(self, state) -> None:
        load_dlx(self.model, state.params)
        load_dlx(self.ema, state.ema)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """NHWC [0, 1] -> NCHW [-1, 1], padded with -1 (background) to image_size."""
        x = images.permute(0, 3, 1, 2) * 2 - 1
        pad_h, pad_w = self.size - x.shape[2], self.size - x.shape[3]
        return F.pad(
            x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-1.0
        )

    def denoising_loss(self, model: nn.Module, x0: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.d.timesteps, (x0.shape[0],), device=self.device)
        eps = torch.randn_like(x0)
        a = self.alpha_bar[t][:, None, None, None]
        predicted = model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)
        return (predicted - eps).square().mean(dim=(1, 2, 3))

    def step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        loss = self.denoising_loss(self.model, self.to_model_space(images)).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.d.ema_decay
            )
        return {"loss": loss}

    def ddim_steps(self, count: int) -> np.ndarray:
        return np.unique(np.linspace(0, self.d.timesteps - 1, count).round().astype(np.int64))[::-1]

    @torch.no_grad()
    def ddim(
        self,
        model: nn.Module,
        count: int,
        steps: int,
        eta: float,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM (Song et al.) from pure noise (`noise`, or drawn) in `steps` steps, x_0 clipped
        to [-1, 1] at every step; [count, C, S, S] in model space."""
        x = (
            noise
            if noise is not None
            else torch.randn(
                count, model.conv_out.out_channels, self.size, self.size, device=self.device
            )
        )
        timesteps = self.ddim_steps(steps)
        for t, t_prev in zip(timesteps, [*timesteps[1:], -1]):
            eps = model(x, torch.full((count,), int(t), device=self.device))
            a = self.alpha_bar[t]
            a_prev = self.alpha_bar[t_prev] if t_prev >= 0 else torch.ones((), device=self.device)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
            direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            x = a_prev.sqrt() * x0 + direction + sigma * torch.randn_like(x)
        return x

    def to_images(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Model space -> NHWC in [0, 1], cropped to height x width."""
        top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
        x = x[:, :, top : top + height, left : left + width]
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def sample(self, count: int) -> torch.Tensor:
        """`count` DDIM samples from the EMA weights, 500 at a time, NHWC cropped to `crop`."""
        images = [
            self.to_images(
                self.ddim(self.ema, min(500, count - i), self.d.sample_steps, self.d.eta),
                *self.crop,
            )
            for i in range(0, count, 500)
        ]
        return torch.cat(images)

    @torch.no_grad()
    def evaluate(self, test_images: torch.Tensor) -> dict[str, float]:
        losses = [
            self.denoising_loss(self.ema, self.to_model_space(x)) for x in test_images.split(1000)
        ]
        return {"loss": torch.cat(losses).mean().item()}


# ------------------------------------------------------------------------------------------------
# Config, optimizer, data
# ------------------------------------------------------------------------------------------------
TRAINERS = {"gan": DcganTrainer, "vae": VaeTrainer, "diffusion": DdpmTrainer}


def load_config(path: str):
    """A dlx config file, with its `:variant`, as launch.py reads it."""
    file, _, variant = path.partition(":")
    spec = importlib.util.spec_from_file_location("config_module", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    config.progress_bar = False
    return config


def model_fields(model) -> dict[str, Any]:
    """Every field of a dlx model, its defaults filled in (and the image shape its task gave
    it)."""
    import dataclasses

    return {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }


def adam(module: nn.Module, optimizer) -> torch.optim.Adam:
    """dlx's config.optimizer as torch.optim.Adam; other settings are refused, not ignored."""
    unsupported = {
        k: optimizer[k]
        for k, default in (
            ("name", "adam"),
            ("schedule", "constant"),
            ("weight_decay", 0.0),
            ("clip_value", 0.0),
            ("warmup_steps", 0),
            ("lr_multipliers", ()),
            ("frozen", ""),
        )
        if optimizer[k] != default
    }
    if unsupported:
        raise ValueError(
            f"the PyTorch references implement Adam with a constant learning rate "
            f"(and global-norm clipping) only, got {unsupported}"
        )
    return torch.optim.Adam(
        module.parameters(),
        lr=optimizer.learning_rate,
        betas=(optimizer.b1, optimizer.b2),
        eps=optimizer.eps,
    )


def to_unit_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0


def as_model_input(task: str, images: np.ndarray, device: str) -> torch.Tensor:
    """The trainers take NCHW for the GAN, NHWC (the dlx layout) for the VAE and DDPM."""
    if task == "gan":
        return to_unit_nchw(images).to(device)
    return (torch.from_numpy(np.asarray(images)).float() / 255.0).to(device)


def build(config, device: str = "cpu", init: str = "dlx", seed: int = 0):
    """(trainer, run): the reference for `config`'s task, initialised from dlx's initial state
    (`init="dlx"`) or with dlx's initializers in torch (`init="torch"`)."""
    from dlx.train import loop

    run = loop.prepare_run(config)
    trainer = TRAINERS[config.task](config, model_fields(run.task.model), device)
    if init == "dlx":
        trainer.load_dlx_state(jax_to_numpy(loop.init_state(run)))
    else:
        for module in trainer.modules().values():
            init_like_dlx(module, seed)
        if isinstance(trainer, DdpmTrainer):
            trainer.ema.load_state_dict(trainer.model.state_dict())
    if isinstance(trainer, DdpmTrainer):
        trainer.crop = tuple(run.data_info.features["image"].shape[:2])
    return trainer, run


def jax_to_numpy(tree):
    """A pytree of (possibly boxed, logically partitioned) jax arrays as numpy arrays."""
    import flax.linen as flax_nn
    import jax

    return jax.tree.map(np.asarray, jax.device_get(flax_nn.meta.unbox(tree)))


def train(config, args) -> dict[str, Any]:
    from dlx import data as data_lib

    torch.manual_seed(config.seed)
    trainer, run = build(config, args.device, args.init, config.seed)
    steps = args.steps or run.total_steps
    batches = data_lib.train_iterator(
        run.task.source(config.data.train_split, train=True),
        global_batch_size=config.data.batch_size,
        seed=config.seed,
    )
    log, pending = [], []
    start = time.perf_counter()
    for step in range(steps):
        images = as_model_input(config.task, next(batches)["image"], args.device)
        pending.append(trainer.step(images, step))
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            means = {
                k: float(torch.stack([m[k].detach() for m in pending]).mean()) for k in pending[0]
            }
            log.append({"step": step + 1, **means})
            pending = []
            print(
                f"step {step + 1}/{steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
                flush=True,
            )
    train_seconds = time.perf_counter() - start  # with reading the batches, as a user waits

    test_source = run.task.source(config.data.eval_split, train=False)
    test = data_lib.read_rows(test_source, np.arange(len(test_source)))["image"]
    evaluation = trainer.evaluate(as_model_input(config.task, test, args.device))
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.num_samples:
        samples = trainer.sample(args.num_samples).cpu().numpy().astype(np.float32)
        np.save(os.path.join(args.out, "samples.npy"), samples)
    sample_seconds = time.perf_counter() - start
    result = {
        "config": args.config,
        "steps": steps,
        "batch_size": config.data.batch_size,
        "init": args.init,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "num_samples": args.num_samples,
        "sample_seconds": sample_seconds,
        "eval": evaluation,
        "train_log": log,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"eval {evaluation}; {steps} steps in {train_seconds:.0f} s; {args.num_samples} samples "
        f"in {sample_seconds:.0f} s; written to {args.out}",
        flush=True,
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument(
        "--config", help="dlx config file[:variant] (default: the model's configs/fashion_*.py)"
    )
    parser.add_argument("--steps", type=int, default=0, help="train steps (default: the config's)")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--init", choices=("dlx", "torch"), default="dlx")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument(
        "--seed", type=int, default=None, help="the config's seed (as --config.seed of launch.py)"
    )
    parser.add_argument("--out", help="output folder (default: runs/torch_<model>)")
    args = parser.parse_args(argv)
    args.config = args.config or os.path.join(REPO, CONFIGS[args.model])
    args.out = args.out or os.path.join("runs", f"torch_{args.model}")
    if args.steps < 0 or args.num_samples < 0 or args.log_every < 1:
        parser.error("--steps and --num-samples must be >= 0, --log-every >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.seed is not None:
        config.seed = args.seed
    return train(config, args)


if __name__ == "__main__":
    sys.path.insert(0, REPO)  # for `dlx` and `configs`
    main()
