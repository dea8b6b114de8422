"""The detection task and the YOLO-style model: cell assignment, the loss, a tiny run end to end
with its evaluator and figures, and `launch.py predict` on image files, bad ones included."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dlx.data import detection as detection_data
from dlx.models import get_model, parameter_counts, yolo
from helpers import cli, eval_records, load_config, refused, train

SPEC = "configs/fashion_detection.py:test"


def make_task(overrides: dict | None = None):
    from dlx import data
    from dlx.tasks import detection

    config = load_config(SPEC, overrides)
    return detection.Task(config, data.info(config.data.name))


@pytest.fixture(scope="module")
def task():
    return make_task()


def test_each_object_is_assigned_to_its_centre_cell_and_the_nearest_neighbours(task):
    boxes = jnp.array([[[10, 10, 40, 40], [50, 50, 90, 80], [0, 0, 0, 0]]], jnp.float32)
    labels = jnp.array([[3, 15, -1]])
    owner, assigned = task.assign((1, 12, 12), boxes, labels)
    # centre (25, 25) = cell (3.125, 3.125): its cell (3, 3), left (2, 3) and upper (3, 2)
    # centre (70, 65) = cell (8.75, 8.125): its cell (8, 8), right (9, 8) and upper (8, 7)
    cells = {(int(y), int(x)) for y, x in np.argwhere(np.asarray(assigned[0]))}
    assert cells == {(3, 3), (3, 2), (2, 3), (8, 8), (8, 9), (7, 8)}
    assert int(owner[0, 3, 3]) == 0 and int(owner[0, 8, 9]) == 1


def test_a_cell_claimed_by_two_objects_predicts_the_smaller(task):
    boxes = jnp.array([[[4, 4, 60, 60], [24, 24, 40, 40]]], jnp.float32)  # same centre cell
    owner, assigned = task.assign((1, 12, 12), boxes, jnp.array([[1, 2]]))
    assert bool(assigned[0, 4, 4]) and int(owner[0, 4, 4]) == 1


def test_the_loss_prefers_the_true_boxes(task):
    """A raw output whose decoded boxes, objectness and classes match the targets scores a lower
    loss than one that is off by a cell."""
    boxes = jnp.array([[[16, 16, 48, 48], [0, 0, 0, 0]]], jnp.float32)
    labels = jnp.array([[4, -1]])
    batch = {"boxes": boxes, "labels": labels}

    def raw_for(centre_shift: float):
        raw = np.full((1, 12, 12, 25), -6.0, np.float32)
        logit = lambda p: np.log(p / (1 - p))
        # the centre (32, 32) is cell (4, 4)'s corner: assigned to it, its left and upper
        # neighbours; each predicts it with offset 2 * sigmoid(t) - 0.5 = 4 - cell
        for y, x in [(4, 4), (4, 3), (3, 4)]:
            raw[0, y, x, 0] = logit((4 - x + 0.5) / 2) + centre_shift
            raw[0, y, x, 1] = logit((4 - y + 0.5) / 2) + centre_shift
            raw[0, y, x, 2:4] = 0.0  # side (4 * sigmoid(0))^2 * 8 = 32 px
            raw[0, y, x, 4] = 6.0
            raw[0, y, x, 5 + 4] = 6.0
        return jnp.asarray(raw)

    decoded = yolo.decode(raw_for(0.0))[0]
    for cell in [(4, 4), (4, 3), (3, 4)]:
        np.testing.assert_allclose(decoded[cell], [16, 16, 48, 48], atol=1e-3)
    good = task.combine(jax.tree.map(jnp.sum, task.loss_terms(raw_for(0.0), batch)))
    off = task.combine(jax.tree.map(jnp.sum, task.loss_terms(raw_for(2.0), batch)))
    assert float(good["box_loss"]) < 0.01 < float(off["box_loss"])
    assert float(good["loss"]) < float(off["loss"])


def test_detections_have_fixed_shapes_and_padding(task):
    raw = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 25))
    found = task.detections(raw)
    k = task.config.detection.max_detections
    assert found["boxes"].shape == (2, k, 4) and found["labels"].shape == (2, k)
    scores, labels = np.asarray(found["scores"]), np.asarray(found["labels"])
    assert (np.diff(scores, axis=1) <= 0).all()  # sorted by score
    assert ((scores > 0) == (labels >= 0)).all()


@pytest.mark.parametrize("classes_per_box", [1, 2])
def test_an_uncertain_cell_offers_its_box_under_its_likeliest_classes(classes_per_box):
    """One confident box whose class is 60/30/10 Shirt-or-T-shirt-or-Coat: with k classes a box
    it comes out under the k likeliest, each scored objectness * that class's probability."""
    task = make_task({"detection.classes_per_box": classes_per_box})
    raw = np.full((1, 12, 12, 25), -20.0, np.float32)
    raw[0, 5, 5, :4] = 0.0
    raw[0, 5, 5, 4] = 20.0  # objectness ~1
    raw[0, 5, 5, 5:] = -30.0
    raw[0, 5, 5, 5 + np.array([6, 0, 4])] = np.log([0.6, 0.3, 0.1])
    found = task.detections(jnp.asarray(raw))
    kept = np.asarray(found["scores"][0]) > 0.05
    labels, scores = np.asarray(found["labels"][0])[kept], np.asarray(found["scores"][0])[kept]
    np.testing.assert_array_equal(labels, [6, 0][:classes_per_box])
    np.testing.assert_allclose(scores, [0.6, 0.3][:classes_per_box], rtol=1e-5)
    boxes = np.asarray(found["boxes"][0])[kept]
    np.testing.assert_allclose(boxes, np.broadcast_to(boxes[0], boxes.shape))


