"""The feature network of the sample-quality metrics (dlx/metrics/sample_quality.py: FID and
precision/recall of generated Fashion-MNIST images): the fashion_cnn classifier (two conv stages
32/64 with max pooling, dense 256 with dropout 0.3) trained for 5 epochs. Its features are the
256 ReLU activations the head reads (`dlx.models.cnn.penultimate`).

Numbers are only comparable between generators scored with the same feature network, so this
config is fixed (seed 0) and `make features` trains it into runs/fashion_features:

    python launch.py --config configs/fashion_features.py --workdir runs/fashion_features

Variants: `:test` (the fashion_cnn `:test` network, a few steps, for end-to-end tests).
"""

from configs import fashion_cnn


def get_config(arg: str | None = None):
    if arg and arg != "test":
        raise ValueError(f"fashion_features has no variant '{arg}'; use test")
    config = fashion_cnn.get_config(arg)
    config.seed = 0
    if not arg:
        config.num_epochs = 5.0
    return config
