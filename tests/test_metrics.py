import math

import numpy as np
import torch

from harness.metrics import SegMetrics, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def brute_force(targets, preds, num_classes, ignore=255):
    """Per-pixel loops over the whole split: the definition, written the slow way."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    correct = total = 0
    for t_img, p_img in zip(targets, preds, strict=True):
        for t, p in zip(t_img.flatten().tolist(), p_img.flatten().tolist(), strict=True):
            if t == ignore:
                continue
            total += 1
            if t == p:
                tp[t] += 1
                correct += 1
            else:
                fn[t] += 1
                fp[p] += 1
    ious = []
    for c in range(num_classes):
        union = tp[c] + fp[c] + fn[c]
        ious.append(tp[c] / union if union else math.nan)
    valid = [v for v in ious if not math.isnan(v)]
    return ious, sum(valid) / len(valid), correct / total


def per_image_brute(targets, preds, num_classes, ignore=255):
    values = []
    for t, p in zip(targets, preds, strict=True):
        _, miou, _ = brute_force([t], [p], num_classes, ignore)
        values.append(miou)
    return sum(values) / len(values)


def make_split(seed=0, n=6, num_classes=5, h=7, w=9):
    rng = np.random.default_rng(seed)
    # class 4 never appears anywhere: its IoU must be NaN and excluded from the mean
    targets = rng.integers(0, num_classes - 1, size=(n, h, w))
    preds = rng.integers(0, num_classes - 1, size=(n, h, w))
    agree = rng.random((n, h, w)) < 0.5
    preds = np.where(agree, targets, preds)
    targets[rng.random((n, h, w)) < 0.1] = 255  # ignore pixels
    return torch.from_numpy(targets), torch.from_numpy(preds)


def test_dataset_level_miou_matches_brute_force_with_ignore_and_absent_class():
    targets, preds = make_split()
    metrics = SegMetrics(num_classes=5)
    for i in range(0, 6, 4):  # batches of unequal size must not change the result
        metrics.update(targets[i : i + 4], preds[i : i + 4])
    result = metrics.compute()
    ious, miou, acc = brute_force(targets, preds, 5)
    assert math.isnan(result["iou"][4]) and math.isnan(ious[4])
    np.testing.assert_allclose(result["iou"][:4], ious[:4])
    assert math.isclose(result["mIoU"], miou, rel_tol=1e-12)
    assert math.isclose(result["pixel_acc"], acc, rel_tol=1e-12)
    assert math.isclose(result["per_image_mIoU"], per_image_brute(targets, preds, 5), rel_tol=1e-12)


def test_ignored_pixels_do_not_count_even_when_predicted():
    target = torch.tensor([[0, 255], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 0]])
    cm = confusion_matrix(target, pred, 2)
    assert cm.tolist() == [[1, 0], [1, 1]]
    assert pixel_accuracy(cm) == 2 / 3
    assert torch.allclose(iou_per_class(cm), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_batch_size_does_not_change_dataset_miou():
    targets, preds = make_split(seed=3)
    whole = SegMetrics(num_classes=5)
    whole.update(targets, preds)
    single = SegMetrics(num_classes=5)
    for t, p in zip(targets, preds, strict=True):
        single.update(t[None], p[None])
    assert whole.compute()["mIoU"] == single.compute()["mIoU"]
    assert torch.equal(whole.cm, single.cm)


def test_mean_iou_of_empty_matrix_is_nan():
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.int64)))
