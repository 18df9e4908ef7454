"""Segmentation metrics (mIoU, JSI, DSC) against hand-computed confusion matrices and the
reference's validation formula (semanticGAN/train_enc.py, restated in numpy below). numpy only."""

import io
import json

import numpy as np
import pytest

from semgan_jax.metrics import SegmentationMetrics, confusion_matrices, report

# Two 2 x 3 images, 3 classes. Image 2 has no class 2 anywhere and class 1 only in the prediction.
TARGET = np.array([[[0, 0, 1], [1, 2, 2]],
                   [[0, 0, 0], [0, 0, 0]]])
PRED = np.array([[[0, 1, 1], [1, 2, 0]],
                 [[0, 0, 0], [0, 0, 1]]])


def test_confusion_matrices_by_hand():
    conf = confusion_matrices(PRED, TARGET, 3)  # [n, target, pred]
    np.testing.assert_array_equal(conf[0], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(conf[1], [[5, 1, 0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrices(PRED[0], TARGET[0], 3), conf[:1])  # (H, W) input


def test_scores_by_hand():
    m = SegmentationMetrics(3, ["bg", "a", "b"])
    m.update(PRED, TARGET)
    r = m.result()
    assert r["num_images"] == 2 and r["confusion"] == [[6, 2, 0], [0, 2, 0], [1, 0, 1]]
    d, p = r["dataset"], r["per_image"]
    # dataset level: IoU = TP / (TP + FP + FN) from the summed matrix
    np.testing.assert_allclose(d["iou"], [6 / 9, 2 / 4, 1 / 2])
    np.testing.assert_allclose(d["dice"], [12 / 15, 4 / 6, 2 / 3])
    assert d["miou"] == pytest.approx((6 / 9 + 0.5 + 0.5) / 3)
    assert d["miou_present"] == d["miou"]
    assert d["mdice"] == pytest.approx((0.8 + 4 / 6 + 2 / 3) / 3)
    assert d["pixel_accuracy"] == pytest.approx(9 / 12)
    # per image: image 1 IoU (1/3, 2/3, 1/2); image 2 (5/6, 0 (predicted only), absent)
    np.testing.assert_allclose(p["iou"], [(1 / 3 + 5 / 6) / 2, (2 / 3 + 0) / 2, 1 / 2])
    np.testing.assert_allclose(p["dice"], [(0.5 + 10 / 11) / 2, (0.8 + 0) / 2, 2 / 3])
    assert p["images_with_class"] == [2, 2, 1]
    assert p["miou"] == pytest.approx((0.5 + (5 / 6 + 0) / 2) / 2)
    assert p["mdice"] == pytest.approx(((0.5 + 0.8 + 2 / 3) / 3 + (10 / 11 + 0) / 2) / 2)
    assert "jsi" not in r  # binary tasks only
    json.dumps(r, allow_nan=False)


def test_streaming_equals_one_batch():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 4, (7, 9, 9)), rng.integers(0, 4, (7, 9, 9))
    whole, parts = SegmentationMetrics(4), SegmentationMetrics(4)
    whole.update(pred, target)
    for i in range(7):
        parts.update(pred[i], target[i])
    assert whole.result() == parts.result()


def _reference_validate(preds, targets, k):
    """The reference's dataset-level IoU (train_enc.py `batch_intersection_union` + `validate`):
    classes shifted by 1, histogram of intersections / predictions / targets per batch, summed,
    IoU = inter / (eps + union), mIoU = mean over all k classes; pixAcc = correct / labeled."""
    inter_sum, union_sum, correct, labeled = np.zeros(k), np.zeros(k), 0, 0
    for pred, target in zip(preds, targets):
        p, t = pred + 1, target + 1
        p = p * (t > 0)
        inter = p * (p == t)
        area_inter = np.histogram(inter, bins=k, range=(1, k))[0]
        area_pred = np.histogram(p, bins=k, range=(1, k))[0]
        area_lab = np.histogram(t, bins=k, range=(1, k))[0]
        inter_sum += area_inter
        union_sum += area_pred + area_lab - area_inter
        correct += ((p == t) * (t > 0)).sum()
        labeled += (t > 0).sum()
    iou = inter_sum / (np.spacing(1) + union_sum)
    return iou, iou.mean(), correct / (np.spacing(1) + labeled)


@pytest.mark.parametrize("k,absent", [(5, None), (4, 3), (2, None)])
def test_dataset_scores_match_reference_validation(k, absent):
    """Batches of random maps (and one class never used, counting 0 in mIoU as in the reference)."""
    rng = np.random.default_rng(k)
    batches = []
    for _ in range(3):
        t, p = rng.integers(0, k, (4, 8, 8)), rng.integers(0, k, (4, 8, 8))
        if absent is not None:
            t[t == absent], p[p == absent] = 0, 0
        batches.append((p, t))
    m = SegmentationMetrics(k)
    for p, t in batches:
        m.update(p, t)
    iou, miou, acc = _reference_validate([b[0] for b in batches], [b[1] for b in batches], k)
    d = m.result()["dataset"]
    assert d["miou"] == pytest.approx(miou, abs=1e-12)
    assert d["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    for c in range(k):
        if c == absent:
            assert d["iou"][c] is None and iou[c] == 0
        else:
            assert d["iou"][c] == pytest.approx(iou[c], abs=1e-12)
    if absent is not None:
        present = [c for c in range(k) if c != absent]
        assert d["miou_present"] == pytest.approx(iou[present].mean(), abs=1e-12)
        assert "count as 0" in m.table()


def test_binary_jsi_dsc_by_hand():
    """JSI / DSC: foreground IoU / Dice per image, averaged over the images where foreground is
    in the target or the prediction; dataset-level values from the summed matrix."""
    a_t = np.zeros((3, 3), int)
    a_t[0, :3] = 1
    a_t[1, 0] = 1  # 4 foreground pixels
    a_p = np.zeros((3, 3), int)
    a_p[0, :2] = 1
    a_p[2, 2] = 1  # 3 predicted, 2 of them right: IoU 2/5, Dice 4/7
    b_t = b_p = np.zeros((3, 3), int)  # no foreground at all: no score
    c_t = np.zeros((3, 3), int)
    c_t[1, 1] = 1  # missed: IoU 0, Dice 0
    c_p = np.zeros((3, 3), int)
    m = SegmentationMetrics(2, ["background", "lesion"])
    m.update(np.stack([a_p, b_p, c_p]), np.stack([a_t, b_t, c_t]))
    r = m.result()
    assert r["jsi"] == pytest.approx((2 / 5 + 0) / 2)
    assert r["dsc"] == pytest.approx((4 / 7 + 0) / 2)
    # summed: TP 2, FP 1, FN 3
    assert r["jsi_dataset"] == pytest.approx(2 / 6)
    assert r["dsc_dataset"] == pytest.approx(4 / 8)
    assert r["per_image"]["images_with_class"] == [3, 2]
    out = io.StringIO()
    assert report(m, title="isic", file=out) == r
    text = out.getvalue()
    assert text.startswith("isic\n3 images, 2 classes") and "JSI 0.2000" in text and "lesion" in text


def test_empty_and_bad_input():
    m = SegmentationMetrics(3)
    r = m.result()
    assert r["num_images"] == 0 and r["dataset"]["miou"] is None and r["per_image"]["miou"] is None
    json.dumps(r, allow_nan=False)
    m.table()
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 4, 4), int), np.zeros((2, 4, 5), int))
    with pytest.raises(ValueError, match="integer"):
        m.update(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="outside"):
        m.update(np.full((4, 4), 3), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="background"):
        SegmentationMetrics(1)
    with pytest.raises(ValueError, match="names"):
        SegmentationMetrics(3, ["a", "b"])
