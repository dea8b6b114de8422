"""dlx.metrics.detection: COCO AP equal to pycocotools' COCOeval on the same detections."""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from dlx.metrics import detection

pycocotools_coco = pytest.importorskip("pycocotools.coco")
pycocotools_eval = pytest.importorskip("pycocotools.cocoeval")


def coco_reference(
    pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels, num_classes, *, max_detections=100
):
    """COCOeval(iouType="bbox") on the same data: area range "all", maxDets [max_detections].
    Returns its precision [T, R, C] and the per-class / mean APs its summarize() would print."""
    num_images = len(gt_labels)
    images = [{"id": n + 1} for n in range(num_images)]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]

    def xywh(box):
        x0, y0, x1, y1 = (float(v) for v in box)  # float32 -> float64 exactly
        return [x0, y0, x1 - x0, y1 - y0]

    annotations = []
    for n in range(num_images):
        for box, label in zip(gt_boxes[n], gt_labels[n]):
            if label >= 0:
                bbox = xywh(box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": n + 1,
                        "category_id": int(label) + 1,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                    }
                )
    results = [
        {"image_id": n + 1, "category_id": int(label) + 1, "bbox": xywh(box), "score": float(score)}
        for n in range(num_images)
        for box, score, label in zip(pred_boxes[n], pred_scores[n], pred_labels[n])
        if score > 0 and label >= 0
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = pycocotools_coco.COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = pycocotools_coco.COCO()
            dt.dataset = {"images": images, "categories": categories, "annotations": []}
            dt.createIndex()
        evaluation = pycocotools_eval.COCOeval(gt, dt, iouType="bbox")
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        evaluation.params.maxDets = [max_detections]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][:, :, :, 0, 0]  # [T, R, C]

    def summarized(values):  # COCOeval.summarize's mean
        return float(np.mean(values[values > -1])) if (values > -1).any() else -1.0

    return {
        "precision": precision,
        "ap50": np.array([summarized(precision[0, :, c]) for c in range(num_classes)]),
        "ap": np.array([summarized(precision[:, :, c]) for c in range(num_classes)]),
        "map50": summarized(precision[0]),
        "map": summarized(precision),
    }


