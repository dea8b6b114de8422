"""word2vec: word vectors trained by skip-gram or CBOW with negative sampling on a text corpus,
pairs drawn on the fly (`dlx.data.words`).

The corpus is the `config.data.train_split` of `config.data.name` and of each data set in
`config.word2vec.extra_corpora` (default: Shakespeare's works and the King James Bible), one
document per work or book; eval draws pairs from their `config.data.eval_split`. The config
group `word2vec`:

    word2vec.mode           "skipgram" | "cbow"
    word2vec.window         5      the largest window; each draw takes b uniform in 1..window
    word2vec.negatives      5      noise words per pair, from unigram^(3/4)
    word2vec.sample         1e-3   subsampling threshold t of frequent words (0: none)
    word2vec.min_count      5      words seen fewer times in the training text are dropped
    word2vec.extra_corpora  ("kjv_bible",)
    word2vec.eval_pairs     8192   fixed validation pairs scored at each eval
    word2vec.restrict_vocab 30000  the analogy evaluation's candidate words (most frequent)
    word2vec.init_vectors   ""     start the word vectors from these ("glove": GloVe 6B 50d,
                                   or a .npz of `dlx.word_vectors`): each vocabulary word found
                                   there (in any case) takes its vector, the others keep
                                   their random start; model.features must equal their
                                   dimension. `optimizer.frozen="input_embedding"` then keeps
                                   them fixed, else they are fine-tuned

The loss per example is -log sigmoid(s_true) - sum over noise words of log sigmoid(-s_noise),
averaged over the batch. An epoch is the expected number of examples one pass over the
subsampled corpus makes (skip-gram: E[2b] = window + 1 pairs per kept token; CBOW: one per kept
token). Eval reports the validation loss, the analogy accuracy on the Google set and the
Spearman correlations on SimLex-999 and WordSim-353 (`dlx.word_vectors`, gensim's rules; the
questions and pairs with a word outside the vocabulary are skipped, and their share reported),
and writes the vectors to `vectors.npz` (`python -m dlx.word_vectors neighbors --vectors
WORKDIR/vectors.npz king`) and the vocabulary to `vocabulary.txt`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlx import schema
from dlx import word_vectors as word_vectors_lib
from dlx.data import GeneratedSource
from dlx.data import text as text_lib
from dlx.data import words as words_lib
from dlx.errors import ConfigError, UserError
from dlx.tasks import losses
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config

TRAIN_SOURCE_SEED = 0
EVAL_SOURCE_SEED = 1
VECTORS_FILE = "vectors.npz"
VOCABULARY_FILE = "vocabulary.txt"


class Task(SupervisedTask):
    best_metric_default = ("loss", "min")
    config_rules = {
        **SUPERVISED_RULES,
        **schema.under(
            "word2vec",
            mode=schema.OneOf(*words_lib.MODES),
            window=schema.Int(low=1),
            negatives=schema.Int(low=1),
            sample=schema.Float(low=0),
            min_count=schema.Int(low=1),
            extra_corpora=schema.Seq(schema.Str(nonempty=True)),
            eval_pairs=schema.Int(low=1),
            restrict_vocab=schema.Int(low=1),
            init_vectors=schema.Str(),
        ),
    }

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        config.word2vec = ml_collections.ConfigDict(
            dict(
                mode="skipgram",
                window=5,
                negatives=5,
                sample=1e-3,
                min_count=5,
                extra_corpora=("kjv_bible",),
                eval_pairs=8192,
                restrict_vocab=30_000,
                init_vectors="",
            )
        )
        return config

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        self.config, self.data_dir = config, data_dir
        train = self._documents(config.data.train_split)
        self.vocabulary = words_lib.Vocabulary.build(train, config.word2vec.min_count)
        self.train_corpus = words_lib.Corpus.from_documents(self.vocabulary, train)
        self.eval_corpus = words_lib.Corpus.from_documents(
            self.vocabulary, self._documents(config.data.eval_split)
        )
        super().__init__(config, data_info, data_dir, workdir)
        self.initial_vectors = self._initial_vectors()

    def _initial_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """([V, D] vectors, [V] found) from config.word2vec.init_vectors, checked before any
        run starts."""
        spec = self.config.word2vec.init_vectors
        if not spec:
            return None
        source = word_vectors_lib.load_vectors(spec, self.data_dir)
        features = self.model.features
        if source.vectors.shape[1] != features:
            raise ConfigError(
                f"config.word2vec.init_vectors='{spec}' holds {source.vectors.shape[1]}-"
                f"dimensional vectors, but config.model.features={features}; set "
                f"config.model.features={source.vectors.shape[1]}"
            )
        return source.table_for(self.vocabulary.words)

    def _documents(self, split: str) -> list[list[str]]:
        names = (self.config.data.name, *self.config.word2vec.extra_corpora)
        return [
            words_lib.tokenize(text)
            for name in names
            for text in text_lib.read_texts(name, split, self.data_dir)
        ]

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        if not kwargs.get("vocab_size"):
            kwargs["vocab_size"] = len(self.vocabulary.words)
        return kwargs

    def _sampler(self, corpus: words_lib.Corpus) -> words_lib.PairSampler:
        w2v = self.config.word2vec
        return words_lib.PairSampler(
            corpus,
            self.vocabulary.counts,
            mode=w2v.mode,
            window=w2v.window,
            negatives=w2v.negatives,
            sample=w2v.sample,
        )

    @functools.lru_cache(maxsize=4)
    def source(self, split: str, *, train: bool) -> GeneratedSource:
        if train:
            # num_examples only sizes the fixed draws the runner reads shapes from
            return GeneratedSource(self._sampler(self.train_corpus).draw, 16, TRAIN_SOURCE_SEED)
        return GeneratedSource(
            self._sampler(self.eval_corpus).draw, self.config.word2vec.eval_pairs, EVAL_SOURCE_SEED
        )

    def examples_per_epoch(self) -> int:
        sampler = self._sampler(self.train_corpus)
        kept = sampler.keep[self.train_corpus.tokens].sum()
        per_token = sampler.pairs_per_token() if self.config.word2vec.mode == "skipgram" else 1.0
        return max(1, int(kept * per_token))

    def model_input(self, batch: dict) -> jax.Array:
        return batch["center"] if self.config.word2vec.mode == "skipgram" else batch["context"]

    def _scores(self, params, batch: dict) -> jax.Array:
        """[B, 1 + negatives]: the true word's score first, then the noise words'."""
        true = batch["context"] if self.config.word2vec.mode == "skipgram" else batch["center"]
        targets = jnp.concatenate([true[:, None], batch["negatives"]], axis=1)
        return self.model.apply({"params": params}, self.model_input(batch), targets)

    def init(self, rng: jax.Array, batch: dict):
        targets = jnp.zeros(
            (batch["negatives"].shape[0], batch["negatives"].shape[1] + 1), jnp.int32
        )
        variables = self.model.init({"params": rng}, self.model_input(batch), targets)
        if self.initial_vectors is None:
            return variables
        vectors, found = self.initial_vectors
        boxed = variables["params"]["input_embedding"]
        start = jnp.where(found[:, None], vectors, boxed.unbox())
        params = {**variables["params"], "input_embedding": boxed.replace_boxed(start)}
        return {**variables, "params": params}

    def loss_fn(self, params, model_state, batch, rng):
        nll = negative_sampling_loss(self._scores(params, batch))
        loss = nll.mean()
        return losses.with_penalty(loss, params, self.config.loss), ({"nll": loss}, model_state)

    def eval_step(self, state, batch) -> dict:
        mask = batch["mask"].astype(jnp.float32)
        nll = negative_sampling_loss(self._scores(state.params, batch))
        return {"loss": (nll * mask).sum(), "count": mask.sum()}

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        return {"loss": float(sums["loss"]) / float(sums["count"])}

    def evaluator(self):
        return _WithWordMetrics(super().evaluator(), self)

    def word_vectors(self, params) -> word_vectors_lib.WordVectors:
        vectors = np.asarray(jax.device_get(params["input_embedding"]))
        return word_vectors_lib.WordVectors(list(self.vocabulary.words), vectors)

    def word_metrics(self, params) -> dict[str, float]:
        """Analogy accuracy and similarity correlations of the current vectors."""
        vectors = self.word_vectors(params)
        try:
            report = word_vectors_lib.evaluate(
                vectors, self.data_dir, self.config.word2vec.restrict_vocab
            )
        except UserError:  # the evaluation sets are not installed: the loss alone
            return {}
        analogies = report["analogies"]
        return {
            "analogy_accuracy": analogies["accuracy"],
            "analogy_questions": analogies["total"],
            "simlex999": report["simlex999"]["spearman"],
            "wordsim353": report["wordsim353"]["spearman"],
        }

    def write_run_files(self, workdir: str) -> None:
        with open(os.path.join(workdir, VOCABULARY_FILE), "w") as f:
            f.writelines(
                f"{w}\t{c}\n" for w, c in zip(self.vocabulary.words, self.vocabulary.counts)
            )

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        if is_main_process():
            path = os.path.join(workdir, VECTORS_FILE)
            self.word_vectors(state.params).save(path + ".tmp.npz")
            os.replace(path + ".tmp.npz", path)


def negative_sampling_loss(scores: jax.Array) -> jax.Array:
    """[B]: -log sigmoid(scores[:, 0]) - sum_k log sigmoid(-scores[:, k]) for k >= 1."""
    return -jax.nn.log_sigmoid(scores[:, 0]) - jax.nn.log_sigmoid(-scores[:, 1:]).sum(1)


class _WithWordMetrics:
    """The batch-sum evaluator, plus the word-vector evaluations of the state it scores."""

    def __init__(self, sums, task: Task):
        self.sums, self.task = sums, task

    def init(self):
        return {"sums": self.sums.init(), "words": None}

    def update(self, acc, state, batch):
        words = acc["words"] if acc["words"] is not None else self.task.word_metrics(state.params)
        return {"sums": self.sums.update(acc["sums"], state, batch), "words": words}

    def merge(self, acc):
        return {"sums": self.sums.merge(acc["sums"]), "words": acc["words"]}

    def result(self, acc) -> dict[str, float]:
        return {**self.sums.result(acc["sums"]), **(acc["words"] or {})}

    def write_artifacts(self, acc, state, workdir: str, step: int) -> None:
        self.sums.write_artifacts(acc["sums"], state, workdir, step)