def test_predict_shows_one_box_per_object_under_its_likeliest_class():
    from dlx.tasks.detection import shown_detections

    boxes = np.array(
        [[10, 10, 40, 40], [11, 10, 41, 40], [60, 60, 80, 80], [12, 11, 40, 41], [0, 0, 5, 5]],
        np.float32,
    )
    scores = np.array([0.9, 0.6, 0.5, 0.35, 0.2], np.float32)  # sorted, as detections are
    # the second and fourth boxes overlap the first (other classes, or the same): left out; the
    # third stands alone; the fifth is under the threshold
    np.testing.assert_array_equal(shown_detections(boxes, scores, 0.3, 0.6), [0, 2])
    np.testing.assert_array_equal(shown_detections(boxes, scores, 0.3, 0.99), [0, 1, 2, 3])
    assert len(shown_detections(boxes[:0], scores[:0], 0.3, 0.6)) == 0
    padded = np.where(np.arange(5) < 3, scores, 0.0)  # rows past the detections: score 0
    np.testing.assert_array_equal(shown_detections(boxes, padded, 0.0, 0.6), [0, 2])


def test_model_output_shape_and_receptive_field():
    model = get_model("yolo", widths=(16, 32, 64, 128), blocks=(1, 2, 2, 1))
    x = jnp.zeros((1, 96, 96, 1))
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
    assert out.shape == (1, 12, 12, yolo.BOX_FIELDS + 20)
    assert sum(parameter_counts(model, (1, 96, 96, 1)).values()) > 100_000
    from dlx.models.receptive_field import receptive_fields

    field = receptive_fields(yolo.layer_stack(model), 96)[-1].receptive_field
    assert field + 2 * yolo.STRIDE > detection_data.MAX_SIDE  # a cell sees its largest object


def test_config_errors_name_the_key(tmp_path):
    from dlx.errors import ConfigError

    with pytest.raises(ConfigError, match="num_classes=20"):
        make_task({"model.num_classes": 10})
    assert "classes_per_box=21" in refused(
        cli(
            "--config",
            SPEC,
            "--workdir",
            str(tmp_path / "run"),
            "--config.detection.classes_per_box=21",
        ),
        "config.model.num_classes",
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="4 stages"):
        get_model("yolo", widths=(8, 16, 32, 64, 128), blocks=(1, 1, 1, 1, 1))


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "detector"
    summary = train(SPEC, workdir)
    return workdir, summary


