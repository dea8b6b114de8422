"""The durations of the `:test` variants: a few steps, with evals and checkpoints counted in
steps, and eval on the first `eval_examples` of its split, so an end-to-end test exercises both
cadences in seconds."""


def short_run(
    config,
    steps: int = 6,
    eval_every: int = 3,
    checkpoint_every: int = 3,
    log_every: int = 2,
    eval_examples: int = 1000,
) -> None:
    if "[" not in config.data.eval_split:  # a variant's own slice stands
        config.data.eval_split = f"{config.data.eval_split}[:{eval_examples}]"
    config.num_epochs = 0.0
    config.train_steps = steps
    config.eval_every_epochs = 0.0
    config.eval_every_steps = eval_every
    config.checkpoint_every_epochs = 0.0
    config.checkpoint_every_steps = checkpoint_every
    config.log_every_steps = log_every
