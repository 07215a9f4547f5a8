"""The checks in any training loop: ``watch(model, optimizer)``.

``Watch`` needs no change to the loop: it audits the optimiser against the model at once, and
torch's ``Optimizer.register_step_post_hook`` tells it about every ``optimizer.step()``. It finds
what ``harness trial`` finds, with the same flags and evidence:

- ``audit:<code>``: the param-group audit (parameters in no group, in several, lr-0 groups,
  modules with nothing trainable), at once and again whenever the groups change;
- ``never-updated:<module>``: modules whose weights did not move, after the first ``steps`` steps
  and on request (``check()``), measured by the update monitor's own core;
- ``eval-mode:<module>``: BatchNorm/Dropout in eval mode while the model trains, at every step;
- ``nan-loss``: a non-finite loss, if the loop reports its losses (``report_loss``).

Modules frozen on purpose (``frozen=``: weights; ``frozen_bn=``: BatchNorm/Dropout modes) are
recorded in ``intended`` instead of flagged. ``flags()`` gives ``{flag: evidence}``, ``report()``
a printable summary, ``close()`` (or leaving a ``with`` block) removes the hook.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from harness.checks.audit import AuditReport, audit_param_groups
from harness.checks.flags import NAN_LOSS, audit_flag, check_failed
from harness.checks.modes import EvalModeCheck
from harness.checks.updates import THRESHOLD, UpdateMeter


class Watch:
    """Watches one model and its optimiser; see ``watch``."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        steps: int = 5,
        *,
        frozen: Iterable[str] = (),
        frozen_bn: Iterable[str] = (),
        quiet: bool = False,
        threshold: float = THRESHOLD,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.steps = steps
        self.frozen = tuple(frozen)
        self.quiet = quiet
        self.step = 0  # optimiser steps seen so far
        self.found: dict[str, str] = {}  # flag -> evidence, in the order they were raised
        self.intended: dict[str, str] = {}  # what was seen but declared on purpose
        self.updates: dict[str, float] = {}  # relative update per module at the last check
        self.audit_report: AuditReport | None = None
        self.closed = False
        self._groups: tuple[int, ...] | None = None
        self._loss_offset: int | None = None
        self._meter = UpdateMeter(model, threshold)
        self._modes = EvalModeCheck(model, intended=frozen_bn)
        self._audit()
        self._handle = optimizer.register_step_post_hook(self._after_step)

    # --- what the hook and the user call ------------------------------------------------------

    def check(self) -> dict[str, str]:
        """Run every check now (the audit if the groups changed, the update measure, the modes);
        returns the flags so far."""
        self._audit()
        self._record(*self._modes.check(self.step))
        if self.step:
            updates, _ = self._meter.measure()
            self.updates = updates
            unmoved = self._meter.unmoved(f"after {self.step} steps")
            self._record(*self._split(unmoved))
        return self.flags()

    def report_loss(self, loss: Any, step: int | None = None) -> bool:
        """Record the loop's loss (a tensor or a number); ``nan-loss`` when it is not finite.
        ``step`` defaults to the step the loss belongs to, judged from whether the loop reports
        it before or after ``optimizer.step()``. Returns whether the loss is finite."""
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if step is None:
            if self._loss_offset is None:  # the first report: before or after the first step?
                self._loss_offset = 1 if self.step == 0 else 0
            step = self.step + self._loss_offset
        if math.isfinite(value):
            return True
        self._record({NAN_LOSS: f"training loss is {value} at step {step}"}, {})
        return False

    def flags(self) -> dict[str, str]:
        """The verdicts so far, ``{flag: evidence}``: the flags ``harness trial`` records."""
        return dict(self.found)

    def report(self) -> str:
        """The flags, what was declared intended and the relative update per module, as text."""
        state = "closed" if self.closed else "watching"
        head = f"harness.checks.watch: {len(self.found)} flag(s) after {self.step} steps ({state})"
        lines = [head, *(f"  {flag}: {text}" for flag, text in self.found.items())]
        if self.intended:
            lines.append("intended (declared frozen, not flagged):")
            lines += [f"  {flag}: {text}" for flag, text in self.intended.items()]
        if self.updates:
            moved = ", ".join(f"{name} {ratio:.3g}" for name, ratio in self.updates.items())
            lines.append(f"relative update per module: {moved}")
        return "\n".join(lines)

    def close(self) -> None:
        """Remove the hook; the flags stay readable."""
        if not self.closed:
            self._handle.remove()
            self.closed = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inside -------------------------------------------------------------------------------

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        try:  # a check that breaks must not break the user's training
            self._audit()
            self._record(*self._modes.check(self.step))
            if self.step == self.steps:
                self.check()
        except Exception as exc:
            self._record({check_failed("watch"): f"{type(exc).__name__}: {exc}"[:300]}, {})

    def _audit(self) -> None:
        """The param-group audit, again only when the groups changed (``add_param_group``)."""
        groups = tuple(len(g["params"]) for g in self.optimizer.param_groups)
        if groups == self._groups:
            return
        self._groups = groups
        self.audit_report = audit_param_groups(
            self.model, self.optimizer, frozen_on_purpose=self.frozen
        )
        found = {audit_flag(f.code): f.message for f in self.audit_report.findings}
        self._record(*self._split(found))

    def _split(self, found: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """``(flagged, intended)``: a flag about a module declared ``frozen`` is intended."""
        flagged: dict[str, str] = {}
        intended: dict[str, str] = {}
        for flag, text in found.items():
            target = flag.rsplit(":", 1)[-1]
            (intended if target in self.frozen else flagged)[flag] = text
        return flagged, intended

    def _record(self, flagged: dict[str, str], intended: dict[str, str]) -> None:
        for flag, text in intended.items():
            self.intended.setdefault(flag, text)
        for flag, text in flagged.items():
            if flag in self.found:
                continue
            self.found[flag] = text
            if not self.quiet:
                print(f"WARNING {flag}: {text}", file=sys.stderr)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int = 5,
    *,
    frozen: Iterable[str] = (),
    frozen_bn: Iterable[str] = (),
    quiet: bool = False,
) -> Watch:
    """Watch a training run without changing its loop; call it once the model is on its device
    and the optimiser is built.

    ``steps``: the update verdict after this many ``optimizer.step()`` calls (``check()`` runs it
    any time). ``frozen``: top-level modules whose weights are frozen on purpose; ``frozen_bn``:
    modules (a top-level name covers what is under it) whose BatchNorm/Dropout are in eval mode
    on purpose. Both are recorded in ``intended``, not flagged. Each new flag is printed to
    stderr as ``WARNING <flag>: <evidence>`` unless ``quiet``.
    """
    return Watch(model, optimizer, steps, frozen=frozen, frozen_bn=frozen_bn, quiet=quiet)
