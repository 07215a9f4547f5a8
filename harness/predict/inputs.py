"""What ``harness predict`` reads: the checkpoint (``weights_only=True``) and its recorded
config, the options, and the split, as the trainer forms it. Every refusal is one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from harness.config import TrialConfig, config_from_dict
from harness.data.coco import CocoDataset, CocoSplit, load_coco
from harness.data.masks import build_semantic_mask
from harness.data.synth import builtin_path
from harness.data.transforms import IGNORE_INDEX, val_transforms
from harness.errors import ConfigError, HarnessError
from harness.files import load_checkpoint
from harness.models import load_trained

FORMATS = ("csv", "png")
TTA_MODES = ("none", "flip")
MASK_DIR = "masks"


class PredictError(HarnessError):
    """A checkpoint, dataset or option ``harness predict`` cannot work with."""


# --- the checkpoint ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    cfg: TrialConfig
    class_names: list[str]
    epoch: int | None
    val_miou: float | None  # the val mIoU the trainer recorded for these weights
    state: dict[str, Any] = dataclasses.field(repr=False)

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def load_run_checkpoint(target: Path | str) -> Checkpoint:
    """A run folder (its ``best.pt``) or a checkpoint file, loaded with ``weights_only=True``."""
    target = Path(target)
    path = target / "best.pt" if target.is_dir() else target
    if not path.is_file():
        where = f"{target} holds no best.pt" if target.is_dir() else f"{target} does not exist"
        raise PredictError(f"{where} (checkpointing off, or the run did not finish an epoch?)")
    try:
        raw = load_checkpoint(path)
    except Exception as exc:  # a torch.load of a foreign file raises anything from pickle
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise PredictError(
            f"{path}: not a checkpoint that loads with weights_only=True ({text})"
        ) from None
    missing = [
        k for k in ("model", "config", "class_names") if not isinstance(raw, dict) or k not in raw
    ]
    if missing:
        raise PredictError(
            f"{path}: checkpoint without {', '.join(missing)} (harness trial's best.pt holds "
            "model, config, class_names, epoch, val_mIoU)"
        )
    try:
        cfg = config_from_dict(raw["config"])
    except ConfigError as exc:
        raise PredictError(f"{path}: recorded config: {exc}") from None
    names = raw["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PredictError(f"{path}: class_names must be a list of names, got {names!r:.80}")
    epoch = raw.get("epoch")
    miou = raw.get("val_mIoU")
    return Checkpoint(
        path=path,
        cfg=cfg,
        class_names=list(names),
        epoch=int(epoch) if isinstance(epoch, int) else None,
        val_miou=float(miou) if isinstance(miou, int | float) else None,
        state=raw["model"],
    )


def check_model_named(ckpt: Checkpoint, model: str | None) -> None:
    """A checkpoint's config can name any importable module as its model factory. harness
    imports user code only from what the user names: a user model runs only when ``--model``
    names the same factory, so a checkpoint from someone else cannot make this machine import
    (and run) a module of its choosing."""
    recorded = ckpt.cfg.model.name
    if model is not None and model != recorded:
        raise PredictError(f"--model={model!r}: {ckpt.path} was trained with {recorded!r}")
    if ckpt.cfg.model.user and model is None:
        raise PredictError(
            f"{ckpt.path}: trained with the model factory {recorded!r}; harness imports user "
            f"code only from what you name: pass --model {recorded} to import and run it"
        )


def build_checkpoint_model(ckpt: Checkpoint, device: torch.device) -> nn.Module:
    try:
        model = load_trained(ckpt.cfg.model, len(ckpt.class_names), ckpt.state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PredictError(
            f"{ckpt.path}: weights do not fit the recorded model ({first})"
        ) from None
    return model.to(device).eval()


# --- options -----------------------------------------------------------------------------------


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(n.strip().lower() for n in items if n.strip()))
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise PredictError(
            f"--format={','.join(items) if not isinstance(text, str) else text!r}: "
            f"choose one or more of {', '.join(FORMATS)}, comma-separated"
        )
    return names


def check_tta(tta: str | None) -> str:
    mode = (tta or "none").strip().lower()
    if mode not in TTA_MODES:
        raise PredictError(f"--tta={tta!r}: must be one of {', '.join(TTA_MODES)}")
    return mode


def class_mismatch(checkpoint: Sequence[str], data: Sequence[str]) -> str | None:
    """One line saying how two class lists differ; None when they agree (names and order)."""
    if list(checkpoint) == list(data):
        return None
    parts = [f"checkpoint has {len(checkpoint)} classes, the data {len(data)}"]
    only_ckpt = [n for n in checkpoint if n not in data]
    only_data = [n for n in data if n not in checkpoint]
    if only_ckpt:
        parts.append(f"only in the checkpoint: {', '.join(map(repr, only_ckpt))}")
    if only_data:
        parts.append(f"only in the data: {', '.join(map(repr, only_data))}")
    if not only_ckpt and not only_data:
        i = next(i for i, (a, b) in enumerate(zip(checkpoint, data, strict=False)) if a != b)
        parts.append(f"same names in another order: index {i} is {checkpoint[i]!r} vs {data[i]!r}")
    return "; ".join(parts)


# --- the data ----------------------------------------------------------------------------------


def resolve_data(
    cfg: TrialConfig, data: Path | str | None, images: Path | str | None
) -> tuple[Path, Path | None]:
    """The dataset root and image folder: the options, else what the run trained on (the
    built-in dataset is looked for in the run's cache, never generated)."""
    if data is not None:
        return Path(data), Path(images) if images is not None else None
    image_root = images if images is not None else cfg.data.image_root
    if cfg.data.root is not None:
        return Path(cfg.data.root), Path(image_root) if image_root is not None else None
    root = builtin_path(Path(cfg.data.cache_dir))
    if not root.is_dir():
        raise PredictError(
            f"the run trained on the built-in dataset, which is not in {root} "
            "(data.cache_dir is relative to the folder you trained in): run from there, "
            "or pass --data"
        )
    return root, Path(image_root) if image_root is not None else None


def load_split(
    cfg: TrialConfig, root: Path, image_root: Path | None, split: str
) -> tuple[CocoDataset, CocoSplit]:
    """The split as the trainer forms it (same val_fraction and split_seed for one file)."""
    coco = load_coco(
        root,
        val_fraction=cfg.data.val_fraction,
        split_seed=cfg.data.split_seed,
        image_root=image_root,
    )
    if split not in coco.splits:
        raise PredictError(
            f"--split={split!r}: {root} ({coco.layout} layout) has the splits "
            f"{', '.join(coco.splits)}"
        )
    return coco, coco.splits[split]


def has_truth(split: CocoSplit) -> bool:
    """train/val are annotated by definition (an image without annotations is background);
    a test split counts as annotated only when it holds annotations."""
    return split.name != "test" or any(split.anns_by_image.values())


def mask_names(split: CocoSplit) -> list[str]:
    """``masks/<file_name with .png>`` per image; two images that would share a PNG refuse."""
    names: dict[str, str] = {}
    for img in split.images:
        name = str(Path(img["file_name"]).with_suffix(".png"))
        if name in names:
            raise PredictError(
                f"{split.ann_path}: {img['file_name']!r} and {names[name]!r} would both be "
                f"written as {MASK_DIR}/{name}"
            )
        names[name] = img["file_name"]
    return list(names)


class PredictSet(Dataset[dict[str, Any]]):
    """Per image: the val-transformed tensor, and with truth its mask as the trainer sees it
    (resized nearest) and at the image's own size."""

    def __init__(self, split: CocoSplit, coco: CocoDataset, cfg: TrialConfig, truth: bool) -> None:
        self.split, self.coco, self.truth = split, coco, truth
        self.overlap = cfg.data.overlap
        self.transform = val_transforms(cfg.data.image_size)

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.split.images[index]
        with Image.open(self.split.image_path(record)) as im:
            image = np.asarray(im.convert("RGB"))
        item: dict[str, Any] = {"index": index, "size": image.shape[:2]}
        if not self.truth:
            item["image"] = self.transform(image=image)["image"]
            return item
        mask = build_semantic_mask(
            self.split.anns_by_image.get(record["id"], []),
            record["height"],
            record["width"],
            self.coco.cat_to_class,
            self.overlap,
            IGNORE_INDEX,
        )
        out = self.transform(image=image, mask=mask)
        item.update(image=out["image"], mask=torch.as_tensor(out["mask"]).long(), full=mask)
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "index": [it["index"] for it in items],
        "size": [it["size"] for it in items],
    }
    if "mask" in items[0]:
        batch["mask"] = torch.stack([it["mask"] for it in items])
        batch["full"] = [it["full"] for it in items]
    return batch
