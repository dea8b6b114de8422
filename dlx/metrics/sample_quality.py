"""Sample quality of an image generator: the Fréchet distance (FID) and precision/recall of its
samples against real images, in the feature space of a classifier dlx trains itself.

    python -m dlx.metrics.sample_quality --features runs/fashion_features --samples runs/fashion_dcgan
    python -m dlx.metrics.sample_quality --features runs/fashion_features --floor
    python -m dlx.metrics.sample_quality --features runs/fashion_features --images torch.npy

The first draws `--num_samples` (10,000) images from the generator's workdir through its task's
`sample_images` and scores them against as many test images (`sample_quality.json` in the
generator's workdir); `--floor` scores that many train images instead (`sample_quality_floor.json`
in the feature network's workdir): what a generator that reproduced the training distribution
exactly would get with this feature network and sample size. `--images` scores the images in a
.npy file, e.g. a PyTorch reference's samples (`torch.sample_quality.json` beside it).

Features: the activations a classifier's head reads (`dlx.models.cnn.penultimate`), of the
network `configs/fashion_features.py` trains (`make features`). FID's usual Inception network
cannot be downloaded here and knows nothing of grey 28x28 clothes; numbers from different feature
networks do not compare, so every number in a table must come from the same features workdir.

- FID (Heusel et al., 2017): |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) between
  Gaussians fitted to the two feature sets, in float64.
- Precision and recall (Kynkäänniemi et al., 2019): each set's manifold is the union of balls
  around its points, each reaching to the point's k-th nearest neighbour in the set (k = 3).
  Precision is the fraction of generated points inside the real manifold (are samples
  realistic?), recall the fraction of real points inside the generated one (is the data
  covered?).

The metrics take numpy arrays and import nothing from dlx; the command at the bottom is an entry
point (like launch.py) and imports the runner's inference only when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_NUM_SAMPLES = 10_000
DEFAULT_K = 3
RESULT_FILE = "sample_quality.json"
FLOOR_FILE = "sample_quality_floor.json"


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------
def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, N - 1) of [N, D] features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(
    mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b).

    tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric matrix S_a^(1/2) S_b S_a^(1/2), which has the eigenvalues of S_a S_b (the two are
    similar). Both steps are symmetric eigendecompositions, whose eigenvalues are real and
    accurate; rounding can only push the smallest a little below zero, and those are clipped to
    0. The usual `scipy.linalg.sqrtm(S_a @ S_b)` takes the root of a non-symmetric product: with
    singular covariances (dead ReLU units, fewer samples than features) it returns complex values
    or large errors, which implementations patch with an epsilon on the diagonal.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    distance = (
        np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    )
    return float(max(distance, 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two [N, D] feature sets."""
    return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


# ------------------------------------------------------------------------------------------------
# Precision and recall
# ------------------------------------------------------------------------------------------------
def _squared_distances(
    queries: np.ndarray, points: np.ndarray, points_sq: np.ndarray
) -> np.ndarray:
    """[Q, P] squared Euclidean distances (float64; clipped at 0 against rounding)."""
    queries_sq = np.einsum("ij,ij->i", queries, queries)
    distances = queries_sq[:, None] + points_sq[None, :] - 2.0 * (queries @ points.T)
    return np.maximum(distances, 0.0)


def squared_knn_radii(
    features: np.ndarray, k: int = DEFAULT_K, batch_size: int = 1000
) -> np.ndarray:
    """The squared distance of every point to its k-th nearest other point of the set, computed
    `batch_size` rows at a time ([batch_size, N] float64 in memory)."""
    features = np.asarray(features, np.float64)
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} needs 1 <= k < the number of points ({len(features)})")
    points_sq = np.einsum("ij,ij->i", features, features)
    radii = np.empty(len(features))
    for start in range(0, len(features), batch_size):
        block = _squared_distances(features[start : start + batch_size], features, points_sq)
        # Column k of the partially sorted row: index 0 is the point itself (distance ~0).
        radii[start : start + batch_size] = np.partition(block, k, axis=1)[:, k]
    return radii


def in_manifold(
    queries: np.ndarray, points: np.ndarray, squared_radii: np.ndarray, batch_size: int = 1000
) -> np.ndarray:
    """For each query, whether it lies in at least one of the balls around `points`."""
    queries, points = np.asarray(queries, np.float64), np.asarray(points, np.float64)
    points_sq = np.einsum("ij,ij->i", points, points)
    inside = np.empty(len(queries), bool)
    for start in range(0, len(queries), batch_size):
        block = _squared_distances(queries[start : start + batch_size], points, points_sq)
        inside[start : start + batch_size] = (block <= squared_radii[None, :]).any(axis=1)
    return inside


def precision_recall(
    real: np.ndarray, generated: np.ndarray, k: int = DEFAULT_K, batch_size: int = 1000
) -> tuple[float, float]:
    """Kynkäänniemi et al.'s improved precision and recall of `generated` [M, D] against `real`
    [N, D] features, with k-nearest-neighbour balls. Memory: [batch_size, max(N, M)] float64
    (80 MB for 10,000 points and the default batch)."""
    real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
    precision = in_manifold(
        generated, real, squared_knn_radii(real, k, batch_size), batch_size
    ).mean()
    recall = in_manifold(
        real, generated, squared_knn_radii(generated, k, batch_size), batch_size
    ).mean()
    return float(precision), float(recall)


