"""word2vec (Mikolov et al. 2013): an input embedding per word (the word vectors) and an output
embedding per word, scored by dot products. Skip-gram scores a centre word against its context
word and noise words; CBOW scores the mean of the context words' input vectors against the
centre word and noise words (negative sampling in both).

Initialisation as in word2vec and gensim: input vectors uniform in [-0.5/D, 0.5/D), output
vectors zero.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlx import schema
from dlx.schema import Int

FIELD_RULES = dict(vocab_size=Int(low=0), features=Int(low=1))


def _uniform_input_init(key, shape, dtype=jnp.float32):
    scale = 0.5 / shape[-1]
    return jax.random.uniform(key, shape, dtype, -scale, scale)


class Model(nn.Module):
    vocab_size: int = 0  # 0: the task's vocabulary size
    features: int = 100

    def __post_init__(self):
        schema.check_fields("word2vec", self, FIELD_RULES)
        super().__post_init__()

    def setup(self):
        names = ("vocab", "embed")
        self.input_embedding = self.param(
            "input_embedding",
            nn.with_logical_partitioning(_uniform_input_init, names),
            (self.vocab_size, self.features),
        )
        self.output_embedding = self.param(
            "output_embedding",
            nn.with_logical_partitioning(nn.initializers.zeros, names),
            (self.vocab_size, self.features),
        )

    def __call__(self, inputs: jax.Array, targets: jax.Array, *, train: bool = False) -> jax.Array:
        """Scores [B, T] of `targets` [B, T] (word ids: the true one first, then noise words)
        given `inputs`: word ids [B] (skip-gram's centre) or [B, C] padded with -1 (CBOW's
        context, averaged)."""
        if inputs.ndim == 1:
            hidden = self.input_embedding[inputs]
        else:
            present = (inputs >= 0)[..., None]
            vectors = self.input_embedding[jnp.maximum(inputs, 0)] * present
            hidden = vectors.sum(1) / jnp.maximum(present.sum(1), 1)
        return jnp.einsum("bd,btd->bt", hidden, self.output_embedding[targets])

    def vectors(self) -> jax.Array:
        return self.input_embedding
