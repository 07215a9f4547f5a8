"""Optimiser and scheduler construction.

Groups are built from ``named_parameters()`` of each top-level module, so every trainable
parameter lands in exactly one group by construction: the modules ``optim.f_lr_modules`` names
(the encoder by default) at ``f_lr``, everything else (FCN, decoder, head) at ``lr``. Each group
carries a ``name`` so audits, logs and W&B can say which module a learning rate belongs to.

``optim.builder`` names a user function that builds the optimiser instead (``build_user``); what
it returns is checked here and then audited and monitored like the built-in one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from harness.config import OptimConfig
from harness.errors import ConfigError
from harness.plugins import accepted_keywords, call_user, load_attr

ENCODER = "encoder"
DECODER = "decoder"


def top_level_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Top-level children that own parameters (encoder, fcn, decoder, head)."""
    for name, child in model.named_children():
        if any(True for _ in child.parameters()):
            yield name, child


def frozen_modules(cfg: OptimConfig) -> tuple[str, ...]:
    """Modules that the config freezes on purpose (f_lr = 0 freezes the f_lr modules)."""
    return cfg.f_lr_modules if cfg.f_lr == 0 else ()


def check_f_lr_modules(model: nn.Module, cfg: OptimConfig) -> None:
    """Every module ``optim.f_lr_modules`` names is a top-level child of the model."""
    children = [name for name, _ in model.named_children()]
    for name in cfg.f_lr_modules:
        if name not in children:
            raise ConfigError(
                f"optim.f_lr_modules={list(cfg.f_lr_modules)}: the model has no module '{name}' "
                f"(its top-level children: {', '.join(children) or 'none'}); name the modules "
                "f_lr is for, or [] for none"
            )


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
        lr = cfg.f_lr if name in cfg.f_lr_modules else cfg.lr
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


Scheduler = torch.optim.lr_scheduler.LRScheduler
BUILDER_KEYWORDS = ("lr", "f_lr", "weight_decay", "momentum")


def build_user(model: nn.Module, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, Any]:
    """``optim.builder(model, lr=, f_lr=, weight_decay=, momentum=)`` and its checked result:
    ``(optimizer, scheduler or None)``. Keywords the builder does not take are not passed."""
    assert cfg.builder is not None
    where = f"optim.builder={cfg.builder!r}"
    builder = load_attr(cfg.builder, "optim.builder")
    if not callable(builder):
        raise ConfigError(f"{where}: is a {type(builder).__name__}, not a function")
    accepted, _ = accepted_keywords(builder)
    values = {k: getattr(cfg, k) for k in BUILDER_KEYWORDS}
    kwargs = {k: v for k, v in values.items() if accepted is None or k in accepted}
    out = call_user(builder, where, "builder", model, **kwargs)
    scheduler = None
    if isinstance(out, tuple) and len(out) == 2:
        out, scheduler = out
        if not isinstance(scheduler, Scheduler) and scheduler is not None:
            raise ConfigError(
                f"{where}: returned ({type(out).__name__}, {type(scheduler).__name__}); the "
                "second item must be a torch.optim.lr_scheduler.LRScheduler or None"
            )
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError(f"{where}: ReduceLROnPlateau is not supported (stepped per batch)")
        if scheduler is not None and cfg.scheduler != "none":
            raise ConfigError(
                f"optim.scheduler={cfg.scheduler!r}: the builder returned its own scheduler; "
                "set optim.scheduler=none or return the optimiser alone"
            )
    if not isinstance(out, torch.optim.Optimizer):
        raise ConfigError(
            f"{where}: returned {type(out).__name__}, not a torch.optim.Optimizer "
            "(or an (optimizer, scheduler) pair)"
        )
    own = {id(p) for p in model.parameters()}
    held = [p for g in out.param_groups for p in g["params"]]
    if held and not any(id(p) in own for p in held):
        raise ConfigError(
            f"{where}: none of the optimiser's {len(held)} parameter tensors belong to the model "
            "(did it build or copy a model of its own?)"
        )
    return out, scheduler


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