def assert_equals_coco(*arrays, num_classes, max_detections=100):
    ours = detection.average_precision(*arrays, num_classes, max_detections=max_detections)
    reference = coco_reference(*arrays, num_classes, max_detections=max_detections)
    for key in ("precision", "ap50", "ap", "map50", "map"):
        np.testing.assert_allclose(ours[key], reference[key], rtol=0, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(ours["curves50"], reference["precision"][0].T, atol=1e-6)
    return ours


def random_boxes(rng, shape, canvas=96.0, min_side=4.0, max_side=40.0):
    size = rng.uniform(min_side, max_side, shape + (2,))
    corner = rng.uniform(0, canvas - size)
    return np.concatenate([corner, corner + size], axis=-1).astype(np.float32)


def jittered(rng, boxes, scale):
    return (boxes + rng.normal(0, scale, boxes.shape)).astype(np.float32)


def ground_truth(rng, num_images, max_objects, num_classes, classes=None):
    boxes = random_boxes(rng, (num_images, max_objects))
    labels = rng.choice(classes if classes is not None else num_classes, (num_images, max_objects))
    count = rng.randint(0, max_objects + 1, num_images)
    labels = np.where(np.arange(max_objects) < count[:, None], labels, -1)
    return np.where(labels[..., None] >= 0, boxes, 0).astype(np.float32), labels


def noisy_predictions(rng, gt_boxes, gt_labels, num_preds, num_classes):
    """Per image: jittered copies of the ground truth (labels sometimes wrong), then random
    boxes, random scores; the last few slots padding."""
    n, m = gt_labels.shape
    boxes = random_boxes(rng, (n, num_preds))
    labels = rng.randint(0, num_classes, (n, num_preds))
    copies = min(m, num_preds)
    boxes[:, :copies] = jittered(rng, gt_boxes[:, :copies], 3.0)
    relabel = rng.rand(n, copies) < 0.15
    labels[:, :copies] = np.where(
        (gt_labels[:, :copies] >= 0) & ~relabel, gt_labels[:, :copies], labels[:, :copies]
    )
    scores = rng.rand(n, num_preds).astype(np.float32)
    scores[:, :copies] += 0.5 * (gt_labels[:, :copies] >= 0)
    scores[:, -2:] = 0.0  # padding by score
    labels[:, -3] = -1  # padding by label
    return boxes, scores, labels


# --- parity with pycocotools --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predictions_equal_cocoeval(seed):
    rng = np.random.RandomState(seed)
    gt = ground_truth(rng, 40, 6, 5)
    preds = noisy_predictions(rng, *gt, 15, 5)
    ours = assert_equals_coco(*preds, *gt, num_classes=5)
    assert 0.1 < ours["map50"] < 0.95 and ours["map"] < ours["map50"]


def test_perfect_predictions_have_ap_one_and_absent_classes_minus_one():
    rng = np.random.RandomState(3)
    gt_boxes, gt_labels = ground_truth(rng, 20, 6, 6, classes=[0, 1, 2, 4])
    scores = rng.uniform(0.1, 1.0, gt_labels.shape)
    ours = assert_equals_coco(gt_boxes, scores, gt_labels, gt_boxes, gt_labels, num_classes=6)
    np.testing.assert_array_equal(ours["ap50"], [1, 1, 1, -1, 1, -1])
    np.testing.assert_array_equal(ours["ap"], [1, 1, 1, -1, 1, -1])
    assert ours["map50"] == ours["map"] == 1.0


def test_empty_predictions_have_ap_zero():
    rng = np.random.RandomState(4)
    gt_boxes, gt_labels = ground_truth(rng, 10, 4, 3)
    boxes = random_boxes(rng, (10, 8))
    ours = assert_equals_coco(
        boxes, np.zeros((10, 8)), np.zeros((10, 8), int), gt_boxes, gt_labels, num_classes=3
    )
    assert ours["map50"] == ours["map"] == 0.0
    # No ground truth at all: every class -1, and so are the means.
    ours = assert_equals_coco(
        boxes,
        np.zeros((10, 8)),
        np.zeros((10, 8), int),
        gt_boxes,
        np.full((10, 4), -1),
        num_classes=3,
    )
    assert ours["map50"] == ours["map"] == -1.0 and (ours["ap"] == -1).all()


def test_images_without_ground_truth_count_their_detections_as_false_positives():
    rng = np.random.RandomState(5)
    gt_boxes, gt_labels = ground_truth(rng, 30, 5, 4)
    gt_labels[::2] = -1  # every other image holds nothing
    preds = noisy_predictions(rng, gt_boxes, gt_labels, 10, 4)
    assert_equals_coco(*preds, gt_boxes, gt_labels, num_classes=4)


def test_crowded_images_of_one_class_with_duplicate_ground_truths():
    rng = np.random.RandomState(6)
    n, m = 6, 40
    centres = rng.uniform(30, 66, (n, m, 2))
    sides = rng.uniform(10, 24, (n, m, 2))
    gt_boxes = np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)
    gt_boxes[:, 1] = gt_boxes[:, 0]  # identical ground truths: ties go to the later one
    gt_boxes = np.round(gt_boxes)  # pixel edges: IoUs land exactly on thresholds too
    gt_labels = np.zeros((n, m), int)
    gt_labels[:, -5:] = 1
    boxes = np.concatenate([jittered(rng, gt_boxes, 2.0), random_boxes(rng, (n, 30))], axis=1)
    boxes[:, :m:3] = np.round(boxes[:, :m:3])
    scores = rng.rand(n, m + 30)
    scores[:, ::7] = 0.5  # ties in score across images and within them
    labels = (rng.rand(n, m + 30) < 0.1).astype(int)
    assert_equals_coco(boxes, scores, labels, gt_boxes, gt_labels, num_classes=2)


def test_duplicate_detections_and_score_ties():
    rng = np.random.RandomState(7)
    gt_boxes, gt_labels = ground_truth(rng, 15, 5, 3)
    repeats = 3
    boxes = np.concatenate([jittered(rng, gt_boxes, 1.0) for _ in range(repeats)], axis=1)
    labels = np.tile(np.where(gt_labels >= 0, gt_labels, 0), repeats)
    scores = np.tile(rng.choice([0.3, 0.6, 0.9], gt_labels.shape), repeats)  # many ties
    scores = np.where(np.tile(gt_labels, repeats) >= 0, scores, 0.0)
    ours = assert_equals_coco(boxes, scores, labels, gt_boxes, gt_labels, num_classes=3)
    assert ours["map50"] < 1.0  # the duplicates are false positives


