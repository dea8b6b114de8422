"""dlx vs PyTorch on this machine's CPU: fine-tuning all-MiniLM-L6-v2 as a sentence classifier
(Rotten Tomatoes sentiment, batch 32, 64 tokens), ms per train step, side by side in one run.

    .venv/bin/python bench/finetune.py                    # ~10 min on 2 cores (5 sides x 5 rounds)
    .venv/bin/python bench/finetune.py --steps 2 --rounds 1

Sides (all from the same checkpoint, `dlx.hub.bert.minilm_directory()`, dropout 0.1 on, train mode):
- `dlx` full fine-tuning (configs/rotten_tomatoes_minilm.py), `dlx_lora` (its `:lora` variant:
  rank 8, alpha 16, dropout 0.1 on every attention and MLP projection, regex
  r"h_\\d+/(attn/(qkv|proj)|mlp/(fc|proj))", encoder frozen, AdamW 1e-3) and `dlx_frozen` (`:frozen`:
  the head alone trains), each built as the runner builds it (`loop.prepare_run` ->
  `starting_state` -> `compile_steps`, the default mesh over all local devices); dlx's q, k, v
  are one fused [384 -> 3x384] projection, so its LoRA has rank 8 on that fused output (fewer
  adapter parameters than peft's three rank-8 adapters on query, key, value).
- `torch`: `transformers.BertModel(add_pooling_layer=False)`, mean over real tokens,
  `Linear(384, 2)`, AdamW(1e-4, weight decay 0.01 on every tensor: dlx spares biases and norm
  scales), cross-entropy; `torch_lora`: the same wrapped by `peft` (r 8, alpha 16, dropout 0.1 on
  query, key, value, attention.output.dense, intermediate.dense, output.dense), base frozen, the
  head trained, AdamW 1e-3. Torch uses bench/run.py's thread count.
Both sides train on the same batches: the first `--steps` batches of the task's train source, in
order (token ids, padding id 0 masked out; labels). Sides alternate in rounds
(bench/generative.py's `timed_rounds`, one untimed step first, busy rounds retried); dlx is
blocked on (state and metrics) before the clock stops.

FLOPs (matmuls, 2 per multiply-add, padding tokens included: both sides compute them): full
fine-tuning is the task's `train_flops_per_example()` (3 x forward). LoRA counts what it needs:
the forward (with the adapters), the activation gradients of every layer (weight matmuls once,
attention scores twice) and the adapters' weight gradients, no weight gradients of the frozen
encoder: 2 x forward + scores + 3 x adapters, about 2/3 of full (dlx's fused adapters for both
LoRA sides; peft's add <1%). Frozen: the forward alone (dlx stops the gradient at the head; the
head's backward is negligible). "% of peak" is that over the measured f32 matmul peak.
Writes bench/results_finetune.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench import generative  # noqa: E402
from bench import run as bench_run  # noqa: E402
from dlx import data, runtime  # noqa: E402
from dlx.hub import bert  # noqa: E402
from dlx.train import config as config_lib  # noqa: E402
from dlx.train import loop, sharding  # noqa: E402

CONFIG = os.path.join(os.path.dirname(BENCH_DIR), "configs", "rotten_tomatoes_minilm.py")
DLX_SIDES = {"dlx": None, "dlx_lora": "lora", "dlx_frozen": "frozen"}
PEFT_TARGETS = [
    *("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
]
SIDES = ("dlx", "torch", "dlx_lora", "torch_lora", "dlx_frozen")
NAMES = {
    "dlx": "dlx full",
    "torch": "PyTorch full",
    "dlx_lora": "dlx LoRA",
    "torch_lora": "PyTorch + peft LoRA",
    "dlx_frozen": "dlx frozen encoder (head only)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="train steps (batches) per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results_finetune.json"))
    return parser.parse_args(argv)


def timed(step, batches: list) -> bench_run.StepRunner:
    """run_steps(n) -> seconds for n calls of `step` on the batches in turn; `step` finishes its
    work before the last call returns (or returns what to block on)."""

    def run_steps(num_steps: int) -> float:
        start = time.perf_counter()
        for i in range(num_steps):
            out = step(batches[i % len(batches)])
        jax.block_until_ready(out)
        return time.perf_counter() - start

    return run_steps


def dlx_side(variant: str | None, steps: int):
    config = config_lib.load(CONFIG + (f":{variant}" if variant else ""))
    config.progress_bar = False
    config.mesh = config_lib.base_config(config.task).mesh  # all local devices
    run = loop.prepare_run(config)
    state = loop.starting_state(run, loop.check_warm_start(run))
    source = run.task.source(config.data.train_split, train=True)
    size = config.data.batch_size
    numpy_batches = [
        data.read_rows(source, np.arange(i * size, (i + 1) * size)) for i in range(steps)
    ]
    batches = [sharding.shard_batch(b, run.mesh) for b in numpy_batches]
    model = bench_run.DlxModel(run, state, loop.compile_steps(run), batches[0], numpy_batches[0])

    def step(batch):
        metrics = model.step(batch)
        return model.state, metrics

    return model, timed(step, batches), numpy_batches


class TorchClassifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, num_outputs: int):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, num_outputs)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))


def torch_side(lora: bool, numpy_batches: list, num_outputs: int):
    import peft
    import transformers

    transformers.logging.set_verbosity_error()  # the unused pooler weights' load report
    torch.manual_seed(0)
    encoder = transformers.BertModel.from_pretrained(
        str(bert.minilm_directory()), add_pooling_layer=False
    )
    if lora:
        encoder = peft.get_peft_model(
            encoder,
            peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=PEFT_TARGETS),
        )
    model = TorchClassifier(encoder, num_outputs).train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3 if lora else 1e-4, weight_decay=0.01)
    batches = [
        (torch.as_tensor(b["tokens"], dtype=torch.long), torch.as_tensor(b["label"]).long())
        for b in numpy_batches
    ]

    def step(batch):
        ids, labels = batch
        loss = F.cross_entropy(model(ids, (ids != 0).long()), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    info = {
        "trainable_params": sum(p.numel() for p in trained),
        "attention": encoder.config._attn_implementation,
    }
    return timed(step, batches), info


def step_flops(task, batch: int) -> dict[str, float]:
    """Model FLOPs per step of each side (see the docstring)."""
    model, length = task.model, task.tokens_per_example()
    full = task.train_flops_per_example()
    forward = full / 3
    q_width, kv_width = model.num_heads * model.head_dim, model.kv_heads * model.head_dim
    d, hidden = model.embed_dim, model.hidden_dim
    scores = model.num_layers * 4 * q_width * length * length
    rank = task.config.lora.rank or 8
    pairs = ((d, q_width + 2 * kv_width), (q_width, d), (d, hidden), (hidden, d))
    adapters = model.num_layers * length * sum(2 * rank * (i + o) for i, o in pairs)
    lora = 2 * forward + scores + 3 * adapters
    return {
        "dlx": full * batch,
        "torch": full * batch,
        "dlx_lora": lora * batch,
        "torch_lora": lora * batch,
        "dlx_frozen": forward * batch,
    }


def compare(args, peak_gflops: float | None) -> dict[str, Any]:
    runners, params, batches, task, batch = {}, {}, None, None, 0
    for side, variant in DLX_SIDES.items():
        model, runners[side], numpy_batches = dlx_side(variant, args.steps)
        params[side] = model.run.task.trainable_params(model.state)
        if batches is None:
            batches, task, batch = numpy_batches, model.run.task, model.run.config.data.batch_size
    torch_info = {}
    for side, lora in (("torch", False), ("torch_lora", True)):
        runners[side], torch_info[side] = torch_side(lora, batches, task.model.num_outputs)
        params[side] = torch_info[side]["trainable_params"]
    runners = {side: runners[side] for side in SIDES}
    for run_steps in runners.values():
        run_steps(args.warmup)  # compiles
    result = generative.timed_rounds(runners, args.steps, args.rounds)
    flops = step_flops(task, batch)
    result["lora_ratio"] = result["dlx_lora_ms"] / result["torch_lora_ms"]
    for side in SIDES:
        ms = result[f"{side}_ms"]
        result[f"{side}_trainable_params"] = params[side]
        result[f"{side}_examples_per_s"] = batch / (ms / 1e3)
        result[f"{side}_flops"] = flops[side]
        result[f"{side}_gflops"] = flops[side] / ms / 1e6
        if peak_gflops:
            result[f"{side}_peak_fraction"] = result[f"{side}_gflops"] / peak_gflops
    return {
        "batch": batch,
        "tokens": task.tokens_per_example(),
        "torch_attention": torch_info["torch"]["attention"],
        **result,
    }


def report(results: dict) -> str:
    r = results["finetune"]
    peak = (results.get("peak") or {}).get("peak_gflops")
    lines = bench_run.report_header(results) + [
        "",
        f"| all-MiniLM-L6-v2 fine-tuning, batch {r['batch']} x {r['tokens']} tokens "
        "| ms/step | examples/s | trainable params | model GFLOP/step | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for side in SIDES:
        share = f"{100 * r[f'{side}_peak_fraction']:.0f}%" if peak else "-"
        lines.append(
            f"| {NAMES[side]} | {r[f'{side}_ms']:.0f} | {r[f'{side}_examples_per_s']:.1f} "
            f"| {r[f'{side}_trainable_params']:,} | {r[f'{side}_flops'] / 1e9:.0f} "
            f"| {r[f'{side}_gflops']:.0f} | {share} |"
        )
    lines += [
        "",
        f"dlx/torch time: full {r['ratio']:.2f}, LoRA {r['lora_ratio']:.2f} "
        f"({r['steps_per_round']} steps per round, median of {r['rounds']} rounds; torch "
        f"attention '{r['torch_attention']}'). Model FLOPs: full = 3 x forward, LoRA = "
        "2 x forward + attention scores + adapters (no frozen weight gradients), frozen = forward.",
    ]
    return "\n".join(lines + bench_run.load_notes(results, [("finetune", r)]))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    results["peak"] = bench_run.matmul_peak()
    results["finetune"] = compare(args, results["peak"]["peak_gflops"])
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
