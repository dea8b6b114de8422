"""Sample quality (dlx/metrics/sample_quality.py): the Fréchet distance against scipy's matrix
square root and closed forms, precision/recall on hand-made sets and against a brute-force
reference, the feature network of a tiny trained classifier, each generator's image draws, and
the command on a tiny DCGAN run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from dlx import data as data_lib
from dlx import registry
from dlx.errors import ConfigError
from dlx.metrics import sample_quality as sq
from dlx.tasks.images import draw_images
from dlx.train import config as config_lib
from dlx.train import loop


def _covariance(rng, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_matches_scipy_sqrtm_and_the_closed_forms():
    rng = np.random.default_rng(0)
    dim = 6
    mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
    cov_a, cov_b = _covariance(rng, dim), _covariance(rng, dim)
    reference = (
        np.sum((mean_a - mean_b) ** 2)
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    )
    np.testing.assert_allclose(
        sq.frechet_distance(mean_a, cov_a, mean_b, cov_b), reference, rtol=1e-9
    )
    # Commuting (diagonal) covariances: the sum of (sqrt(a_i) - sqrt(b_i))^2.
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    np.testing.assert_allclose(
        sq.frechet_distance(mean_a, np.diag(a), mean_b, np.diag(b)),
        np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2),
        rtol=1e-12,
    )


def test_fid_of_feature_sets_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    assert abs(sq.fid(features, features)) < 1e-9 * np.trace(np.cov(features, rowvar=False))
    shift = rng.normal(size=8)
    np.testing.assert_allclose(sq.fid(features, features + shift), np.sum(shift**2), rtol=1e-8)
    # Dead units (constant features, as ReLUs give) make both covariances singular: the distance
    # is that of the live units alone.
    other = rng.normal(size=(400, 8)) * 1.5 + 0.3
    features[:, :3] = other[:, :3] = 0.0
    np.testing.assert_allclose(
        sq.fid(features, other), sq.fid(features[:, 3:], other[:, 3:]), rtol=1e-9
    )


def test_precision_recall_on_identical_far_and_hand_counted_sets():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(200, 5))
    assert sq.precision_recall(points, points.copy()) == (1.0, 1.0)
    assert sq.precision_recall(points, points + 100.0) == (0.0, 0.0)
    # On a line, k = 1: every real point's ball reaches 1 (its neighbour), so both samples are
    # realistic; the samples' balls reach 3 (each other), covering 0..6 of the ten real points.
    real = np.arange(10.0)[:, None]
    assert sq.precision_recall(real, np.array([[0.5], [3.5]]), k=1) == (1.0, 0.7)
    # A third sample far out: not realistic (precision 2/3), and its huge ball covers every
    # real point (the known weakness of k-NN recall to outliers).
    assert sq.precision_recall(real, np.array([[0.5], [3.5], [20.0]]), k=1) == (2 / 3, 1.0)


def test_batched_precision_recall_equals_a_brute_force_reference():
    rng = np.random.default_rng(3)
    real, generated = rng.normal(size=(150, 4)), rng.normal(size=(130, 4)) * 1.3 + 0.2
    k = 3

    def inside(queries, points):
        radii = np.sort(cdist(points, points), axis=1)[:, k]  # column 0: the point itself
        return (cdist(queries, points) <= radii[None, :]).any(axis=1).mean()

    expected = (inside(generated, real), inside(real, generated))
    assert 0.2 < expected[0] < 1.0 and 0.2 < expected[1] < 1.0  # a case that tells them apart
    for batch_size in (7, 1000):  # 7 divides neither set
        assert sq.precision_recall(real, generated, k, batch_size) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------
# On trained runs
# ------------------------------------------------------------------------------------------------
def _train(spec: str, workdir, **changes) -> str:
    """A tiny run on mnist5k, whose 1,000 test images make the final eval 10x cheaper than
    Fashion-MNIST's; its programs are those of the Fashion-MNIST `:test` runs of other test
    files, which the suite's compilation cache shares."""
    config = config_lib.load(spec)
    config.progress_bar = False
    config.data.name = "mnist5k"
    config.update(changes)
    loop.train_and_evaluate(config, str(workdir))
    return str(workdir)


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory):
    return _train("configs/fashion_features.py:test", tmp_path_factory.mktemp("features"))


