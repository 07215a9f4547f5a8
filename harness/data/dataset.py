"""torch Datasets over a validated COCO split, with masks from the on-disk cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from harness.config import DataConfig
from harness.data.cache import MaskCache
from harness.data.coco import CocoSplit, load_coco
from harness.data.transforms import IGNORE_INDEX, train_transforms, val_transforms
from harness.errors import DataError


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(image FloatTensor[3,S,S], mask LongTensor[S,S])`` pairs; mask values 0..C-1 or 255."""

    def __init__(
        self, split: CocoSplit, masks: MaskCache, transform: Callable[..., dict[str, Any]]
    ) -> None:
        self.split = split
        self.masks = masks
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.images)

    def image_id(self, index: int) -> int:
        return int(self.split.images[index]["id"])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed RGB image (HxWx3 uint8) and its mask (HxW uint8)."""
        record = self.split.images[index]
        path = self.split.image_path(record)
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        mask = self.masks[record["id"]]
        if image.shape[:2] != mask.shape:
            # Only reachable when the dataset was loaded with check_images=False.
            raise DataError(
                f"{self.split.ann_path}: image id={record['id']}: {path} is "
                f"{image.shape[1]}x{image.shape[0]}, the JSON says {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        out = self.transform(image=image, mask=mask)
        return out["image"], torch.as_tensor(out["mask"]).long()

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation RNG (called per DataLoader worker by ``seed_worker``)."""
        setter = getattr(self.transform, "set_random_seed", None)
        if setter is not None:
            setter(seed)


@dataclass(frozen=True)
class DataBundle:
    train: SegmentationDataset
    val: SegmentationDataset
    class_names: list[str]
    ignore_index: int
    info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def build_datasets(data_cfg: DataConfig, root: Path | str, *, seed: int = 0) -> DataBundle:
    """Load, validate and cache ``root`` (already resolved by the caller) as train/val datasets.

    ``seed`` seeds the training augmentations (DataLoader workers reseed via ``seed_worker``).
    """
    coco = load_coco(
        root,
        val_fraction=data_cfg.val_fraction,
        split_seed=data_cfg.split_seed,
        image_root=data_cfg.image_root,
    )
    cache_dir = Path(data_cfg.cache_dir)
    size = data_cfg.image_size
    train_split, val_split = coco.splits["train"], coco.splits["val"]
    for split in (train_split, val_split):
        if len(split) == 0:  # nothing to learn from, or a trial "finished" with mIoU nan
            raise DataError(
                f"{split.ann_path}: the {split.name} split holds no images (a trial needs "
                "images to train on and to validate on)"
            )
    train_masks = MaskCache.build(train_split, coco, data_cfg.overlap, cache_dir, IGNORE_INDEX)
    val_masks = MaskCache.build(val_split, coco, data_cfg.overlap, cache_dir, IGNORE_INDEX)
    train_tf = train_transforms(size, seed=seed) if data_cfg.augment else val_transforms(size)
    identity = [f"{s.name}:{s.content_hash}" for s in coco.splits.values()]
    if coco.image_root is not None:  # the same annotations over another image folder differ
        identity.append(f"image_root:{coco.image_root.resolve()}")
    dataset_hash = hashlib.sha256("\n".join(identity).encode()).hexdigest()
    info: dict[str, Any] = {
        "root": str(coco.root),
        "layout": coco.layout,
        "image_root": str(coco.image_root) if coco.image_root is not None else None,
        "image_folders": {name: str(split.image_root) for name, split in coco.splits.items()},
        "num_classes": coco.num_classes,
        "n_images": {name: len(split) for name, split in coco.splits.items()},
        "n_annotations": {
            name: sum(len(a) for a in split.anns_by_image.values())
            for name, split in coco.splits.items()
        },
        "content_hash": dataset_hash,
        "overlap": data_cfg.overlap,
        "image_size": size,
        "augment": data_cfg.augment,
        "mask_cache": {"train": str(train_masks.path), "val": str(val_masks.path)},
    }
    return DataBundle(
        train=SegmentationDataset(train_split, train_masks, train_tf),
        val=SegmentationDataset(val_split, val_masks, val_transforms(size)),
        class_names=list(coco.class_names),
        ignore_index=IGNORE_INDEX,
        info=info,
    )


def fixed_val_indices(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices into ``n`` images (the same every epoch, for mask overlays)."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return [int((i + 0.5) * n / k) for i in range(k)]
