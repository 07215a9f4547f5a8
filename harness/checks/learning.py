"""The learning check: did a finished trial learn anything at all?

A training loss that did not fall, or a val mIoU that never rose above what predicting the
majority class everywhere scores (the no-learning level), gives ``no-learning``. The two
no-learning levels themselves (``majority_miou``, ``prior_loss``) are logged every epoch, for this
check and the study-level detector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.checks.flags import NO_LEARNING


def majority_miou(class_pixels: Sequence[int]) -> float:
    """The mIoU of predicting the most frequent class everywhere: its IoU is its pixel share,
    every other class present scores 0, absent classes do not count (as in ``mean_iou``)."""
    total = sum(class_pixels)
    present = sum(1 for n in class_pixels if n > 0)
    if total == 0 or present == 0:
        return math.nan
    return max(class_pixels) / total / present


def prior_loss(class_pixels: Sequence[int]) -> float:
    """The cross-entropy of predicting the class frequencies everywhere (the entropy of the
    pixel shares, in nats): the lowest loss a model that ignores its images can reach. A model
    that learns anything from its images ends below it, even while it still predicts the
    majority class everywhere (a DeconvNet without decoder BN: val/loss 0.77 against 0.93 on the
    built-in data); one whose decoder never trains ends at it or above."""
    total = sum(class_pixels)
    if total == 0:
        return math.nan
    return -sum(n / total * math.log(n / total) for n in class_pixels if n > 0)


def check_learning(
    history: Sequence[Mapping[str, Any]],
    baseline_miou: float,
    *,
    min_epochs: int = 3,
    miou_min_epochs: int = 5,
    min_fall: float = 0.05,
    margin: float = 0.01,
) -> dict[str, str]:
    """``no-learning`` with its evidence, or nothing. After ``min_epochs`` epochs the training
    loss must have fallen by at least ``min_fall`` (relative, first to best epoch); after
    ``miou_min_epochs`` the best val mIoU must beat the majority-class baseline by more than
    ``margin`` (a correct model can sit at that level for its first epochs)."""
    if len(history) < min_epochs:
        return {}
    reasons = []
    losses = [float(r["train/loss"]) for r in history]
    first, lowest = losses[0], min(losses)
    if math.isfinite(first) and first > 0 and (first - lowest) / first < min_fall:
        reasons.append(
            f"training loss {first:.4g} -> {lowest:.4g} over {len(history)} epochs "
            f"(fell {100 * (first - lowest) / first:.1f}%, need {100 * min_fall:.0f}%)"
        )
    mious = [float(r["val/mIoU"]) for r in history if not math.isnan(float(r["val/mIoU"]))]
    judged = len(history) >= miou_min_epochs and mious and math.isfinite(baseline_miou)
    if judged and max(mious) <= baseline_miou + margin:
        reasons.append(
            f"val mIoU at most {max(mious):.3f}, majority-class baseline {baseline_miou:.3f}"
        )
    return {NO_LEARNING: "; ".join(reasons)} if reasons else {}
