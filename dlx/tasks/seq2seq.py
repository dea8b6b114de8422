"""Sequence to sequence (grapheme-to-phoneme on CMUdict): teacher-forced cross-entropy in
training; greedy or beam-search decoding at eval, scored by phoneme error rate (edit distance /
reference length, summed over the split) and word error rate (share of words whose decoded
pronunciation is not exactly the reference), each against the word's primary pronunciation and
(`*_any`) against the closest of all its pronunciations.

Batches hold int32 `inputs` [B, S] (letters, padded with 0) and `targets` [B, T]
(bos, phonemes, eos, padded with 0); the decoder reads targets[:, :-1] and predicts
targets[:, 1:]. Eval batches also hold `references` [B, K, T - 1], every pronunciation of the
word (see `g2p_source`).

Length buckets: cmudict words average 7.5 letters, but rows are padded to 32, so a train step
runs on the smallest of `data.length_buckets` (default `TRAIN_LENGTH_BUCKETS`; `()` trains at
full width, one compiled step instead of one per bucket) that holds every real input and decoder
position
of the global batch (16 for ~3/4 of the batches of 256, 24 for the rest: ~56% of the work of
padding to 32; Transformer :small step 0.98 -> 0.55 s on 2 cores).
The choice is a `lax.switch` inside the jitted step, over one cropped copy of the step per
bucket: it reads the global (sharded) batch, so every process and device takes the same branch,
and the data pipeline, resume and eval are untouched (eval scores every word at full width).
Cropping drops only padding, which attention and the loss mask out.

Works with any model keeping the encoder-decoder contract of `dlx.tasks.decoding` (`transformer`
kind="encoder_decoder", `seq2seq`).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dlx import schema
from dlx.data.text import G2P_DATA_SETS, g2p_source, g2p_vocabularies
from dlx.errors import ConfigError
from dlx.schema import Float, Int, Named, Seq
from dlx.tasks import decoding, losses
from dlx.tasks.base import SUPERVISED_RULES, SupervisedTask, is_main_process, supervised_config

NUM_EXAMPLES_SHOWN = 20  # decoded words written to <workdir>/samples at each eval
TRAIN_LENGTH_BUCKETS = (8, 16, 24, 32)  # input and decoder lengths a train step is cropped to


class Task(SupervisedTask):
    best_metric_default = ("phoneme_error_rate", "min")

    resumable_keys = frozenset({"decoding.beam_size", "decoding.length_penalty"})

    @staticmethod
    def config_defaults() -> ml_collections.ConfigDict:
        config = supervised_config()
        # Greedy (beam_size 1) or beam-search decoding at eval.
        config.decoding = ml_collections.ConfigDict(dict(beam_size=1, length_penalty=0.0))
        config.data = ml_collections.ConfigDict(dict(length_buckets=TRAIN_LENGTH_BUCKETS))
        return config

    config_rules = {
        **SUPERVISED_RULES,
        **schema.under("decoding", beam_size=Int(low=1), length_penalty=Float(low=0)),
        **schema.under(
            "data",
            length_buckets=Named(
                Seq(Int(low=1)), "a sequence of lengths, e.g. (8, 16, 24); () for none"
            ),
        ),
    }

    @staticmethod
    def check_config(config) -> None:
        SupervisedTask.check_config(config)
        if config.data.name not in G2P_DATA_SETS:
            raise ConfigError(f"seq2seq reads {G2P_DATA_SETS}, not '{config.data.name}'")

    def __init__(self, config, data_info, data_dir=None, workdir=None):
        self.input_vocab, self.target_vocab = g2p_vocabularies()
        super().__init__(config, data_info, data_dir, workdir)

    def model_kwargs(self) -> dict:
        kwargs = super().model_kwargs()
        for key, vocab in (
            ("vocab_size", self.input_vocab),
            ("target_vocab_size", self.target_vocab),
        ):
            if not kwargs.get(key):
                kwargs[key] = vocab.size
        return kwargs

    @functools.lru_cache(maxsize=4)
    def source(self, split: str, *, train: bool):
        return g2p_source(split, self.data_dir, references=not train)

    def examples_per_epoch(self) -> int:
        return len(self.source(self.config.data.train_split, train=True))

    def init(self, rng, batch):
        params_rng, dropout_rng = jax.random.split(rng)
        return self.model.init(
            {"params": params_rng, "dropout": dropout_rng},
            batch["inputs"],
            batch["targets"][:, :-1],
            train=False,
        )

    # -------------------------------------------------------------------------------------------
    # Training
    # -------------------------------------------------------------------------------------------
    def train_step(self, state, batch, rng, step):
        """One update on the batch cropped to its length bucket (see the module docstring)."""
        shapes = bucket_shapes(
            batch["inputs"].shape[1],
            batch["targets"].shape[1],
            tuple(self.config.data.length_buckets),
        )
        if len(shapes) == 1:
            return super().train_step(state, batch, rng, step)

        def step_on(input_length: int, target_length: int):
            def bucket_step(state, batch):
                cropped = {
                    **batch,
                    "inputs": batch["inputs"][:, :input_length],
                    "targets": batch["targets"][:, :target_length],
                }
                return super(Task, self).train_step(state, cropped, rng, step)

            return bucket_step

        index = bucket_index(batch["inputs"], batch["targets"], shapes, self.target_vocab.pad_id)
        return jax.lax.switch(index, [step_on(*shape) for shape in shapes], state, batch)

    def _logits(self, apply_fn, params, model_state, batch, *, train, rng=None):
        variables = {"params": params, **model_state}
        rngs = {"dropout": rng} if rng is not None else None
        return apply_fn(
            variables, batch["inputs"], batch["targets"][:, :-1], train=train, rngs=rngs
        )

    def loss_fn(self, params, model_state, batch, rng):
        logits = self._logits(self.apply_fn, params, model_state, batch, train=True, rng=rng)
        targets = batch["targets"][:, 1:]
        mask = (targets != self.target_vocab.pad_id).astype(jnp.float32)
        per_token = losses.cross_entropy(logits, targets, self.config.loss.label_smoothing)
        cross_entropy = losses.masked_mean(per_token, mask)
        loss = losses.with_penalty(cross_entropy, params, self.config.loss)
        accuracy = losses.masked_mean(logits.argmax(-1) == targets, mask)
        return loss, ({"cross_entropy": cross_entropy, "token_accuracy": accuracy}, model_state)

    # -------------------------------------------------------------------------------------------
    # Evaluation
    # -------------------------------------------------------------------------------------------
    def decode(self, params, inputs: jax.Array, max_len: int) -> jax.Array:
        """Predicted target ids [B, max_len] (eos then pad after the end), greedy or beam."""
        d = self.config.decoding
        vocab = self.target_vocab
        if d.beam_size == 1:
            return decoding.greedy_decode(
                self.model,
                {"params": params},
                inputs,
                max_len=max_len,
                bos_id=vocab.bos_id,
                eos_id=vocab.eos_id,
            )
        sequences, _ = decoding.beam_search(
            self.model,
            {"params": params},
            inputs,
            beam_size=d.beam_size,
            max_len=max_len,
            bos_id=vocab.bos_id,
            eos_id=vocab.eos_id,
            length_penalty=d.length_penalty,
        )
        return sequences

    @functools.cached_property
    def _jitted_decode(self):
        """`decode` compiled once per task (a new jit of the bound method would recompile at
        every eval)."""
        return jax.jit(self.decode, static_argnums=2)

    def eval_step(self, state, batch) -> dict:
        logits = self._logits(state.apply_fn, state.params, state.model_state, batch, train=False)
        targets = batch["targets"][:, 1:]
        token_mask = (targets != self.target_vocab.pad_id).astype(jnp.float32)
        row_mask = batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        predicted = self.decode(state.params, batch["inputs"], targets.shape[1])
        eos_id = self.target_vocab.eos_id
        distance, reference_length = edit_distances(predicted, targets, eos_id)
        closest, closest_length = closest_edit_distances(
            predicted, batch["references"], eos_id, self.target_vocab.pad_id
        )
        return {
            "loss": (nll * token_mask * row_mask[:, None]).sum(),
            "tokens": (token_mask * row_mask[:, None]).sum(),
            "edits": (distance * row_mask).sum(),
            "reference_phonemes": (reference_length * row_mask).sum(),
            "wrong_words": ((distance > 0) * row_mask).sum(),
            "words": row_mask.sum(),
            "edits_any": (closest * row_mask).sum(),
            "reference_phonemes_any": (closest_length * row_mask).sum(),
            "wrong_words_any": ((closest > 0) * row_mask).sum(),
        }

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        """Error rates against the primary pronunciation, and (`_any`) against the closest of
        the word's pronunciations, as multi-pronunciation lexicons are usually scored."""
        words = float(sums["words"])
        return {
            "loss": float(sums["loss"]) / float(sums["tokens"]),
            "phoneme_error_rate": float(sums["edits"]) / float(sums["reference_phonemes"]),
            "word_error_rate": float(sums["wrong_words"]) / words,
            "phoneme_error_rate_any": (
                float(sums["edits_any"]) / float(sums["reference_phonemes_any"])
            ),
            "word_error_rate_any": float(sums["wrong_words_any"]) / words,
        }

    def write_eval_artifacts(self, state, sums: dict, workdir: str, step: int) -> None:
        """A few decoded words of the eval split next to their references."""
        source = self.source(self.config.data.eval_split, train=False)
        rows = source.read_rows(np.arange(min(NUM_EXAMPLES_SHOWN, len(source))))
        targets = rows["targets"][:, 1:]
        predicted = np.asarray(
            self._jitted_decode(state.params, jnp.asarray(rows["inputs"]), targets.shape[1])
        )
        if not is_main_process():
            return
        decode = self.target_vocab.decode
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "samples", f"step_{step:07d}.txt"), "w") as f:
            for word, prediction, references in zip(rows["inputs"], predicted, rows["references"]):
                known = [decode(r) for r in references if r[0] != self.target_vocab.pad_id]
                mark = "ok " if decode(prediction) in known else "ERR"
                f.write(
                    f"{mark} {self.input_vocab.decode(word, join=''):<20} "
                    f"{decode(prediction)}   (reference: {' | '.join(known)})\n"
                )