def test_feature_network_gives_what_the_classifier_head_reads(features_dir):
    network = sq.FeatureNetwork(features_dir)
    images = network.split_images("test", 16, seed=0)
    features = network(images)
    assert images.dtype == np.uint8 and features.shape == (16, 32)  # :test has dense (32,)
    head = network.bundle.state.params["head"]
    logits = np.asarray(network.bundle({"image": images}))
    np.testing.assert_allclose(
        features @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
        logits,
        rtol=1e-4,
        atol=1e-4,
    )
    # Images as floats in [0, 1] are quantized to 8 bits like the data set's, so a generator's
    # samples and real images take the same path.
    np.testing.assert_array_equal(network(images.astype(np.float32) / 255.0), features)


@pytest.mark.parametrize("name", ["dcgan", "vae", "ddpm"])
def test_generative_tasks_draw_reproducible_images_in_the_unit_range(name):
    config = config_lib.load(f"configs/fashion_{name}.py:test")
    task = registry.task_class(config.task)(config, data_lib.info(config.data.name))
    # Random weights of the right shapes (batch-norm variances 1): compiling the models' init
    # would cost more than the sampling checked here.
    example = {"image": np.zeros((1, 28, 28, 1), np.uint8)}
    shapes = nn.meta.unbox(jax.eval_shape(task.init_state, jax.random.PRNGKey(0), example))
    rng = np.random.default_rng(0)

    def random_leaf(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return np.ones(leaf.shape, leaf.dtype)
        return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)

    state = jax.tree_util.tree_map_with_path(random_leaf, shapes)
    images = draw_images(task, state, 5, seed=1, batch_size=2)
    assert images.shape == (5, 28, 28, 1) and 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(draw_images(task, state, 5, seed=1, batch_size=2), images)
    assert not np.array_equal(draw_images(task, state, 5, seed=2, batch_size=2), images)
    assert not np.array_equal(images[:2], images[2:4])  # each batch its own noise


def test_command_scores_a_generator_and_the_floor_and_writes_json(features_dir, tmp_path):
    gan_dir = _train(
        "configs/fashion_dcgan.py:test",
        tmp_path / "gan",
        eval_every_steps=6,
        checkpoint_every_steps=6,
    )
    out = io.StringIO()
    scored = sq.main(["--features", features_dir, "--samples", gan_dir, "--num_samples", "64"], out)
    saved = json.loads((tmp_path / "gan" / sq.RESULT_FILE).read_text())
    assert saved == scored == json.loads(out.getvalue())
    assert saved["num_samples"] == saved["num_reference"] == 64 and saved["generator_step"] == 6
    assert saved["k"] == 3 and saved["reference"] == "mnist5k test[:1000]"  # the run's eval split
    floor = sq.main(["--features", features_dir, "--floor", "--num_samples", "64"], io.StringIO())
    assert json.loads((Path(features_dir) / sq.FLOOR_FILE).read_text()) == floor
    for result in (saved, floor):
        assert result["fid"] >= 0 and 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    # Train images are closer to the test images than a 6-step DCGAN's samples.
    assert floor["fid"] < saved["fid"]
    # The floor's train images, saved as another library's samples would be ([N, H, W] floats),
    # score as the floor does.
    train = sq.FeatureNetwork(features_dir).split_images("train", 64, seed=0)
    np.save(tmp_path / "train.npy", train[..., 0].astype(np.float32) / 255.0)
    from_file = sq.main(
        [
            "--features",
            features_dir,
            "--images",
            str(tmp_path / "train.npy"),
            "--num_samples",
            "64",
        ],
        io.StringIO(),
    )
    assert json.loads((tmp_path / "train.sample_quality.json").read_text()) == from_file
    assert [from_file[key] for key in ("fid", "precision", "recall")] == [
        floor[key] for key in ("fid", "precision", "recall")
    ]


def test_what_cannot_be_scored_is_one_clear_error(features_dir, tmp_path):
    with pytest.raises(ConfigError, match="task that generates images"):
        sq.main(
            ["--features", features_dir, "--samples", features_dir, "--num_samples", "64"],
            io.StringIO(),
        )
    assert not (Path(features_dir) / sq.RESULT_FILE).exists()
    with pytest.raises(ConfigError, match="num_samples > k"):
        sq.main(["--features", features_dir, "--floor", "--num_samples", "3"], io.StringIO())
    np.save(tmp_path / "rgb.npy", np.zeros((8, 28, 28, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"takes \(28, 28, 1\) images"):
        sq.main(["--features", features_dir, "--images", str(tmp_path / "rgb.npy")], io.StringIO())