def test_classes_never_predicted_and_never_present():
    rng = np.random.RandomState(8)
    gt_boxes, gt_labels = ground_truth(rng, 25, 6, 8, classes=[0, 1, 2, 3, 4])  # 5-7 absent
    boxes, scores, labels = noisy_predictions(rng, gt_boxes, gt_labels, 12, 8)
    labels[labels == 2] = 6  # class 2 never predicted, 6 predicted but never present
    ours = assert_equals_coco(boxes, scores, labels, gt_boxes, gt_labels, num_classes=8)
    assert ours["ap50"][2] == 0.0 and ours["ap50"][6] == -1.0


def test_max_detections_apply_per_image_and_class():
    rng = np.random.RandomState(9)
    gt_boxes, gt_labels = ground_truth(rng, 20, 6, 2)
    preds = noisy_predictions(rng, gt_boxes, gt_labels, 30, 2)
    for max_detections in (3, 10):
        assert_equals_coco(
            *preds, gt_boxes, gt_labels, num_classes=2, max_detections=max_detections
        )


def test_degenerate_predicted_boxes():
    rng = np.random.RandomState(10)
    gt_boxes, gt_labels = ground_truth(rng, 20, 4, 2)
    boxes, scores, labels = noisy_predictions(rng, gt_boxes, gt_labels, 10, 2)
    boxes[:, 5, 2] = boxes[:, 5, 0] - 3  # negative width: ignored when unmatched
    boxes[:, 6, 2:] = boxes[:, 6, :2] - 2  # both negative: a false positive
    boxes[:, 7, 2:] = boxes[:, 7, :2]  # zero area
    assert_equals_coco(boxes, scores, labels, gt_boxes, gt_labels, num_classes=2)


def test_hand_computed_ap():
    # One class, two objects; detections by score: hit, miss, hit (IoU exactly 0.5).
    gt_boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32)
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 25]]], np.float32)
    ours = assert_equals_coco(
        boxes,
        np.array([[0.9, 0.8, 0.7]]),
        np.zeros((1, 3), int),
        gt_boxes,
        np.zeros((1, 2), int),
        num_classes=1,
    )
    # Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: 1 up to recall 0.5, then 2/3.
    assert ours["ap50"][0] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    np.testing.assert_allclose(ours["curves50"][0, :51], 1.0)
    np.testing.assert_allclose(ours["curves50"][0, 51:], 2 / 3)
    # Above IoU 0.5 the second object is missed: AP = 51/101 at each of the 9 others.
    assert ours["ap"][0] == pytest.approx(((51 + 50 * 2 / 3) + 9 * 51) / 101 / 10, abs=1e-12)


def test_ties_in_iou_go_to_the_later_ground_truth():
    # The first detection overlaps both objects equally (IoU 2/3). COCOeval gives it the later
    # one (B), which leaves A for the second detection (IoU 0.9 with A, 0.36 with B): 2 hits.
    gt_boxes = np.array([[[0, 0, 10, 10], [4, 0, 14, 10]]], np.float32)
    boxes = np.array([[[2, 0, 12, 10], [0, 0, 9, 10]]], np.float32)
    ours = assert_equals_coco(
        boxes,
        np.array([[0.9, 0.8]]),
        np.zeros((1, 2), int),
        gt_boxes,
        np.zeros((1, 2), int),
        num_classes=1,
    )
    assert ours["ap50"][0] == 1.0


def test_checks_its_inputs():
    boxes, scores, labels = np.zeros((2, 3, 4)), np.ones((2, 3)), np.zeros((2, 3), int)
    with pytest.raises(ValueError, match="gt_boxes"):
        detection.average_precision(boxes, scores, labels, np.zeros((2, 4)), labels, 2)
    with pytest.raises(ValueError, match="pred_labels reach 5"):
        detection.average_precision(boxes, scores, labels + 5, boxes, labels, 2)


# --- precision-recall curves --------------------------------------------------------------------


def test_pr_curves_and_their_figure(tmp_path):
    rng = np.random.RandomState(11)
    gt = ground_truth(rng, 30, 6, 6, classes=[0, 1, 2, 3, 4])
    ours = detection.average_precision(*noisy_predictions(rng, *gt, 12, 6), *gt, 6)
    curves = ours["curves50"]
    assert curves.shape == (6, 101) and ours["recall_thresholds"].shape == (101,)
    assert (curves[5] == -1).all() and (curves[:5] >= 0).all() and (curves[:5] <= 1).all()
    assert (np.diff(curves[:5], axis=1) <= 0).all()  # the monotone envelope
    np.testing.assert_allclose(curves.mean(axis=1)[:5], ours["ap50"][:5])
    path = tmp_path / "pr.png"
    detection.pr_curve_figure(curves, [f"class {c}" for c in range(6)], str(path), columns=3)
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 300  # 3 x 2 panels