def test_tiny_detector_trains_and_evaluates_with_coco_metrics(detector_run):
    workdir, summary = detector_run
    assert summary["steps"] == 6
    record = eval_records(workdir)[-1]
    assert 0.0 <= record["map50"] <= 1.0 and 0.0 <= record["map"] <= record["map50"]
    assert np.isfinite(record["loss"])
    per_class = json.loads((workdir / "plots" / "per_class_ap.json").read_text())["classes"]
    assert list(per_class) == list(detection_data.CLASS_NAMES)
    for figure in ("detections.png", "precision_recall.png"):
        assert (workdir / "plots" / figure).stat().st_size > 1000
    assert "receptive field" in (workdir / "model_summary.txt").read_text()


def test_predict_prints_and_draws_boxes_for_image_files(detector_run, tmp_path):
    workdir, _ = detector_run
    from dlx import data

    canvas = data.source(detection_data.NAME, "test")[0]["image"][..., 0]
    grey = tmp_path / "canvas.png"
    Image.fromarray(canvas).save(grey)
    colour = tmp_path / "colour.jpg"  # another size and colour: converted, and said so
    Image.fromarray(np.stack([canvas] * 3, -1)).resize((150, 120)).save(colour)
    (tmp_path / "again").mkdir()
    same_name = tmp_path / "again" / "canvas.png"  # its drawing must not overwrite the first's
    Image.fromarray(canvas[:, ::-1]).save(same_name)
    result = cli("predict", "--workdir", str(workdir), str(grey), str(colour), str(same_name))
    assert result.code == 0, result.stderr[-2000:]
    assert f"{grey}: " in result.stdout
    assert "converted from RGB to grey; resized from 150x120 to 96x96" in result.stdout
    drawn = workdir / "predictions"
    assert (drawn / "canvas.png").exists() and (drawn / "colour.png").exists()
    assert f"drawn to {drawn / 'canvas-2.png'}" in result.stdout
    assert not np.array_equal(
        np.asarray(Image.open(drawn / "canvas.png")), np.asarray(Image.open(drawn / "canvas-2.png"))
    )


def test_predict_refuses_bad_files_in_one_line(detector_run, tmp_path):
    workdir, _ = detector_run
    refused(cli("predict", "--workdir", str(workdir)), "needs image files")
    missing = tmp_path / "no.png"
    line = refused(cli("predict", "--workdir", str(workdir), str(missing)), "does not exist")
    assert str(missing) in line  # names the file
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    line = refused(cli("predict", "--workdir", str(workdir), str(text)), "is not an image")
    assert str(text) in line


def test_the_detector_equals_its_pytorch_twin_on_the_same_weights():
    import torch

    from bench import torch_yolo

    model = get_model("yolo", widths=(4, 8, 8, 16), blocks=(1, 1, 0, 1))
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1))
    variables = nn_unbox(model.init(jax.random.PRNGKey(0), x))
    # running statistics away from their initial (0, 1), so eval mode uses them for real
    rng = np.random.default_rng(0)
    variables["batch_stats"] = jax.tree.map(
        lambda v: rng.uniform(0.5, 1.5, v.shape).astype(np.float32), variables["batch_stats"]
    )
    ours = np.asarray(model.apply(variables, x))
    net = torch_yolo.Detector.from_dlx_model(model, in_channels=1).eval()
    torch_yolo.load_dlx(net, variables)
    with torch.no_grad():
        theirs = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(ours, theirs.transpose(0, 2, 3, 1), atol=2e-5)


def nn_unbox(variables):
    import flax.linen as nn

    return jax.tree.map(np.asarray, nn.meta.unbox(variables))
