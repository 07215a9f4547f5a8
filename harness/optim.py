"""Optimiser and scheduler construction.

Groups are built from ``named_parameters()`` of each top-level module, so every trainable
parameter lands in exactly one group by construction: the encoder at ``f_lr``, everything else
(FCN, decoder, head) at ``lr``. Each group carries a ``name`` so audits, logs and W&B can say
which module a learning rate belongs to.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from harness.config import OptimConfig

ENCODER = "encoder"
DECODER = "decoder"


def top_level_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Top-level children that own parameters (encoder, fcn, decoder, head)."""
    for name, child in model.named_children():
        if any(True for _ in child.parameters()):
            yield name, child


def frozen_modules(cfg: OptimConfig) -> tuple[str, ...]:
    """Modules that the config freezes on purpose (f_lr = 0 freezes the encoder)."""
    return (ENCODER,) if cfg.f_lr == 0 else ()


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """One named group per top-level module; modules frozen on purpose get requires_grad=False."""
    frozen = frozen_modules(cfg)
    groups = []
    for name, module in top_level_modules(model):
        if name in frozen:
            # Frozen on purpose: no gradients computed, no group (the audit records it as intended)
            module.requires_grad_(False)
            continue
        params = [p for _, p in module.named_parameters() if p.requires_grad]
        if not params:
            continue  # nothing to train here; the audit reports the module as not trainable
        lr = cfg.f_lr if name == ENCODER else cfg.lr
        groups.append({"name": name, "params": params, "lr": lr})
    # Parameters registered directly on the model (not inside a child) still need a group
    direct = [p for n, p in model.named_parameters(recurse=False) if p.requires_grad]
    if direct:
        groups.append({"name": "other", "params": direct, "lr": cfg.lr})
    return groups


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return make_optimizer(param_groups(model, cfg), cfg)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-iteration schedule over the whole run; ``none`` keeps the lr constant."""
    if cfg.scheduler == "none":
        return None
    total = max(1, total_steps)
    if cfg.scheduler == "cosine":

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    else:  # poly, as in DeepLab

        def factor(step: int) -> float:
            return (1.0 - min(step, total) / total) ** cfg.poly_power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of each group by name (``group<i>`` for unnamed groups)."""
    return {
        str(g.get("name", f"group{i}")): float(g["lr"])
        for i, g in enumerate(optimizer.param_groups)
    }
