"""dlx vs sentence-transformers on this machine's CPU: all-MiniLM-L6-v2 sentence embeddings,
sentences per second at batch 32, from the same weights.

    .venv/bin/python bench/minilm.py                 # ~2 min on 2 cores
    .venv/bin/python bench/minilm.py --sentences 512 --rounds 7

The sentences are the first `--sentences` lines of 4 to 40 words of Shakespeare's validation
works (real text of mixed lengths). Each call embeds all of them, tokenisation included:
- `dlx`: `dlx.hub.bert.load_bert("minilm").sentence_embeddings` (batches by length, padded to
  multiples of 16 tokens, jitted with dlx's compiler options);
- `torch`: `SentenceTransformer(same folder).encode(batch_size=32)` (also batches by length),
  torch with bench/run.py's thread count, under no_grad.
Sides alternate in rounds (bench/generative.py's `timed_rounds`, busy rounds retried); the
embeddings of both are checked equal first. FLOPs: the encoder's matmuls and attention of each
sentence's real tokens (`transformer.forward_flops_per_token` without an output head), so "% of
peak" is useful work; padding is not counted. Writes
bench/results_minilm.json.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import generative  # noqa: E402
from bench import run as bench_run  # noqa: E402
from dlx import runtime  # noqa: E402
from dlx.data import text as text_lib  # noqa: E402
from dlx.hub import bert  # noqa: E402
from dlx.models import transformer  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(BENCH_DIR, "results_minilm.json"))
    return parser.parse_args(argv)


def shakespeare_sentences(count: int) -> list[str]:
    lines = (
        line.strip()
        for text in text_lib.read_texts("shakespeare", "validation")
        for line in text.splitlines()
    )
    chosen = [line for line in lines if 4 <= len(line.split()) <= 40]
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} lines of 4-40 words; ask for fewer sentences")
    return chosen[:count]


def encoder_flops(encoder: bert.BertEncoder, sentences: list[str]) -> float:
    """Useful forward FLOPs of one call: each sentence's tokens, attending over its own length
    (padding, which both sides compute some of, not counted)."""
    model = encoder.model
    ids, _ = encoder.tokenize(sentences)
    total = 0.0
    for length in (ids != 0).sum(1):
        per_token = transformer.forward_flops_per_token(model, int(length))
        per_token -= 2 * model.embed_dim * model.vocab_size  # hidden states: no output head
        total += per_token * int(length)
    return total


def compare(args) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    sentences = shakespeare_sentences(args.sentences)
    encoder = bert.load_bert("minilm")
    reference = SentenceTransformer(str(encoder.directory), device="cpu")
    ours = encoder.sentence_embeddings(sentences, args.batch)
    theirs = reference.encode(sentences, batch_size=args.batch, convert_to_numpy=True)
    max_difference = float(np.abs(ours - theirs).max())

    def dlx_calls(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            encoder.sentence_embeddings(sentences, args.batch)
        return time.perf_counter() - start

    def torch_calls(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(n):
                reference.encode(sentences, batch_size=args.batch, convert_to_numpy=True)
        return time.perf_counter() - start

    result = generative.timed_rounds(
        {"dlx": dlx_calls, "torch": torch_calls}, args.calls, args.rounds
    )
    for side in ("dlx", "torch"):
        result[f"{side}_sentences_per_s"] = len(sentences) / (result[f"{side}_ms"] / 1e3)
    tokens = int((encoder.tokenize(sentences)[0] != 0).sum())
    return {
        "sentences": len(sentences),
        "batch": args.batch,
        "tokens": tokens,
        "max_abs_difference": max_difference,
        **generative.with_throughput(result, encoder_flops(encoder, sentences), None),
    }


def report(results: dict) -> str:
    r = results["minilm"]
    peak = (results.get("peak") or {}).get("peak_gflops")
    lines = bench_run.report_header(results) + [
        "",
        f"| all-MiniLM-L6-v2, {r['sentences']} sentences ({r['tokens']} tokens), batch "
        f"{r['batch']} | sentences/s | ms per call | GFLOP/s | % of peak |",
        "|---|---|---|---|---|",
    ]
    for side, name in (("dlx", "dlx"), ("torch", "sentence-transformers")):
        gflops = r[f"{side}_gflops"]
        share = f"{100 * gflops / peak:.0f}%" if peak else "-"
        lines.append(
            f"| {name} | {r[f'{side}_sentences_per_s']:.0f} | {r[f'{side}_ms']:.0f} "
            f"| {gflops:.0f} | {share} |"
        )
    lines += [
        "",
        f"dlx/torch time: {r['ratio']:.2f}; embeddings agree to {r['max_abs_difference']:.1e}",
    ]
    return "\n".join(lines + bench_run.load_notes(results, [("minilm", r)]))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(bench_run.TORCH_THREADS)
    results, started, other_load = bench_run.start_results()
    results["peak"] = bench_run.matmul_peak()
    results["minilm"] = compare(args)
    return bench_run.finish(results, started, other_load, args.out, report)


if __name__ == "__main__":
    runtime.reexec_with_malloc_policy()  # malloc as launch.py sets it (dlx/runtime.py)
    main()
