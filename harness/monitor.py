"""Checks during and after training that see what the structural audit cannot.

``UpdateMonitor`` snapshots the weights when ``fit`` starts and measures, per top-level module
(encoder, fcn, decoder, head), how far the weights moved (``||w - w0|| / ||w0||``) and the
gradient norm: once after the first K optimiser steps and at every epoch end. A module that is
meant to train (every module the config did not freeze on purpose) but did not move gets the flag
``never-updated:<module>``. Adam moves every parameter it steps by about ``lr`` per step, so a
stepped module is orders of magnitude above the threshold; an unstepped one is exactly 0.

``check_learning`` looks at a finished trial's history: a training loss that did not fall, or a
val mIoU that never rose above what predicting the majority class everywhere scores, gives
``no-learning``.

``check_mask_pairing`` looks at the training data before the first step: masks whose label
boundaries do not sit on image edges any better than other images' masks give
``masks-misaligned``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from harness.optim import top_level_modules
from harness.sanity import _fmt_count
from harness.train import Callback, StopTrial

NEVER_UPDATED = "never-updated"
NO_LEARNING = "no-learning"


class UpdateMonitor(Callback):
    """Flags modules that never move; logs ``updates/<module>`` and ``grad_norm/<module>``.

    ``steps``: the early look after this many optimiser steps (or at the first epoch end when an
    epoch has fewer steps). ``frozen_on_purpose``: modules the config froze (not flagged).
    ``stop``: end the trial at once (``StopTrial(..., "failed")``) when a module never moved.
    """

    def __init__(
        self,
        steps: int = 5,
        frozen_on_purpose: Iterable[str] = (),
        *,
        stop: bool = False,
        threshold: float = 1e-6,
    ) -> None:
        self.steps = steps
        self.frozen = set(frozen_on_purpose)
        self.stop = stop
        self.threshold = threshold
        self.step = 0
        self.checked = False
        self.params: dict[str, list[nn.Parameter]] = {}
        self.w0: dict[str, list[torch.Tensor]] = {}
        self.norm0: dict[str, float] = {}
        self.found: dict[str, str] = {}

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for name, module in top_level_modules(model):
            params = list(module.parameters())
            self.params[name] = params
            self.w0[name] = [p.detach().clone() for p in params]
            self.norm0[name] = _norm(self.w0[name])

    def measure(self) -> tuple[dict[str, float], dict[str, float]]:
        """Relative update and gradient norm (of the last step) per module."""
        updates, grads = {}, {}
        with torch.no_grad():
            for name, params in self.params.items():
                delta = _norm([p.detach() - w for p, w in zip(params, self.w0[name], strict=True)])
                n0 = self.norm0[name]
                updates[name] = delta / n0 if n0 > 0 else delta
                grads[name] = _norm([p.grad for p in params if p.grad is not None])
        return updates, grads

    def check(self, when: str) -> dict[str, str]:
        """Flags for modules meant to train whose weights did not move; ``when`` for evidence."""
        self.checked = True
        updates, grads = self.measure()
        new: dict[str, str] = {}
        for name, ratio in updates.items():
            if name in self.frozen or ratio >= self.threshold:
                continue
            params = self.params[name]
            total = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            detail = f"{_fmt_count(total)} parameters"
            if trainable == 0:
                detail += ", none of them requires_grad"
            else:
                detail += f", grad norm {grads[name]:.3g}"
            text = f"{name}: relative update {ratio:.3g} {when} ({detail})"
            new[f"{NEVER_UPDATED}:{name}"] = text
        for flag, text in new.items():
            self.found.setdefault(flag, text)
        if new and self.stop:
            raise StopTrial("; ".join(new.values()), "failed")
        return new

    def on_step_end(self, step: int, loss: float) -> None:
        self.step = step
        if step == self.steps and not self.checked:
            self.check(f"after {step} steps")

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        updates, grads = self.measure()
        row.update({f"updates/{n}": v for n, v in updates.items()})
        row.update({f"grad_norm/{n}": v for n, v in grads.items()})
        if not self.checked:  # an epoch shorter than ``steps``
            self.check(f"after {self.step} steps")

    def flags(self) -> dict[str, str]:
        return dict(self.found)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    total = 0.0
    for t in tensors:
        total += float(t.detach().double().pow(2).sum())
    return math.sqrt(total)


def majority_miou(class_pixels: Sequence[int]) -> float:
    """The mIoU of predicting the most frequent class everywhere: its IoU is its pixel share,
    every other class present scores 0, absent classes do not count (as in ``mean_iou``)."""
    total = sum(class_pixels)
    present = sum(1 for n in class_pixels if n > 0)
    if total == 0 or present == 0:
        return math.nan
    return max(class_pixels) / total / present


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


# --- are the masks the images' own? -------------------------------------------------------------

MASKS_MISALIGNED = "masks-misaligned"


def edge_alignment(images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> float:
    """Mean image gradient (|horizontal| and |vertical| neighbour differences of the channel
    mean) over the pixel pairs where the mask changes label, or NaN without any boundary.

    Annotations trace objects, and objects have edges: with the right masks the label
    boundaries sit on strong edges; with another image's masks they sit on average texture."""
    total, count = 0.0, 0
    for image, mask in zip(images, masks, strict=True):
        gray = image.float().mean(dim=0)
        m = mask.long()
        for axis in (0, 1):
            grad = gray.diff(dim=axis).abs()
            boundary = m.diff(dim=axis) != 0
            total += float(grad[boundary].sum())
            count += int(boundary.sum())
    return total / count if count else math.nan


def check_mask_pairing(
    dataset: Any, *, samples: int = 32, min_ratio: float = 1.15
) -> dict[str, str]:
    """``masks-misaligned`` when the masks the trainer gets explain the image edges no better
    than the same masks paired with other images (a fixed derangement of a sample): the
    signature of masks and images that went out of step (a shuffled or sorted file list).
    Datasets with fewer than 4 images, or without any label boundary, are not judged."""
    n = len(dataset)
    if n < 4:
        return {}
    picks = sorted({round(i * (n - 1) / (min(samples, n) - 1)) for i in range(min(samples, n))})
    items = [dataset[i] for i in picks]
    images = [image for image, _ in items]
    masks = [mask for _, mask in items]
    half = len(masks) // 2  # a derangement: every image gets a mask from far away in the sample
    shifted = masks[half:] + masks[:half]
    given, control = edge_alignment(images, masks), edge_alignment(images, shifted)
    if not (math.isfinite(given) and math.isfinite(control)) or control <= 0:
        return {}
    ratio = given / control
    if ratio >= min_ratio:
        return {}
    return {
        MASKS_MISALIGNED: (
            f"label boundaries of {len(picks)} training masks sit on image edges {ratio:.2f}x as "
            f"strong as when the masks are paired with other images (need >= {min_ratio}x): "
            "the masks do not seem to belong to their images"
        )
    }
