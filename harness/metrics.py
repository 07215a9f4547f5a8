"""Segmentation metrics from a confusion matrix accumulated over a whole split.

The primary metric is the dataset-level mIoU: one confusion matrix over every pixel of the split
(rows target, columns prediction, ignore pixels dropped), IoU_c = TP / (TP + FP + FN), averaged
over the classes whose union is non-zero. It does not depend on the batch size, unlike the
per-batch average the course baseline reported. The per-image mean mIoU (what the leaderboard
reportedly used) is kept as a named secondary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def confusion_matrix(
    target: torch.Tensor, pred: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """[C, C] int64 counts, rows = target class, columns = predicted class."""
    keep = target != ignore_index
    t = target[keep].long()
    p = pred[keep].long()
    idx = t * num_classes + p
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class as float64; NaN where the class is absent from target and prediction."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    iou = iou_per_class(cm)
    valid = ~iou.isnan()
    return float(iou[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diag().sum().double() / total) if total > 0 else float("nan")


@dataclass
class SegMetrics:
    """Accumulates a split's confusion matrix and per-image mIoUs on the training device."""

    num_classes: int
    ignore_index: int = 255
    device: torch.device | str = "cpu"
    cm: torch.Tensor = field(init=False)
    _per_image: list[torch.Tensor] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.cm = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self.device
        )

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """target, pred: [N, H, W] class indices."""
        n = self.num_classes
        keep = target != self.ignore_index
        idx = torch.where(keep, target.long() * n + pred.long(), n * n)  # n*n = dropped bin
        flat = idx.reshape(idx.shape[0], -1)
        offsets = torch.arange(flat.shape[0], device=flat.device).unsqueeze(1) * (n * n + 1)
        counts = torch.bincount((flat + offsets).reshape(-1), minlength=flat.shape[0] * (n * n + 1))
        per_image = counts.reshape(flat.shape[0], n * n + 1)[:, : n * n].reshape(-1, n, n)
        self.cm += per_image.sum(0)
        # per-image IoU, kept on the device until compute()
        tp = per_image.diagonal(dim1=1, dim2=2).double()
        union = per_image.sum(1).double() + per_image.sum(2).double() - tp
        iou = tp / union.clamp(min=1)
        valid = union > 0
        self._per_image.append(
            torch.where(valid.any(1), (iou * valid).sum(1) / valid.sum(1).clamp(min=1), torch.nan)
        )

    def per_image_values(self) -> torch.Tensor:
        """The per-image mIoUs so far (NaN for an image with no labelled pixel)."""
        if not self._per_image:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        return torch.cat(self._per_image)

    def set_per_image(self, values: torch.Tensor) -> None:
        """Replace the per-image mIoUs (a trial on several processes: every rank's, gathered)."""
        self._per_image = [values]

    def compute(self) -> dict[str, object]:
        cm = self.cm.cpu()
        per_image = torch.cat(self._per_image).cpu() if self._per_image else torch.empty(0)
        per_image = per_image[~per_image.isnan()]
        return {
            "mIoU": mean_iou(cm),
            "pixel_acc": pixel_accuracy(cm),
            "iou": [float(v) for v in iou_per_class(cm)],
            "per_image_mIoU": float(per_image.mean()) if per_image.numel() else float("nan"),
            # true pixels per class: the baseline of predicting the majority class everywhere
            "class_pixels": [int(v) for v in cm.sum(1)],
        }
