"""Segmentation models. ``build_model`` is the one entry point the rest of the harness uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from harness.config import ModelConfig
from harness.models.deconvnet import (
    DeconvNet,
    build_deconvnet,
    encoder_state_from_vgg,
    load_pretrained,
    load_weights,
)
from harness.models.deeplabv1 import DeepLabV1, build_deeplabv1
from harness.models.user import build_user_model, check_output

__all__ = [
    "MODEL_PARTS",
    "DeconvNet",
    "DeepLabV1",
    "build_model",
    "check_output",
    "encoder_state_from_vgg",
    "load_pretrained",
    "load_trained",
    "load_weights",
]

# Top-level submodules a model may have; those it has partition model.parameters(), so optimizer
# groups and per-part monitors can be built from these names. Every model has encoder, fcn and
# decoder; DeconvNet adds head (its classifier), DeepLab v1 keeps its classifier in decoder.
MODEL_PARTS = ("encoder", "fcn", "decoder", "head")


def build_model(cfg: ModelConfig, num_classes: int, *, progress: bool = True) -> nn.Module:
    """Build ``cfg.name`` for ``num_classes`` classes, with pretrained or local weights if asked.

    ``progress`` shows a download bar for ``cfg.pretrained``. Raises WeightsError when weights
    cannot be had or do not fit. A user factory (``cfg.user``) is imported and called with
    ``num_classes`` and ``cfg.args``; fit checks its output on one batch (``check_output``).
    """
    if cfg.user:
        return build_user_model(cfg, num_classes)
    if cfg.name == "deconvnet":
        return build_deconvnet(cfg, num_classes, progress=progress)
    if cfg.name == "deeplabv1":
        return build_deeplabv1(cfg, num_classes, progress=progress)
    raise ValueError(f"model.name={cfg.name!r}: no such model")  # ModelConfig already checks


def load_trained(cfg: ModelConfig, num_classes: int, state: Mapping[str, Any]) -> nn.Module:
    """A trained model from a checkpoint's state dict (``best.pt``'s ``model``). The checkpoint
    holds every weight: no pretrained download or weights file is needed. Raises RuntimeError
    when the weights do not fit the model the config describes."""
    model_cfg = dataclasses.replace(cfg, pretrained=False, weights_path=None)
    model = build_model(model_cfg, num_classes, progress=False)
    model.load_state_dict(state)
    return model
