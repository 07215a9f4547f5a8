"""The update monitor: did every module that should train actually move?

``UpdateMeter`` is the measuring core: it snapshots the weights and measures, per top-level module
(encoder, fcn, decoder, head), how far the weights moved (``||w - w0|| / ||w0||``) and the
gradient norm, and names the modules that did not move (``never-updated:<module>`` with its
evidence). ``UpdateMonitor`` is the ``fit`` callback around it: it looks once after the first K
optimiser steps and at every epoch end; ``harness.checks.watch`` uses the same core in any loop.
A module that is meant to train (every module the config did not freeze on purpose) but did not
move gets the flag. Adam moves every parameter it steps by about ``lr`` per step, so a stepped
module is orders of magnitude above the threshold; an unstepped one is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from harness.callbacks import Callback, StopTrial
from harness.checks.audit import fmt_count
from harness.checks.flags import never_updated
from harness.checks.modes import EvalModeCheck
from harness.optim import top_level_modules

THRESHOLD = 1e-6  # relative update below which a module did not move


class UpdateMeter:
    """Snapshots ``model``'s weights now; ``measure`` and ``unmoved`` compare with them later."""

    def __init__(self, model: nn.Module, threshold: float = THRESHOLD) -> None:
        self.threshold = threshold
        self.params: dict[str, list[nn.Parameter]] = {}
        self.w0: dict[str, list[torch.Tensor]] = {}
        self.norm0: dict[str, float] = {}
        for name, module in top_level_modules(model):
            params = list(module.parameters())
            self.params[name] = params
            self.w0[name] = [p.detach().clone() for p in params]
            self.norm0[name] = _norm(self.w0[name])

    def measure(self) -> tuple[dict[str, float], dict[str, float]]:
        """Relative update and gradient norm (of the last step) per module."""
        updates, grads = {}, {}
        with torch.no_grad():
            for name, params in self.params.items():
                delta = _norm([p.detach() - w for p, w in zip(params, self.w0[name], strict=True)])
                n0 = self.norm0[name]
                updates[name] = delta / n0 if n0 > 0 else delta
                grads[name] = _norm([p.grad for p in params if p.grad is not None])
        return updates, grads

    def unmoved(self, when: str) -> dict[str, str]:
        """``never-updated:<module>`` with its evidence for every module that did not move;
        ``when`` (``after 5 steps``) goes into the evidence."""
        updates, grads = self.measure()
        found: dict[str, str] = {}
        for name, ratio in updates.items():
            if ratio >= self.threshold:
                continue
            params = self.params[name]
            total = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            detail = f"{fmt_count(total)} parameters"
            if trainable == 0:
                detail += ", none of them requires_grad"
            else:
                detail += f", grad norm {grads[name]:.3g}"
            found[never_updated(name)] = f"{name}: relative update {ratio:.3g} {when} ({detail})"
        return found


class UpdateMonitor(Callback):
    """Flags modules that never move and BatchNorm/Dropout left in eval mode while the model
    trains; logs ``updates/<module>`` and ``grad_norm/<module>``.

    ``steps``: the early look after this many optimiser steps (or at the first epoch end when an
    epoch has fewer steps). ``frozen_on_purpose``: modules the config froze (not flagged).
    ``stop``: end the trial at once (``StopTrial(..., "failed")``) when a module never moved.
    """

    def __init__(
        self,
        steps: int = 5,
        frozen_on_purpose: Iterable[str] = (),
        *,
        stop: bool = False,
        threshold: float = THRESHOLD,
    ) -> None:
        self.steps = steps
        self.frozen = set(frozen_on_purpose)
        self.stop = stop
        self.threshold = threshold
        self.step = 0
        self.checked = False
        self.meter: UpdateMeter | None = None
        self.modes: EvalModeCheck | None = None
        self.found: dict[str, str] = {}

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.meter = UpdateMeter(model, self.threshold)
        self.modes = EvalModeCheck(model)

    def measure(self) -> tuple[dict[str, float], dict[str, float]]:
        """Relative update and gradient norm (of the last step) per module."""
        assert self.meter is not None, "on_fit_start first"
        return self.meter.measure()

    def check(self, when: str) -> dict[str, str]:
        """Flags for modules meant to train whose weights did not move; ``when`` for evidence."""
        assert self.meter is not None, "on_fit_start first"
        self.checked = True
        new = {
            flag: text
            for flag, text in self.meter.unmoved(when).items()
            if flag.split(":", 1)[1] not in self.frozen
        }
        for flag, text in new.items():
            self.found.setdefault(flag, text)
        if new and self.stop:
            raise StopTrial("; ".join(new.values()), "failed")
        return new

    def on_step_end(self, step: int, loss: float) -> None:
        self.step = step
        if self.modes is not None:
            flagged, _ = self.modes.check(step)
            for flag, text in flagged.items():
                self.found.setdefault(flag, text)
        if step == self.steps and not self.checked:
            self.check(f"after {step} steps")

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        updates, grads = self.measure()
        row.update({f"updates/{n}": v for n, v in updates.items()})
        row.update({f"grad_norm/{n}": v for n, v in grads.items()})
        if not self.checked:  # an epoch shorter than ``steps``
            self.check(f"after {self.step} steps")

    def flags(self) -> dict[str, str]:
        return dict(self.found)


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    total = 0.0
    for t in tensors:
        total += float(t.detach().double().pow(2).sum())
    return math.sqrt(total)
