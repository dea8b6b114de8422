"""Shared by shakespeare_lstm.py and shakespeare_gru.py: a character-level recurrent language
model on the 42 works of Shakespeare, with the same data, windows and budget as the GPT configs
so validation losses compare at equal steps."""

from configs._shakespeare import shakespeare_lm_config


def recurrent_lm_config(cell: str, arg: str | None):
    config = shakespeare_lm_config(arg, f"shakespeare_{cell}")
    config.model = dict(
        name="recurrent",
        cell=cell,
        vocab_size=0,  # 0: the tokenizer's
        embed_dim=384,
        hidden_dim=512,
        num_layers=2,
        dropout=0.2,
    )
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 0.01
    if arg == "small":
        config.model.update(embed_dim=128, hidden_dim=256, num_layers=2, dropout=0.1)
    elif arg == "test":
        config.model.update(embed_dim=16, hidden_dim=32, num_layers=1, dropout=0.0)
    return config
