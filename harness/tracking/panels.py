"""Mask panels: the same fixed val images in every trial, with ground truth and prediction.

W&B shows them as ``val/masks``; ``--tracking local`` writes them as PNGs; the study report draws
the best trial's. One palette (``harness.palette``) colours a class the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.data.dataset import fixed_val_indices
from harness.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from harness.palette import class_palette
from harness.secrets import redact
from harness.tracking.base import Say, Tracker, TrialStart, stderr


def media_due(epoch: int, final: bool, every: int) -> bool:
    return final or epoch % every == 0


@dataclass
class MaskPanel:
    """A fixed set of val images (the same in every trial of a dataset), with ground truth."""

    indices: list[int]
    image_ids: list[int]
    inputs: torch.Tensor  # [K,3,S,S] as the model sees them
    images: np.ndarray  # [K,S,S,3] uint8, the same pixels for display
    truth: np.ndarray  # [K,S,S] uint8 class ids (255 = ignore)
    class_labels: dict[int, str]
    batch_size: int

    @classmethod
    def build(
        cls, dataset: Any, class_names: Sequence[str], ignore_index: int, k: int, batch_size: int
    ) -> MaskPanel | None:
        indices = fixed_val_indices(len(dataset), k)
        if not indices:
            return None
        pairs = [dataset[i] for i in indices]  # the val transform: deterministic resize
        inputs = torch.stack([p[0] for p in pairs])
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        pixels = ((inputs * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        labels = dict(enumerate(class_names))
        labels[ignore_index] = "ignore"
        return cls(
            indices=indices,
            image_ids=[dataset.image_id(i) for i in indices],
            inputs=inputs,
            images=pixels.permute(0, 2, 3, 1).numpy(),
            truth=torch.stack([p[1] for p in pairs]).numpy().astype(np.uint8),
            class_labels=labels,
            batch_size=max(1, batch_size),
        )

    @torch.inference_mode()
    def predict(self, model: nn.Module, device: torch.device) -> np.ndarray:
        was_training = model.training
        model.eval()
        try:
            preds = [
                model(chunk.to(device)).argmax(1).to("cpu", torch.uint8)
                for chunk in self.inputs.split(self.batch_size)
            ]
        finally:
            model.train(was_training)
        return torch.cat(preds).numpy()

    def captions(self, epoch: int) -> list[str]:
        return [
            f"val #{i} (image id {d}), epoch {epoch}"
            for i, d in zip(self.indices, self.image_ids, strict=True)
        ]


def panel_png(panel: MaskPanel, pred: np.ndarray, path: Path) -> None:
    """One row per image: the image, the ground truth, the prediction (for ``--tracking local``)."""
    from PIL import Image

    colours = class_palette(max(k for k in panel.class_labels if k < 255) + 1)
    rows = [
        np.concatenate([img, colours[gt], colours[pr]], axis=1)
        for img, gt, pr in zip(panel.images, panel.truth, pred, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# --- trackers that draw panels -------------------------------------------------------------


class PanelTracker(Tracker):
    def __init__(self, say: Say = stderr) -> None:
        self.say = say
        self.panel: MaskPanel | None = None
        self.every = 1
        self._model: nn.Module | None = None
        self._device = torch.device("cpu")
        self.panel_error: str | None = None  # why the mask panel went off, for summary.json

    def start(self, trial: TrialStart) -> None:
        cfg, bundle = trial.cfg, trial.bundle
        self.every = cfg.tracking.media_every
        self._model, self._device = trial.model, trial.device
        if cfg.tracking.media_images > 0:
            try:
                self.panel = MaskPanel.build(
                    bundle.val,
                    bundle.class_names,
                    bundle.ignore_index,
                    cfg.tracking.media_images,
                    cfg.train.batch_size,
                )
            except Exception as exc:  # a panel is a nicety: never worth a trial
                self._panel_off(exc)

    def _panel_off(self, exc: Exception) -> None:
        """No more mask panels in this trial: said, and kept in ``info()`` for the record."""
        self.panel = None
        self.panel_error = redact(f"{type(exc).__name__}: {exc}")
        self.say(f"mask panel off for this trial ({self.panel_error})")

    def info(self) -> dict[str, Any]:
        info = self._backend_info()
        if self.panel_error is not None:
            info["panel_error"] = self.panel_error
        return info

    def _backend_info(self) -> dict[str, Any]:
        """What the backend itself reports (W&B: its mode, run and errors)."""
        return super().info()

    def _predict_if_due(self, epoch: int, final: bool) -> np.ndarray | None:
        """The panel's predictions when one is due; a failure turns the panel off (said and
        recorded), never the rest of the tracking."""
        if self.panel is None or self._model is None or not media_due(epoch, final, self.every):
            return None
        try:
            return self.panel.predict(self._model, self._device)
        except Exception as exc:
            self._panel_off(exc)
            return None


class LocalTracker(PanelTracker):
    """``--tracking local``: mask panels as PNGs under runs/<name>/media/."""

    backend = "local"

    def __init__(self, say: Say = stderr) -> None:
        super().__init__(say)
        self.dir: Path | None = None

    def start(self, trial: TrialStart) -> None:
        super().start(trial)
        self.dir = trial.cfg.run_dir / "media"

    def log_epoch(self, row: Mapping[str, Any], *, final: bool) -> None:
        try:
            pred = self._predict_if_due(int(row["epoch"]), final)
            if pred is not None and self.panel is not None and self.dir is not None:
                panel_png(self.panel, pred, self.dir / f"masks-epoch-{int(row['epoch']):03d}.png")
        except Exception as exc:
            self._panel_off(exc)
