"""PyTorch reference language models mirroring dlx's `transformer` (kind="decoder") and
`recurrent` LMs layer for layer, built from a dlx parameter tree so both start from the same
weights. Used by bench/lm_parity.py (training curves) and bench/sequence.py (step times)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _tensor(array) -> nn.Parameter:
    return nn.Parameter(torch.tensor(np.asarray(array, np.float32)))


class GPTBlock(nn.Module):
    def __init__(self, p: dict, num_heads: int, dropout: float, eps: float):
        super().__init__()
        self.num_heads, self.dropout, self.eps = num_heads, dropout, eps
        a, m = p["attn"], p["mlp"]
        embed = np.asarray(a["qkv"]["kernel"]).shape[0]
        self.ln_1_w, self.ln_1_b = _tensor(p["ln_1"]["scale"]), _tensor(p["ln_1"]["bias"])
        self.qkv_w = _tensor(np.asarray(a["qkv"]["kernel"]).reshape(embed, -1))  # [E, 3*H*D]
        self.qkv_b = _tensor(np.asarray(a["qkv"]["bias"]).reshape(-1))
        self.proj_w = _tensor(np.asarray(a["proj"]["kernel"]).reshape(-1, embed))  # [H*D, E]
        self.proj_b = _tensor(a["proj"]["bias"])
        self.ln_2_w, self.ln_2_b = _tensor(p["ln_2"]["scale"]), _tensor(p["ln_2"]["bias"])
        self.fc_w, self.fc_b = _tensor(m["fc"]["kernel"]), _tensor(m["fc"]["bias"])
        self.out_w, self.out_b = _tensor(m["proj"]["kernel"]), _tensor(m["proj"]["bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        h = F.layer_norm(x, (e,), self.ln_1_w, self.ln_1_b, self.eps)
        q, k, v = (h @ self.qkv_w + self.qkv_b).view(b, t, 3, self.num_heads, -1).unbind(2)
        h = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            dropout_p=self.dropout if self.training else 0.0,
        )
        h = h.transpose(1, 2).reshape(b, t, e) @ self.proj_w + self.proj_b
        x = x + F.dropout(h, self.dropout, self.training)
        h = F.layer_norm(x, (e,), self.ln_2_w, self.ln_2_b, self.eps)
        h = F.gelu(h @ self.fc_w + self.fc_b, approximate="tanh") @ self.out_w + self.out_b
        return x + F.dropout(h, self.dropout, self.training)


class GPT(nn.Module):
    """Pre-LN GPT-2 block stack with learned positions and the output tied to the embedding."""

    def __init__(self, params: dict, num_heads: int, dropout: float, eps: float = 1e-5):
        super().__init__()
        self.dropout, self.eps = dropout, eps
        self.wte, self.wpe = (
            _tensor(params["wte"]["embedding"]),
            _tensor(params["wpe"]["embedding"]),
        )
        layers = sorted((k for k in params if k.startswith("h_")), key=lambda k: int(k[2:]))
        self.blocks = nn.ModuleList(GPTBlock(params[k], num_heads, dropout, eps) for k in layers)
        self.ln_f_w, self.ln_f_b = _tensor(params["ln_f"]["scale"]), _tensor(params["ln_f"]["bias"])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte[tokens] + self.wpe[: tokens.shape[1]]
        x = F.dropout(x, self.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        x = F.layer_norm(x, (x.shape[-1],), self.ln_f_w, self.ln_f_b, self.eps)
        return x @ self.wte.T


class RecurrentLM(nn.Module):
    """Embedding -> torch.nn.LSTM/GRU/RNN (dropout between layers) -> dense head."""

    def __init__(self, params: dict, cell: str, dropout: float):
        super().__init__()
        layers = params["rnn"]
        num_layers = len(layers)
        embed_dim, gates = np.asarray(layers["layer_0"]["input_kernel"]).shape
        hidden = np.asarray(layers["layer_0"]["recurrent_kernel"]).shape[0]
        kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = kind(embed_dim, hidden, num_layers, batch_first=True, dropout=dropout)
        with torch.no_grad():
            for i in range(num_layers):
                layer = layers[f"layer_{i}"]
                getattr(self.rnn, f"weight_ih_l{i}").copy_(
                    torch.tensor(np.asarray(layer["input_kernel"]).T)
                )
                getattr(self.rnn, f"weight_hh_l{i}").copy_(
                    torch.tensor(np.asarray(layer["recurrent_kernel"]).T)
                )
                getattr(self.rnn, f"bias_ih_l{i}").copy_(
                    torch.tensor(np.asarray(layer["input_bias"]))
                )
                getattr(self.rnn, f"bias_hh_l{i}").copy_(
                    torch.tensor(np.asarray(layer["recurrent_bias"]))
                )
        self.embedding = _tensor(params["embed"]["embedding"])
        self.head_w, self.head_b = (
            _tensor(params["head"]["kernel"]),
            _tensor(params["head"]["bias"]),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.rnn(self.embedding[tokens])
        return outputs @ self.head_w + self.head_b


def no_decay(name: str) -> bool:
    """dlx's default weight-decay exclusion (parameter paths ending in bias or scale)."""
    return name.endswith(("_b", "bias", "ln_1_w", "ln_2_w", "ln_f_w")) or "bias_" in name


def adamw(model: nn.Module, optimizer_config) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if not no_decay(n)]
    keep = [p for n, p in model.named_parameters() if no_decay(n)]
    c = optimizer_config
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": c.weight_decay}, {"params": keep, "weight_decay": 0.0}],
        lr=c.learning_rate,
        betas=(c.b1, c.b2),
        eps=c.eps,
    )


def mean_token_loss(model: nn.Module, batches) -> float:
    """Mean next-token cross-entropy over eval batches of dlx windows (with their `mask`)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            tokens = torch.tensor(batch["tokens"][batch["mask"]], dtype=torch.long)
            if not len(tokens):
                continue
            logits = model(tokens[:, :-1])
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="sum"
            ).item()
            count += tokens[:, 1:].numel()
    model.train()
    return total / count if count else math.nan
