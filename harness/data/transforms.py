"""albumentations 2.x pipelines for training and validation, and seeding for DataLoader workers.

Masks are always resized with nearest-neighbour interpolation (the albumentations default for
masks, set explicitly here so it cannot drift): a bilinear resize would invent class ids on object
borders. Any mask padding uses the ignore index, so padded pixels never count as background.

albumentations 2.x keeps its own RNG inside ``Compose`` (``np.random.seed`` has no effect on it).
Forked DataLoader workers all inherit the same RNG state, so without reseeding every worker
would replay the same augmentations; :func:`seed_worker` reseeds each worker from
``torch.initial_seed()``, which differs per worker and per epoch and follows the DataLoader's
generator.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # otherwise every import tries the network

import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def train_transforms(
    image_size: int, *, seed: int | None = None, ignore_index: int = IGNORE_INDEX
) -> A.Compose:
    """Random scale/crop to ``image_size`` squared, horizontal flip, mild colour jitter."""
    return A.Compose(
        [
            # Crops inside the image (never pads); scale 0.5-1.0 of the area, then resizes.
            A.RandomResizedCrop(
                size=(image_size, image_size),
                scale=(0.5, 1.0),
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            # A no-op after the crop; keeps the ignore-index fill if the crop above is changed.
            A.PadIfNeeded(
                min_height=image_size,
                min_width=image_size,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            ),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ],
        seed=seed,
    )


def val_transforms(image_size: int) -> A.Compose:
    """Resize to ``image_size`` squared (aspect ratio not kept), normalise; deterministic."""
    return A.Compose(
        [
            A.Resize(
                height=image_size,
                width=image_size,
                mask_interpolation=cv2.INTER_NEAREST,
            ),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ],
        seed=0,
    )


def reseed(obj: Any, seed: int) -> None:
    """Reseed the albumentations pipelines of a dataset (through Subset/ConcatDataset wrappers)."""
    if hasattr(obj, "reseed"):
        obj.reseed(seed)
    elif isinstance(obj, A.Compose):
        obj.set_random_seed(seed)
    elif hasattr(obj, "datasets"):  # ConcatDataset
        for i, child in enumerate(obj.datasets):
            reseed(child, seed + i)
    elif hasattr(obj, "dataset"):  # Subset
        reseed(obj.dataset, seed)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader: per-worker seeds for python, numpy and albumentations."""
    seed = torch.initial_seed() % 2**32  # base_seed + worker_id, drawn anew every epoch
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed(info.dataset, seed)
