"""The mask pairing check, before the first step: do the masks belong to their images?

Masks whose label boundaries do not sit on image edges any better than other images' masks give
``masks-misaligned``: the signature of a shuffled or mis-sorted file list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from harness.checks.flags import MASKS_MISALIGNED


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
