"""Grapheme-to-phoneme on CMUdict with a GRU encoder-decoder and additive (Bahdanau)
attention: the recurrent baseline next to cmudict_transformer.py (same data, eval and decoding).
Variants: `:small` (8 epochs, ~12 min on 2 cores: PER 8.6% / WER 35.3% greedy on validation;
`--config.num_epochs=20`, 29 min: 7.2% / 29.5%), `:test` (tiny).

    python launch.py --config configs/cmudict_gru_attention.py:small --workdir runs/g2p_gru
"""

from configs.cmudict_transformer import get_config as transformer_config


def get_config(arg: str | None = None):
    config = transformer_config(arg)
    config.model = dict(
        name="seq2seq",
        vocab_size=0,
        target_vocab_size=0,
        embed_dim=128,
        hidden_dim=256,
        attention="bahdanau",
        bidirectional=True,
        dropout=0.1,
    )
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 200)
    if arg == "small":
        config.model.update(embed_dim=64, hidden_dim=128, dropout=0.0)  # as transformer :small
    elif arg == "test":
        config.data.length_buckets = ()  # one compiled train step, not one per bucket
        config.model.update(embed_dim=16, hidden_dim=32, dropout=0.0)
    return config
