"""Small pieces of ``fit``'s setup: what it looks at before anything is written, and the record
of the user code a trial ran."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.config import TrialConfig
from harness.plugins import source_record


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def one_batch(dataset: Any, batch_size: int) -> torch.Tensor:
    """The images of the first val batch, read from the dataset (no loader iterator: it would
    draw a seed from the global RNG and start the persistent workers early)."""
    rng = torch.get_rng_state()
    try:
        return torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
    finally:
        torch.set_rng_state(rng)


def code_record(cfg: TrialConfig) -> dict[str, Any]:
    """The user code a trial ran (import path, args, source file and its sha256); {} if none."""
    code: dict[str, Any] = {}
    if cfg.model.user:
        code["model"] = source_record(cfg.model.name, "model.name", cfg.model.args)
    if cfg.optim.builder is not None:
        code["optimizer"] = source_record(cfg.optim.builder, "optim.builder")
    return code
