"""Fashion-MNIST MLP: 784-512-256-10, ReLU, dropout. Variants: `:test` (tiny)."""

from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model = dict(
        name="mlp",
        num_outputs=10,
        hidden=(512, 256),
        activation="relu",
        kernel_init="he_normal",
        dropout=0.2,
    )
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 200
    config.optimizer.weight_decay = 1e-4
    config.num_epochs = 15.0
    config.data.batch_size = 128
    if arg == "test":
        config.model.hidden = (32,)
        config.num_epochs = 0.0
        config.train_steps = 20
        config.data.batch_size = 32
        config.optimizer.warmup_steps = 5
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of fashion_mlp; use test")
    return config
