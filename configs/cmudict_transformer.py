"""Grapheme-to-phoneme on CMUdict with the encoder-decoder Transformer (3 + 3 layers, 256 wide,
4 heads; the size of the small G2P Transformers in the literature, which report phoneme error
rate ~5-6% and word error rate ~22-25%). Eval decodes the validation words (beam search with
`--config.decoding.beam_size`). Variants: `:small` (128 wide, 8 epochs without dropout: 3,514
steps of ~0.5 s on 2 cores, ~31 min; PER 8.2% / WER 34.0% greedy on validation; with
`--config.num_epochs=20`, 75 min: 7.0% / 29.1%, and 6.7% / 28.0% against any of a word's
pronunciations), `:test` (tiny).

    python launch.py --config configs/cmudict_transformer.py:small --workdir runs/g2p_small
"""

from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config("seq2seq")
    config.data.name = "cmudict"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.batch_size = 256
    config.data.eval_batch_size = 1000
    config.model = dict(
        name="transformer",
        kind="encoder_decoder",
        vocab_size=0,
        target_vocab_size=0,  # 0: the data's alphabets
        num_layers=3,
        embed_dim=256,
        num_heads=4,
        mlp_dim=1024,
        max_len=48,
        dropout=0.1,
        tie_embeddings=False,
    )
    config.loss.label_smoothing = 0.1
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b2 = 0.98
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 1000
    config.optimizer.weight_decay = 0.01
    config.optimizer.clip_global_norm = 1.0
    config.num_epochs = 40.0
    config.eval_every_epochs = 5.0
    config.checkpoint_every_epochs = 5.0
    config.decoding.beam_size = 1
    if arg == "small":
        # A CPU budget of ~8 epochs: too few to overfit 112k words, so no dropout (its random
        # bits are ~1/4 of a step on CPU).
        config.model.update(embed_dim=128, num_heads=4, mlp_dim=512, dropout=0.0)
        config.num_epochs = 8.0
        config.optimizer.warmup_steps = 500
        config.eval_every_epochs = 2.0
        config.checkpoint_every_epochs = 1.0
    elif arg == "test":
        config.data.length_buckets = ()  # one compiled train step, not one per bucket
        config.model.update(num_layers=1, embed_dim=32, num_heads=2, mlp_dim=64, dropout=0.0)
        config.num_epochs = 0.0
        config.train_steps = 6
        config.data.batch_size = 32
        # One eval batch: decoding all 6,246 validation words is most of a tiny run's time.
        config.data.eval_split = "validation[:1000]"
        config.data.eval_batch_size = 1000
        config.optimizer.warmup_steps = 2
        config.eval_every_epochs = 0.0
        config.eval_every_steps = 3
        config.checkpoint_every_epochs = 0.0
        config.checkpoint_every_steps = 3
        config.log_every_steps = 2
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of cmudict_transformer; use small or test")
    return config
