"""word2vec: the negative-sampling loss by hand, the pair sampler's windows, subsampling and
noise distribution, and a tiny run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dlx.data import words
from dlx.tasks.word2vec import negative_sampling_loss
from helpers import cli, refused, train


def test_negative_sampling_loss_by_hand():
    scores = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [
        -math.log(sigmoid(2.0)) - math.log(sigmoid(1.0)) - math.log(sigmoid(-0.5)),
        3 * math.log(2.0),  # untrained: every score 0
    ]
    np.testing.assert_allclose(negative_sampling_loss(scores), expected, rtol=1e-6)


def positional_corpus(lengths=(30, 20)):
    """Documents whose every token is a distinct word, so a word id gives its position."""
    documents, start = [], 0
    for length in lengths:
        documents.append([f"w{i}" for i in range(start, start + length)])
        start += length
    vocabulary = words.Vocabulary.build(documents, min_count=1)
    corpus = words.Corpus.from_documents(vocabulary, documents)
    position = {vocabulary.index[f"w{i}"]: i for i in range(start)}
    return vocabulary, corpus, position, np.repeat(np.arange(len(lengths)), lengths)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_pairs_stay_inside_their_window_and_document(mode):
    vocabulary, corpus, position, document = positional_corpus()
    sampler = words.PairSampler(corpus, vocabulary.counts, mode=mode, window=3, sample=0)
    drawn = sampler.draw(np.random.default_rng(0), 2000)
    centers = np.array([position[c] for c in drawn["center"]])
    contexts = drawn["context"].reshape(len(centers), -1)
    offsets = set()
    for center, row in zip(centers, contexts):
        for context in row[row >= 0]:
            offset = position[context] - center
            assert 1 <= abs(offset) <= 3 and document[center] == document[position[context]]
            offsets.add(offset)
    assert offsets == {-3, -2, -1, 1, 2, 3}
    assert drawn["negatives"].shape == (2000, 5)
    again = sampler.draw(np.random.default_rng(0), 2000)  # a function of the generator alone
    assert all(np.array_equal(drawn[k], again[k]) for k in drawn)


def test_subsampling_keeps_frequent_words_at_word2vecs_rate():
    counts = np.array([9000, 990, 10])
    keep = words.keep_probabilities(counts, sample=1e-3)
    threshold = 1e-3 * 10_000
    assert keep[0] == pytest.approx((math.sqrt(9000 / threshold) + 1) * threshold / 9000)
    assert keep[2] == 1.0 and words.keep_probabilities(counts, 0).tolist() == [1, 1, 1]
    rng = np.random.default_rng(0)
    tokens = rng.choice(3, size=10_000, p=counts / counts.sum())
    corpus = words.Corpus(tokens.astype(np.int32), np.zeros(10_000, np.int32))
    sampler = words.PairSampler(corpus, counts, window=2, sample=1e-3)
    centers = sampler.draw(rng, 20_000)["center"]
    expected = counts * keep / (counts * keep).sum()  # centres: uniform positions, then kept
    np.testing.assert_allclose(
        np.bincount(centers, minlength=3) / len(centers), expected, atol=0.02
    )


def test_noise_words_follow_the_unigram_distribution_to_the_three_quarters():
    counts = np.array([1000, 100, 10, 1])
    corpus = words.Corpus(np.zeros(10, np.int32), np.zeros(10, np.int32))
    sampler = words.PairSampler(corpus, counts)
    noise = sampler.draw_noise(np.random.default_rng(0), (200_000,))
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(np.bincount(noise, minlength=4) / len(noise), expected, atol=0.005)


def test_tokens_and_vocabulary():
    assert words.tokenize("O'er the hill, thou'rt KING-like; 3 men") == [
        "o'er", "the", "hill", "thou'rt", "king", "like", "men"
    ]  # fmt: skip
    vocabulary = words.Vocabulary.build([["b", "a", "b", "c"], ["a", "b"]], min_count=2)
    assert vocabulary.words == ("b", "a") and vocabulary.counts.tolist() == [3, 2]
    assert vocabulary.encode(["c", "a", "b"]).tolist() == [1, 0]


def test_word2vec_trains_and_writes_vectors_a_query_can_read(tmp_path):
    from dlx import word_vectors

    summary = train(
        "configs/word2vec.py:test",
        tmp_path / "run",
        {"optimizer.learning_rate": 0.02, "train_steps": 60, "eval_every_steps": 30},
    )
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    evals = [r["loss"] for r in records if r["split"] == "eval"]
    assert evals[-1] < evals[0] < 6 * math.log(2) + 1e-3  # below the untrained 6 log 2
    assert 0.0 <= summary["final_eval"]["analogy_accuracy"] <= 1.0
    vectors = word_vectors.WordVectors.load(tmp_path / "run/vectors.npz")
    assert vectors.vectors.shape[1] == 16 and vectors.words[0] == "the"
    assert (tmp_path / "run/vocabulary.txt").read_text().startswith("the\t")
    assert len(vectors.neighbors("king", 3)) == 3


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.word2vec.min_count=100000000", "lower config.word2vec.min_count"),
        ("--config.word2vec.extra_corpora=('novels',)", "unknown data set 'novels'"),
        ("--config.word2vec.mode=glove", "config.word2vec.mode"),
    ],
)
def test_bad_word2vec_configs_are_one_error_line(tmp_path, override, expected):
    workdir = str(tmp_path / "w")
    result = cli("--config", "configs/word2vec.py:test", "--workdir", workdir, override)
    assert refused(result, expected).startswith("error: ")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_word_vectors_start_from_a_vector_file_and_stay_when_frozen(tmp_path):
    from dlx import word_vectors

    start = word_vectors.WordVectors(["The", "king", "qwxzzy"], np.arange(48).reshape(3, 16) / 48)
    start.save(tmp_path / "start.npz")
    overrides = {
        "word2vec.init_vectors": str(tmp_path / "start.npz"),
        "optimizer.frozen": "input_embedding",
        "train_steps": 4,
        "eval_every_steps": 4,
    }
    train("configs/word2vec.py:test", tmp_path / "run", overrides)
    trained = word_vectors.WordVectors.load(tmp_path / "run/vectors.npz")
    np.testing.assert_array_equal(trained.vectors[trained.row("the")], start.vectors[0])
    np.testing.assert_array_equal(trained.vectors[trained.row("king")], start.vectors[1])
    other = trained.vectors[trained.row("and")]
    assert 0 < np.abs(other).max() <= 0.5 / 16  # word2vec's own random start

    wrong = {"word2vec.init_vectors": str(tmp_path / "start.npz"), "model.features": 8}
    result = cli(
        "--config", "configs/word2vec.py:test", "--workdir", str(tmp_path / "w"),
        *(f"--config.{k}={v}" for k, v in wrong.items()),
    )  # fmt: skip
    refused(result, "set config.model.features=16")
