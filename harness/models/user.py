"""User model factories: ``model.name: package.module:factory`` with ``model.args``.

The factory is called as ``factory(num_classes=..., **model.args)`` and must return an
``nn.Module`` whose forward gives logits ``[N, num_classes, H, W]`` at the input's H and W;
``check_output`` runs one val batch through it before training starts. Every way this can go
wrong is a one-line error that names the factory (see README "Your own model and optimiser").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.config import ModelConfig
from harness.errors import ConfigError
from harness.plugins import UserCodeError, accepted_keywords, call_user, describe, load_attr


def build_user_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    where = f"model.name={cfg.name!r}"
    factory = load_attr(cfg.name, "model.name")
    if not callable(factory):
        raise ConfigError(f"{where}: is a {type(factory).__name__}, not a factory function")
    accepted, names = accepted_keywords(factory)
    if accepted is not None:
        if "num_classes" not in accepted:
            raise ConfigError(
                f"{where}: the factory must take num_classes (it takes: {', '.join(names) or '-'})"
            )
        unknown = [k for k in cfg.args if k not in accepted]
        if unknown:
            takes = ", ".join(n for n in names if n != "num_classes") or "nothing else"
            raise ConfigError(
                f"model.args: {', '.join(unknown)} not accepted by {cfg.name} (it accepts: {takes})"
            )
    model = call_user(factory, where, "factory", num_classes=num_classes, **cfg.args)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def _shape(t: Any) -> str:
    return "[" + ", ".join(str(int(s)) for s in t.shape) + "]"


def check_output(
    model: nn.Module, images: torch.Tensor, num_classes: int, device: torch.device, name: str
) -> None:
    """One forward on ``images`` (a val batch) in eval mode under ``no_grad``: logits
    ``[N, num_classes, H, W]``. The RNG state and the model's train/eval mode are restored, and
    eval mode leaves BatchNorm's running statistics as they were."""
    where = f"model.name={name!r}"
    images = images.to(device)
    was_training = model.training
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    try:
        model.eval()
        with torch.no_grad():
            out = model(images)
    except Exception as exc:
        raise UserCodeError(
            f"{where}: forward on a val batch {_shape(images)} raised {describe(exc)}"
        ) from exc
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    n, _, h, w = images.shape
    expected = f"[{n}, {num_classes}, {h}, {w}] (N, num_classes, H, W)"
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"{where}: forward returned {type(out).__name__}, not a logits tensor {expected}"
        )
    if tuple(out.shape) != (n, num_classes, h, w):
        raise ConfigError(
            f"{where}: forward gave logits {_shape(out)} for a batch {_shape(images)}; "
            f"expected {expected}"
        )
