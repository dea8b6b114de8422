"""Character-level GRU language model on Shakespeare (2 layers, 512 hidden, context 256).
Variants: `:small` (minutes on 2 cores), `:test` (tiny)."""

from configs._shakespeare_rnn import recurrent_lm_config


def get_config(arg: str | None = None):
    return recurrent_lm_config("gru", arg)
