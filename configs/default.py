"""What `python launch.py` runs: the Fashion-MNIST CNN (see fashion_cnn.py)."""
from configs import fashion_cnn


def get_config(arg: str | None = None):
    return fashion_cnn.get_config(arg)