def sample_quality(real: np.ndarray, generated: np.ndarray, k: int = DEFAULT_K) -> dict:
    """FID, precision and recall of `generated` against `real` features."""
    precision, recall = precision_recall(real, generated, k)
    return {"fid": fid(real, generated), "precision": precision, "recall": recall}


# ------------------------------------------------------------------------------------------------
# Features of images, from a classifier dlx trained
# ------------------------------------------------------------------------------------------------
class FeatureNetwork:
    """A classification run with a `cnn` model, loaded from its workdir: called on images
    ([N, H, W, C], uint8 or floats in [0, 1]) it gives their [N, D] penultimate activations.

    Floats are rounded to 8 bits first, so generated images pass through the same quantization
    as the data set's."""

    def __init__(self, workdir: str, batch_size: int = 1000):
        import jax

        from dlx import inference
        from dlx.errors import ConfigError
        from dlx.models import cnn
        from dlx.tasks.base import model_inputs
        from dlx.train import sharding

        bundle = inference.load(workdir)
        config = bundle.config
        if config.task != "classification" or config.model.name != "cnn":
            raise ConfigError(
                f"{workdir} is a '{config.task}' run of the model "
                f"'{config.model.name}'; the feature network must be a "
                f"classification run of a cnn (make features trains "
                f"configs/fashion_features.py)"
            )
        self.workdir, self.bundle = workdir, bundle
        self.data_name, self.data_dir = config.data.name, config.data.data_dir or None
        self.image_shape = tuple(bundle.run.data_info.features["image"].shape)
        parallel = sharding.data_parallel_size(bundle.run.mesh)
        self.batch_size = -(-batch_size // parallel) * parallel
        self._shard = lambda images: sharding.shard_batch({"image": images}, bundle.run.mesh)
        self._features = jax.jit(
            lambda state, batch: cnn.penultimate(
                state.apply_fn, {"params": state.params, **state.model_state}, model_inputs(batch)
            )
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from dlx.train import loop

        images = np.asarray(images)
        if images.shape[1:] != self.image_shape:
            raise ValueError(
                f"images of shape {images.shape[1:]}; the feature network takes {self.image_shape}"
            )
        if images.dtype != np.uint8:
            images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
        parts = []
        with loop._tracing_context(self.bundle.run.mesh, self.bundle.config):
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                padded = np.zeros((self.batch_size, *self.image_shape), np.uint8)
                padded[: len(batch)] = batch
                features = self._features(self.bundle.state, self._shard(padded))
                parts.append(np.asarray(features)[: len(batch)])
        return np.concatenate(parts).astype(np.float64)

    def split_images(self, split: str, count: int, seed: int) -> np.ndarray:
        """`count` images of the feature network's data set, all of `split` if it has no more,
        else a random subset (without replacement, from `seed`)."""
        from dlx import data as data_lib

        source = data_lib.source(self.data_name, split, self.data_dir)
        if count >= len(source):
            rows = np.arange(len(source))
        else:
            rows = np.sort(np.random.default_rng(seed).choice(len(source), count, replace=False))
        return data_lib.read_rows(source, rows)["image"]


def _test_accuracy(workdir: str) -> float | None:
    path = os.path.join(workdir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("final_eval", {}).get("accuracy")


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------
def score_generator(
    features_dir: str,
    samples_dir: str,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    k: int = DEFAULT_K,
    batch_size: int = 500,
) -> dict:
    """Draws `num_samples` images from the generator run in `samples_dir` and scores them against
    as many test images; writes the result to `<samples_dir>/sample_quality.json`."""
    from dlx import inference
    from dlx.errors import ConfigError
    from dlx.tasks.images import draw_images
    from dlx.train import loop

    _check_counts(num_samples, k)
    generator = inference.load(samples_dir)
    if not hasattr(generator.task, "sample_images"):
        raise ConfigError(
            f"{samples_dir} is a '{generator.config.task}' run; score a run of a "
            f"task that generates images (gan, vae, diffusion)"
        )
    network = FeatureNetwork(features_dir)
    if generator.config.data.name != network.data_name:
        raise ConfigError(
            f"{samples_dir} was trained on {generator.config.data.name}, the feature "
            f"network in {features_dir} on {network.data_name}; use one trained "
            f"on the generator's data"
        )
    started = time.time()
    with loop._tracing_context(generator.run.mesh, generator.config):
        images = draw_images(generator.task, generator.state, num_samples, seed, batch_size)
    sampling_s = time.time() - started
    reference = network.split_images(generator.config.data.eval_split, num_samples, seed)
    result = {
        **sample_quality(network(reference), network(images), k),
        "generator": os.path.abspath(samples_dir),
        "generator_step": generator.step,
        **_common_fields(network, num_samples, len(reference), seed, k),
        "reference": f"{network.data_name} {generator.config.data.eval_split}",
        "sampling_s": round(sampling_s, 1),
        "wall_time_s": round(time.time() - started, 1),
    }
    _write(os.path.join(samples_dir, RESULT_FILE), result)
    return result


def score_images(
    features_dir: str,
    images_path: str,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    k: int = DEFAULT_K,
    eval_split: str = "test",
) -> dict:
    """Scores the first `num_samples` images of a .npy file ([N, H, W] or [N, H, W, C], uint8 or
    floats in [0, 1]; e.g. a PyTorch model's samples) against as many `eval_split` images; writes
    `<file without .npy>.sample_quality.json`."""
    from dlx.errors import ConfigError

    _check_counts(num_samples, k)
    if not os.path.isfile(images_path):
        raise ConfigError(f"no file {images_path}; give a .npy file of images")
    images = np.load(images_path)[:num_samples]
    network = FeatureNetwork(features_dir)
    if images.ndim == len(network.image_shape):  # [N, H, W]: no channel axis
        images = images[..., None]
    floats = np.issubdtype(images.dtype, np.floating)
    if (
        images.shape[1:] != network.image_shape
        or not (floats or images.dtype == np.uint8)
        or floats
        and (images.min() < 0.0 or images.max() > 1.0)
    ):
        raise ConfigError(
            f"{images_path} holds {images.dtype} images of shape "
            f"{images.shape[1:]}; the feature network takes {network.image_shape} "
            f"images, uint8 or floats in [0, 1]"
        )
    if len(images) <= k:
        raise ConfigError(f"{images_path} holds {len(images)} images; k={k} needs more than k")
    started = time.time()
    reference = network.split_images(eval_split, len(images), seed)
    result = {
        **sample_quality(network(reference), network(images), k),
        "generated": os.path.abspath(images_path),
        **_common_fields(network, len(images), len(reference), seed, k),
        "reference": f"{network.data_name} {eval_split}",
        "wall_time_s": round(time.time() - started, 1),
    }
    _write(images_path.removesuffix(".npy") + ".sample_quality.json", result)
    return result


def score_floor(
    features_dir: str,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    k: int = DEFAULT_K,
    train_split: str = "train",
    test_split: str = "test",
) -> dict:
    """`num_samples` train images scored as if generated, against as many test images; writes
    `<features_dir>/sample_quality_floor.json`."""
    _check_counts(num_samples, k)
    network = FeatureNetwork(features_dir)
    started = time.time()
    train = network.split_images(train_split, num_samples, seed)
    test = network.split_images(test_split, num_samples, seed)
    result = {
        **sample_quality(network(test), network(train), k),
        "generated": f"{network.data_name} {train_split} ({len(train)} images)",
        **_common_fields(network, len(train), len(test), seed, k),
        "reference": f"{network.data_name} {test_split}",
        "wall_time_s": round(time.time() - started, 1),
    }
    _write(os.path.join(features_dir, FLOOR_FILE), result)
    return result


def _check_counts(num_samples: int, k: int) -> None:
    from dlx.errors import ConfigError

    if k < 1 or num_samples <= k:
        raise ConfigError(
            f"need k >= 1 and num_samples > k, got num_samples={num_samples} and k={k}"
        )


def _common_fields(
    network: FeatureNetwork, num_generated: int, num_reference: int, seed: int, k: int
) -> dict:
    return {
        "num_samples": num_generated,
        "num_reference": num_reference,
        "seed": seed,
        "k": k,
        "features": os.path.abspath(network.workdir),
        "features_step": network.bundle.step,
        "features_test_accuracy": _test_accuracy(network.workdir),
    }


def _write(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def main(argv: list[str], out=sys.stdout) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m dlx.metrics.sample_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--features", required=True, help="workdir of the feature classifier (make features)"
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--samples", help="workdir of the generator run to score")
    which.add_argument(
        "--images",
        help="a .npy file of images to score (e.g. another "
        "library's samples): [N, H, W(, C)], uint8 or floats in [0, 1]",
    )
    which.add_argument(
        "--floor", action="store_true", help="score train images against test images instead"
    )
    parser.add_argument("--num_samples", type=int, default=DEFAULT_NUM_SAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument(
        "--batch_size",
        type=int,
        default=500,
        help="samples drawn at a time (lower it if sampling runs out of memory)",
    )
    args = parser.parse_args(argv)
    if args.floor:
        result = score_floor(args.features, args.num_samples, args.seed, args.k)
    elif args.images:
        result = score_images(args.features, args.images, args.num_samples, args.seed, args.k)
    else:
        result = score_generator(
            args.features, args.samples, args.num_samples, args.seed, args.k, args.batch_size
        )
    out.write(json.dumps(result, indent=1) + "\n")
    return result


def _entry_point(argv: list[str]) -> None:
    from dlx.errors import UserError
    from dlx.runtime import reexec_with_malloc_policy

    try:
        reexec_with_malloc_policy()
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    _entry_point(sys.argv[1:])
