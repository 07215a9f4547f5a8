"""The best trial's predicted masks: its model rebuilt from the config, ``best.pt`` loaded, the
trainer's fixed val images predicted and drawn beside the ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from harness.config import config_from_dict
from harness.data.loaders import load_data
from harness.errors import HarnessError
from harness.files import load_checkpoint
from harness.models import load_trained
from harness.palette import class_palette
from harness.report.plots import save_chart
from harness.report.trials import TrialInfo
from harness.tracking.panels import MaskPanel

# --- predicted masks of the best trial ---------------------------------------------------------


@dataclass(frozen=True)
class MaskSet:
    images: np.ndarray  # [K,S,S,3] uint8
    truth: np.ndarray  # [K,S,S] class ids (255 ignore)
    pred: np.ndarray  # [K,S,S] class ids
    class_names: list[str]
    captions: list[str]


def predict_best_masks(info: TrialInfo, named_model: str | None = None) -> MaskSet | str:
    """Rebuild the best trial's model from its config, load its ``best.pt`` and predict the
    trainer's fixed val images (the W&B mask panel's). A sentence when a piece is missing.
    A user model factory is imported only when ``named_model`` (the user's ``--model``) names it:
    a study record is not trusted to choose what this machine imports."""
    if not info.config:
        return f"Trial {info.number} recorded no config: its masks cannot be predicted."
    if info.run_dir is None or not info.run_dir.is_dir():
        return (
            f"The run folder of trial {info.number} ({info.run_dir}) is missing: "
            "no predicted masks."
        )
    ckpt = info.run_dir / "best.pt"
    if not ckpt.is_file():
        return (
            f"Trial {info.number} has no best.pt in {info.run_dir} (checkpointing off, or "
            "the file was deleted): no predicted masks."
        )
    try:
        cfg = config_from_dict(info.config)  # checks an import path's form, imports nothing
        if cfg.model.user and named_model != cfg.model.name:
            return (
                f"Trial {info.number} trained the model factory {cfg.model.name!r}; harness "
                f"imports user code only from what you name: --model {cfg.model.name} predicts "
                "its masks."
            )
        bundle = load_data(cfg)
        state = load_checkpoint(ckpt)
        model = load_trained(cfg.model, len(bundle.class_names), state["model"])
        # the trainer's panel size, so these are the very images W&B shows per epoch
        k = cfg.tracking.media_images if cfg.tracking.media_images > 0 else 4
        panel = MaskPanel.build(
            bundle.val, bundle.class_names, bundle.ignore_index, k, cfg.train.batch_size
        )
        if panel is None:
            return "The val split is empty: no predicted masks."
        pred = panel.predict(model, torch.device("cpu"))
    except (HarnessError, OSError, RuntimeError, KeyError, ValueError) as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return f"The masks of trial {info.number} cannot be predicted ({text})."
    epoch = state.get("epoch", "?")
    captions = [
        f"val #{i} (image id {d}), best.pt of epoch {epoch}"
        for i, d in zip(panel.indices, panel.image_ids, strict=True)
    ]
    return MaskSet(panel.images, panel.truth, pred, list(bundle.class_names), captions)


def plot_masks(masks: MaskSet, path: Path) -> None:
    """image | ground truth | prediction per row, coloured as the trainer's local mask panels,
    with a class legend (white: ignored pixels)."""
    n = len(masks.class_names)
    colours = class_palette(n)
    rows = len(masks.images)
    fig = Figure(figsize=(7.5, 2.3 * rows + 0.9))
    for r in range(rows):
        panels = (masks.images[r], colours[masks.truth[r]], colours[masks.pred[r]])
        for c, (img, title) in enumerate(
            zip(panels, ("image", "ground truth", "prediction"), strict=True)
        ):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(masks.captions[r].split(",")[0], fontsize=8)
    present = sorted({int(v) for v in np.unique(np.concatenate([masks.truth, masks.pred]))})
    handles = [
        Patch(
            facecolor=colours[k] / 255,
            edgecolor="black",
            lw=0.5,
            label=masks.class_names[k] if k < n else "ignore",
        )
        for k in (*range(n), *(v for v in present if v >= n))
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(4, len(handles)),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.subplots_adjust(bottom=0.9 / (2.3 * rows + 0.9) + 0.02, hspace=0.15, wspace=0.05)
    save_chart(fig, path)
