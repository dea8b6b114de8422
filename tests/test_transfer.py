"""Transfer learning end to end on real data (Rotten Tomatoes, WNUT-16) from a small BERT
checkpoint written in Hugging Face's format: the architecture and weights come from the
checkpoint and the head is new; frozen parameters stay put and cost no checkpoint space; LoRA
runs resume exactly; token classification scores entities as seqeval does; the sentiment and NER
pipelines read a trained workdir."""

from __future__ import annotations

import json
import random

import jax
import numpy as np
import pytest

from dlx.errors import ConfigError
from dlx.hub import bert
from dlx.metrics.entities import entity_scores, entity_spans
from dlx.models.transformer import Model
from dlx.train import loop
from helpers import cli, eval_records, load_config, refused, train

SENTIMENT = "configs/rotten_tomatoes_minilm.py"
NER = "configs/wnut16_minilm.py"


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as BertModel.save_pretrained
    would: what `init_from` reads (MiniLM itself has the same layout, 12x the width)."""
    minilm = bert.load_bert("minilm")
    model = Model(
        kind="encoder",
        vocab_size=minilm.model.vocab_size,
        num_layers=2,
        embed_dim=32,
        num_heads=2,
        mlp_dim=64,
        max_len=64,
        type_vocab_size=2,
        norm="layer",
        norm_eps=1e-12,
        norm_position="post",
        mlp="gelu_exact",
        dropout=0.1,
    )
    tokens = np.zeros((1, 8), np.int32)
    params = jax.jit(model.init)(jax.random.key(7), tokens)["params"]
    directory = tmp_path_factory.mktemp("hub") / "tiny-bert"
    bert.export_bert(model, params, directory, tokenizer=minilm.tokenizer)
    return directory


def _flat(tree) -> dict:
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _restored_params(workdir, spec, overrides):
    run = loop.prepare_run(load_config(spec, overrides), str(workdir))
    state, _ = loop.restore_latest(run, str(workdir))
    return run, _flat(jax.device_get(state.params))


NO_STEP = {"optimizer.learning_rate": 0.0}  # the weights stay those the run starts from


@pytest.fixture(scope="module")
def sentiment_run(tiny_bert, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sentiment")
    train(SENTIMENT + ":test", workdir, {"init_from": str(tiny_bert), **NO_STEP})
    return workdir


def test_fine_tuning_takes_the_architecture_and_weights_from_the_checkpoint(
    tiny_bert, sentiment_run
):
    tmp_path = sentiment_run
    overrides = {"init_from": str(tiny_bert), **NO_STEP}
    run, params = _restored_params(tmp_path, SENTIMENT + ":test", overrides)
    assert (run.task.model.num_layers, run.task.model.embed_dim) == (2, 32)
    assert run.task.model.num_outputs == 2 and run.task.model.pooling == "mean"
    checkpoint = _flat(bert.load_bert(tiny_bert).params)
    assert set(params) - set(checkpoint) == {"classifier/bias", "classifier/kernel"}
    for name, value in checkpoint.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert (tmp_path / "tokenizer.json").is_file()
    assert 0.3 < eval_records(tmp_path)[-1]["accuracy"] < 0.7  # a fresh head: near chance


def test_a_config_that_contradicts_the_checkpoint_is_refused_before_anything_is_written(
    tiny_bert, tmp_path
):
    config = load_config(SENTIMENT + ":test", {"init_from": str(tiny_bert), "model.num_layers": 6})
    with pytest.raises(ConfigError, match="model.num_layers=6.*has num_layers=2"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    result = cli(
        "--config", SENTIMENT + ":test", "--workdir", str(tmp_path / "run"),
        "--config.init_from", str(tmp_path / "no-such-folder"),
    )  # fmt: skip
    refused(result, "does not exist")
    assert not (tmp_path / "run").exists()


def test_frozen_encoder_trains_the_head_alone_and_checkpoints_only_it(tiny_bert, tmp_path):
    overrides = {"init_from": str(tiny_bert), "optimizer.learning_rate": 0.1}
    summary = train(SENTIMENT + ":frozen,test", tmp_path, overrides)
    assert summary["trainable_params"] == 32 * 2 + 2
    _, params = _restored_params(tmp_path, SENTIMENT + ":frozen,test", overrides)
    checkpoint = _flat(bert.load_bert(tiny_bert).params)
    for name, value in checkpoint.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert np.abs(params["classifier/kernel"]).max() > 0.05  # moved from its 0.02-scale init
    stored = json.loads(next((tmp_path / "checkpoints").glob("*/state/_METADATA")).read_text())[
        "tree_metadata"
    ]
    stored_params = {key for key in stored if key.startswith("('params'")}
    assert stored_params and all("classifier" in key for key in stored_params), stored_params


def test_lora_run_resumes_exactly_from_checkpoints_of_adapters_and_head(tiny_bert, tmp_path):
    spec = SENTIMENT + ":lora,test"
    overrides = {
        "init_from": str(tiny_bert),
        "train_steps": 4,
        "eval_every_steps": 4,
        "optimizer.schedule": "constant",  # stopping at 2 of 4 steps: the same rates
    }
    straight = train(spec, tmp_path / "straight", overrides)
    train(spec, tmp_path / "resumed", {**overrides, "train_steps": 2})
    resumed = train(spec, tmp_path / "resumed", overrides)
    assert resumed["resumed_from_step"] == 2
    assert resumed["final_eval"] == pytest.approx(straight["final_eval"], rel=1e-6)
    _, a = _restored_params(tmp_path / "straight", spec, overrides)
    _, b = _restored_params(tmp_path / "resumed", spec, overrides)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert any(name.startswith("lora/") for name in a)
    assert straight["trainable_params"] < straight["num_params"] / 10


def test_token_classification_on_wnut16_scores_entities_and_serves_a_pipeline(tiny_bert, tmp_path):
    overrides = {"init_from": str(tiny_bert), "optimizer.learning_rate": 3e-3}
    train(NER + ":test", tmp_path, overrides)
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels[0] == "O" and len(labels) == 21  # O, and B-/I- of WNUT-16's ten types
    final = eval_records(tmp_path)[-1]
    assert {"loss", "accuracy", "precision", "recall", "f1"} <= set(final)
    assert final["accuracy"] > 0.5  # O dominates: the head learns that first
    import dlx

    ner = dlx.pipeline("ner", model=tmp_path)
    text = "Empire State Building = ESB . Pretty bad storm here"
    (entities,) = ner([text])
    for entity in entities:  # whatever a 4-step model finds, its spans index the text
        assert text[entity["start"] : entity["end"]] == entity["word"]
        assert entity["entity_group"] in {label[2:] for label in labels[1:]}
        assert 0 < entity["score"] <= 1


def test_sentiment_pipeline_reads_a_trained_workdir(sentiment_run):
    import dlx

    classify = dlx.pipeline("sentiment-analysis", model=sentiment_run)
    results = classify(["A triumph.", "Dull, lifeless and far too long."] * 20)
    assert len(results) == 40
    assert {r["label"] for r in results} <= {"rotten", "fresh"}
    assert all(0.5 <= r["score"] <= 1 for r in results)
    assert results[0] == results[2]  # batching does not change an answer
    with pytest.raises(ConfigError, match="empty"):
        classify([""])
    with pytest.raises(ConfigError, match="ner"):
        dlx.pipeline("ner", model=sentiment_run)
    result = cli("pipeline", "sentiment-analysis", "--model", str(sentiment_run), "Great.", "Bad.")
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["Great.", "Bad."]
    assert all(line["prediction"]["label"] in ("rotten", "fresh") for line in lines)


def test_entity_scores_equal_seqeval_on_random_and_malformed_tag_sequences():
    seqeval = pytest.importorskip("seqeval.metrics")
    tags = ["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"]
    rng = random.Random(0)
    for _ in range(100):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(6)]
        predicted = [[rng.choice(tags) if rng.random() < 0.4 else t for t in s] for s in gold]
        scores = entity_scores(gold, predicted)
        assert scores["precision"] == pytest.approx(seqeval.precision_score(gold, predicted))
        assert scores["recall"] == pytest.approx(seqeval.recall_score(gold, predicted))
        assert scores["f1"] == pytest.approx(seqeval.f1_score(gold, predicted))
    # an I- after O opens an entity; a type change closes one
    assert entity_spans(["I-a", "I-a", "B-b", "I-a", "O"]) == [
        ("a", 0, 2),
        ("b", 2, 3),
        ("a", 3, 4),
    ]


def test_lora_on_a_language_model_trains_the_adapters_alone_and_samples_through_them(tmp_path):
    overrides = {
        "lora.rank": 4,
        "lora.targets": r"h_\d+/attn/(qkv|proj)",
        "optimizer.frozen": "model/.*",
        "checkpoint_frozen": False,
        "eval_every_steps": 6,  # one eval (and one set of samples), at the end
        "checkpoint_every_steps": 6,
    }
    summary = train("configs/shakespeare_gpt.py:test", tmp_path, overrides)
    run = loop.prepare_run(load_config("configs/shakespeare_gpt.py:test", overrides), str(tmp_path))
    state, _ = loop.restore_latest(run, str(tmp_path))
    adapters = state.params["lora"]
    assert summary["trainable_params"] == sum(x.size for x in jax.tree.leaves(adapters))
    assert any(np.abs(np.asarray(a["b"])).max() > 0 for a in adapters.values())  # B moved from 0
    merged = run.task.model_params(state.params)
    tokens = np.ones((1, 8), np.int32)
    np.testing.assert_allclose(
        run.task.model.apply({"params": merged}, tokens),
        state.apply_fn({"params": state.params}, tokens),
        atol=1e-5,
    )
    assert (tmp_path / "samples" / "step_0000006.txt").read_text().count("=== sample") == 2


def test_a_task_that_cannot_take_lora_says_so(tmp_path):
    config = load_config("configs/fashion_vae.py:test", {"lora.rank": 4, "lora.targets": ".*"})
    with pytest.raises(ConfigError, match="does not take LoRA adapters"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
