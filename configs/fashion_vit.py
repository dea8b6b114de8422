"""Fashion-MNIST Vision Transformer from scratch (dlx/models/vit.py) with a convolutional stem:
two stride-2 3x3 convolutions (64, 128 wide, batch norm, ReLU) and a 1x1 projection make the 7x7
grid of 49 tokens that 4x4 patches would (Xiao et al. 2021), fixed 2-D sinusoidal positions, 6
pre-norm blocks 128 wide with 4 heads of 32 and an MLP of 256, mean pooling (888k parameters);
AdamW (lr 1e-3, weight decay 0.05, gradients clipped to norm 1) with 1000 warmup steps and
cosine decay, label smoothing 0.1, batch 128, 34 epochs, random crops (2 pixels) and flips (the
recipe of small ViTs trained from scratch on CIFAR-size images: lr 1e-3 at batch 128, warmup,
label smoothing; DeiT's weight decay; mean pooling and fixed positions as in the "better plain
ViT baselines"). Scored with test-time augmentation: each test image, moved 1 pixel in each of
four directions and mirrored, 10 views whose softmaxes are averaged (`augment.eval_shifts`,
`augment.eval_flip`).

Budget (<= 2 h on 2 cores): 34 epochs are 15,938 steps at 0.36-0.50 s a step on this project's
2-core host (2.0-2.8 steps/s as the host's speed varies). Measured 2026-12-07, alone on the
host: 93.18% test accuracy with the 10 views (goal 93.0%), 93.17% with the 5 shifted views,
92.90% with flips alone, 92.56% on the image alone; 6,638 s; 89.0% after 12 epochs, 92.0% after
24 (flips); train accuracy under augmentation ~94.4% at the end. The same recipe for 36 epochs
(6,530 s) scored 93.33% / 93.12% / 92.85% / 92.60%: two more epochs bought nothing beyond the
run-to-run spread. With the plain 4x4 patch projection (`model.stem=patch`, 799k parameters)
and 36 epochs the recipe reached 92.16% with flips (87.0% after 12 epochs, 90.9% after 24) in
6,178 s; the first recipe (class token, learned positions, stochastic depth 0.1, random erasing
0.25, 30 epochs) underfit: train accuracy ~88.5%, below test, and 90.58% (90.80% with flips).

Variants: `:small` (one epoch), `:test` (tiny, for end-to-end tests).

    python launch.py --config configs/fashion_vit.py --workdir runs/fashion_vit
"""

from configs._short import short_run
from dlx.train.config import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.data.name = "fashion_mnist"
    config.model = dict(
        name="vit",
        num_outputs=10,
        patch_size=4,
        num_layers=6,
        embed_dim=128,
        num_heads=4,
        mlp_dim=256,
        dropout=0.0,
        drop_path=0.0,
        pool="mean",
        positions="sinusoidal",
        stem="conv",
    )
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 1000
    config.optimizer.weight_decay = 0.05
    config.optimizer.clip_global_norm = 1.0
    config.loss.label_smoothing = 0.1
    # Random erasing and stochastic depth left this network underfitting its budget (see above).
    config.augment.update(crop_padding=2, flip=True, eval_flip=True, eval_shifts=1)
    config.num_epochs = 34.0
    config.eval_every_epochs = 12.0
    config.data.batch_size = 128
    if arg == "small":
        config.num_epochs = 1.0
        config.eval_every_epochs = 1.0
        config.optimizer.warmup_steps = 100
    elif arg == "test":
        config.model.update(patch_size=4, num_layers=2, embed_dim=16, num_heads=2, mlp_dim=32)
        config.data.batch_size = 32
        config.data.eval_batch_size = 200
        config.optimizer.warmup_steps = 2
        short_run(config)
    elif arg:
        raise ValueError(f"unknown variant '{arg}' of fashion_vit; use small or test")
    return config
