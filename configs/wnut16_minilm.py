"""Named-entity recognition on WNUT-16 tweets (BIO tags, 10 entity types; seeded split of the
2,394 training tweets: 1,916 / 239 / 239) from all-MiniLM-L6-v2 (`init_from="minilm"`): a
per-token head (`pooling="none"`) on the encoder, each word's tag read at its first WordPiece
sub-token, scored by entity (precision, recall, F1 as seqeval computes them). Published WNUT-16
results (~52 F1 for BERT-base-size models) are on the official test set, a different split of
other tweets; these numbers are not comparable to them. Variants: `:test` (tiny).

    python launch.py --config configs/wnut16_minilm.py --workdir runs/wnut16_minilm
"""

from configs._short import short_run
from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config("token_classification")
    config.data.name = "wnut16"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.max_length = 80  # the longest tweet is 75 sub-tokens
    config.data.batch_size = 16
    config.data.eval_batch_size = 128
    config.init_from = "minilm"
    config.model = dict(name="transformer", pooling="none")
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-4
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule = "linear"
    config.optimizer.warmup_steps = 72  # 10% of the 6 epochs' 719 steps
    config.num_epochs = 6.0
    config.eval_every_epochs = 2.0
    config.checkpoint_every_epochs = 2.0
    config.keep_checkpoints = 1
    if arg == "test":
        config.data.max_length = 48
        config.data.batch_size = 32
        config.optimizer.warmup_steps = 0
        short_run(config, steps=4, eval_every=4, checkpoint_every=4, eval_examples=64)
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of wnut16_minilm; use test")
    return config
