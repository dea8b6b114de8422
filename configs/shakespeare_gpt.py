"""Character-level GPT on the 42 works of Shakespeare (nanoGPT-sized: 6 layers, 384 wide,
6 heads, context 256; ~10.7 M parameters). That size wants an accelerator: on a 2-core CPU a
step takes seconds. Variants: `:small` (4 layers, 128 wide, context 128: trains in minutes on
2 cores), `:test` (tiny, a few steps).

    python launch.py --config configs/shakespeare_gpt.py:small --workdir runs/gpt_small
    python launch.py sample --workdir runs/gpt_small --prompt "ROMEO:" --max_new_tokens 300
"""

from configs._shakespeare import shakespeare_lm_config


def get_config(arg: str | None = None):
    config = shakespeare_lm_config(arg, "shakespeare_gpt")
    config.model = dict(
        name="transformer",
        kind="decoder",
        vocab_size=0,  # 0: the tokenizer's
        num_layers=6,
        embed_dim=384,
        num_heads=6,
        max_len=256,
        dropout=0.2,
    )
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.1
    if arg == "small":
        config.model.update(num_layers=4, embed_dim=128, num_heads=4, max_len=128, dropout=0.1)
        config.optimizer.learning_rate = 2e-3
    elif arg == "test":
        config.model.update(num_layers=2, embed_dim=32, num_heads=2, max_len=32, dropout=0.0)
    return config
