"""word2vec throughput and quality: dlx's `word2vec` task against gensim 4.4.0's Word2Vec on the
same corpus, settings and machine, one after the other in one run.

    .venv/bin/python bench/word2vec.py [--epochs 1] [--mode skipgram|cbow] [--workers 2]

Corpus: the train splits of Shakespeare and the King James Bible, tokenised by
`dlx.data.words.tokenize` (gensim gets the same token lists, each document cut into sentences
of at most 10,000 tokens, gensim's limit). Settings for both: 100 dimensions, window 5, 5 noise
words, subsampling 1e-3, min_count 5. Throughput is words of the corpus that are in the
vocabulary per second of training (one epoch = each such token once: gensim passes over them,
dlx draws the epoch's expected number of pairs at random positions), compilation and vocabulary
building excluded; dlx's includes drawing the pairs on the host. Quality: analogy accuracy and
similarity correlations of both sets of vectors by `dlx.word_vectors` (gensim's rules). Writes
bench/results_word2vec_<mode>_<epochs>ep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))

from configs import word2vec as word2vec_config  # noqa: E402
from dlx import word_vectors  # noqa: E402

GENSIM_MAX_SENTENCE = 10_000


def word_metrics(vectors: word_vectors.WordVectors) -> dict:
    report = word_vectors.evaluate(vectors, restrict_vocab=30_000)
    return {
        "analogy_accuracy": report["analogies"]["accuracy"],
        "analogy_questions": report["analogies"]["total"],
        "simlex999": report["simlex999"]["spearman"],
        "wordsim353": report["wordsim353"]["spearman"],
    }


def run_dlx(args, workdir: str) -> dict:
    from dlx.train import loop
    from dlx.train.metrics import read_metrics

    config = word2vec_config.get_config("cbow" if args.mode == "cbow" else None)
    config.num_epochs = float(args.epochs)
    config.eval_every_epochs = float(args.epochs)
    config.log_every_steps = 100
    config.progress_bar = False
    loop.train_and_evaluate(config, workdir)
    records = [
        r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"
    ]
    # the first logging window holds the compilation: rate over the others
    steps = records[-1]["step"] - records[0]["step"]
    seconds = sum(
        (b["step"] - a["step"]) / b["steps_per_sec"] for a, b in zip(records, records[1:])
    )
    with open(os.path.join(workdir, "summary.json")) as f:
        total_steps = json.load(f)["steps"]
    vectors = word_vectors.WordVectors.load(os.path.join(workdir, "vectors.npz"))
    vocabulary_counts = [
        int(line.split("\t")[1]) for line in open(os.path.join(workdir, "vocabulary.txt"))
    ]
    words_per_epoch = sum(vocabulary_counts)
    seconds_per_step = seconds / steps
    return {
        "steps": total_steps,
        "seconds_per_step": seconds_per_step,
        "train_seconds": seconds_per_step * total_steps,
        "words_per_second": words_per_epoch * args.epochs / (seconds_per_step * total_steps),
        "vocabulary": len(vocabulary_counts),
        **word_metrics(vectors),
    }


def run_gensim(args) -> dict:
    from gensim.models import Word2Vec

    from dlx.data import text as text_lib
    from dlx.data import words

    documents = [
        words.tokenize(t)
        for name in ("shakespeare", "kjv_bible")
        for t in text_lib.read_texts(name, "train")
    ]
    sentences = [
        doc[i : i + GENSIM_MAX_SENTENCE]
        for doc in documents
        for i in range(0, len(doc), GENSIM_MAX_SENTENCE)
    ]
    model = Word2Vec(
        vector_size=100,
        window=5,
        negative=5,
        sample=1e-3,
        min_count=5,
        sg=int(args.mode == "skipgram"),
        workers=args.workers,
        seed=0,
    )
    model.build_vocab(sentences)
    in_vocab = sum(model.wv.get_vecattr(w, "count") for w in model.wv.index_to_key)
    start = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=args.epochs)
    seconds = time.perf_counter() - start
    vectors = word_vectors.WordVectors(list(model.wv.index_to_key), model.wv.vectors)
    return {
        "train_seconds": seconds,
        "words_per_second": in_vocab * args.epochs / seconds,
        "vocabulary": len(model.wv.index_to_key),
        **word_metrics(vectors),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--mode", choices=("skipgram", "cbow"), default="skipgram")
    parser.add_argument("--workers", type=int, default=2, help="gensim worker threads")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        dlx_result = run_dlx(args, workdir)
    gensim_result = run_gensim(args)
    result = {
        "args": vars(args),
        "dlx": dlx_result,
        "gensim": gensim_result,
        "dlx_over_gensim_words_per_second": dlx_result["words_per_second"]
        / gensim_result["words_per_second"],
    }
    print(json.dumps(result, indent=1))
    with open(
        os.path.join(BENCH_DIR, f"results_word2vec_{args.mode}_{args.epochs}ep.json"), "w"
    ) as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