def bucket_shapes(
    input_width: int, target_width: int, buckets: tuple[int, ...] = TRAIN_LENGTH_BUCKETS
) -> list[tuple[int, int]]:
    """(input length, target length) of each bucket for batches [B, input_width] and
    [B, target_width]: bucket n holds inputs of <= n letters and decoder inputs (targets[:, :-1])
    of <= n ids; the last shape is the full width."""
    decoder_width = target_width - 1
    lengths = [n for n in sorted(buckets) if n < max(input_width, decoder_width)]
    shapes = [(min(n, input_width), min(n, decoder_width) + 1) for n in lengths]
    return [*shapes, (input_width, target_width)]


def bucket_index(
    inputs: jax.Array, targets: jax.Array, shapes: list[tuple[int, int]], pad_id: int
) -> jax.Array:
    """The first of `shapes` (from `bucket_shapes`) holding every non-pad id of the batch."""

    def used_width(ids):  # one past the last non-pad position of any row
        positions = jnp.arange(1, ids.shape[1] + 1)
        return jnp.max(jnp.where(ids != pad_id, positions, 0))

    input_fits = jnp.array([n for n, _ in shapes]) >= used_width(inputs)
    target_fits = jnp.array([n for _, n in shapes]) >= used_width(targets)
    return jnp.argmax(input_fits & target_fits)  # the last shape always fits


