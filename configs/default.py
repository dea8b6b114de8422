"""What `python launch.py` (and so `make demo`) runs: the Fashion-MNIST CNN for 5 epochs."""

from configs import fashion_cnn


def get_config(arg: str | None = None):
    return fashion_cnn.get_config(arg or "demo")
