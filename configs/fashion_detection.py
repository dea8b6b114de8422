"""Object detection on `fashion_mnist_detection` (96x96 canvases with 1-6 real Fashion-MNIST
items and MNIST digits, 20 classes; dlx.data.detection): the anchor-free YOLO-style detector
(`dlx.models.yolo`, stride-8 grid) with the `detection` task (CIoU box loss, IoU-aware
objectness, class cross-entropy; NMS on device; COCO-style AP at eval).

Budget: 30 epochs are 11,250 steps of 64; 60 steps took 32 s with compilation while a DDPM
trained on the same 2 cores. Measured 2026-12-06: 3.7 steps/s alone (~55 min for the
steps, 3,524 s in all); AP@0.5 0.858 (goal 0.90) after 30 epochs,
its peak 0.876 at epoch 10 while AP@[.5:.95] kept rising (0.586 -> 0.710).

Variants: `:test` tiny (a few steps).

    python launch.py --config configs/fashion_detection.py --workdir runs/fashion_detection
    python launch.py predict --workdir runs/fashion_detection canvas.png
"""

from configs._short import short_run
from dlx.train.config import base_config

VARIANTS = ("test",)


def get_config(arg: str | None = None):
    if arg and arg not in VARIANTS:
        raise ValueError(f"fashion_detection has no variant '{arg}'; use one of {VARIANTS}")
    config = base_config("detection")
    config.data.name = "fashion_mnist_detection"
    config.data.batch_size = 64
    config.data.eval_batch_size = 250
    config.model = dict(name="yolo", num_classes=20, widths=(16, 32, 64, 128), blocks=(1, 2, 2, 1))
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 300
    config.optimizer.weight_decay = 5e-4
    config.optimizer.clip_global_norm = 10.0
    config.num_epochs = 30.0
    config.eval_every_epochs = 5.0
    config.log_every_steps = 100
    if arg == "test":
        config.model.update(widths=(4, 8, 8, 8), blocks=(0, 1, 0, 0))
        config.data.batch_size = 8
        config.data.eval_batch_size = 8
        config.data.eval_split = "test[:16]"
        config.optimizer.warmup_steps = 2
        short_run(config, steps=6, eval_every=3, checkpoint_every=3)
    return config