def sequence_lengths(ids: jax.Array, eos_id: int) -> jax.Array:
    """Tokens before the first eos (the whole row when there is none)."""
    is_eos = ids == eos_id
    return jnp.where(is_eos.any(-1), is_eos.argmax(-1), ids.shape[-1])


def edit_distances(predicted: jax.Array, reference: jax.Array, eos_id: int):
    """Levenshtein distances between rows of two id arrays, each read up to its first eos, and
    the reference lengths. Jittable: one scan over the predicted positions; the insertions along
    a row of the table are a running minimum (d[i, j] = min_k<=j e[k] + j - k)."""
    predicted_length = sequence_lengths(predicted, eos_id)
    reference_length = sequence_lengths(reference, eos_id)
    width = reference.shape[1] + 1
    columns = jnp.arange(width)
    first_row = jnp.broadcast_to(columns, (predicted.shape[0], width)).astype(jnp.int32)

    def next_row(previous, xs):
        i, token = xs  # row i of the table, predicted token i - 1
        substitution = previous[:, :-1] + (token[:, None] != reference).astype(jnp.int32)
        deletion = previous + 1
        best = jnp.concatenate(
            [jnp.full_like(previous[:, :1], i), jnp.minimum(deletion[:, 1:], substitution)], axis=1
        )
        row = jax.lax.cummin(best - columns, axis=1) + columns
        return row, row

    rows_index = jnp.arange(1, predicted.shape[1] + 1)
    _, rows = jax.lax.scan(next_row, first_row, (rows_index, predicted.T))
    table = jnp.concatenate([first_row[None], rows], axis=0)  # [S+1, B, T+1]
    batch = jnp.arange(predicted.shape[0])
    distance = table[predicted_length, batch, reference_length]
    return distance.astype(jnp.float32), reference_length.astype(jnp.float32)


def closest_edit_distances(predicted: jax.Array, references: jax.Array, eos_id: int, pad_id: int):
    """`edit_distances` of each predicted row [B, S] to the closest of its references
    [B, K, T] (rows of pad only are absent references; the first is always present), and that
    reference's length. Ties go to the earlier reference."""
    batch, k, width = references.shape
    distance, length = edit_distances(
        jnp.repeat(predicted, k, axis=0), references.reshape(batch * k, width), eos_id
    )
    distance = jnp.where(references[:, :, 0] != pad_id, distance.reshape(batch, k), jnp.inf)
    closest = jnp.argmin(distance, axis=1)[:, None]
    return (
        jnp.take_along_axis(distance, closest, 1)[:, 0],
        jnp.take_along_axis(length.reshape(batch, k), closest, 1)[:, 0],
    )
