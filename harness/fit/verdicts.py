"""The checks' verdicts when a trial ends: every callback's flags, the learning check and, on
several processes, every rank's verdicts gathered to rank 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import harness.fit.distributed as ddp
from harness.callbacks import Callback, StopTrial, callback_name
from harness.checks.flags import check_failed
from harness.checks.learning import check_learning
from harness.fit.distributed import DistContext


class CheckFailed(RuntimeError):
    """A callback's training hook raised: the trial ends failed, with the check named."""


class Hooks:
    """The callbacks' hooks as ``fit`` calls them during training. A hook that raises anything
    but ``StopTrial`` is a broken check: it is recorded in ``evidence`` as
    ``check-failed:<name>`` with the hook and the error, and the trial ends failed with that as
    its reason (``CheckFailed``, raised from the error), at once rather than after training that
    the check could not follow: a deterministic bug in a check fails every trial of a sweep
    fast, and each says which check broke."""

    def __init__(self, callbacks: Sequence[Callback], evidence: dict[str, str]) -> None:
        self.callbacks = list(callbacks)
        self.evidence = evidence
        # only callbacks that override on_step_end, their hooks bound once: the training step
        # costs nothing otherwise
        self.stepping = [
            (c, c.on_step_end)
            for c in self.callbacks
            if type(c).on_step_end is not Callback.on_step_end
        ]

    def fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for cb in self.callbacks:
            self._call(cb, cb.on_fit_start, model, optimizer)

    def epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        for cb in self.callbacks:
            self._call(cb, cb.on_epoch_end, epoch, row)

    def step_end(self, step: int, loss: float) -> None:
        for cb, hook in self.stepping:
            self._call(cb, hook, step, loss)

    def _call(self, cb: Callback, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except (StopTrial, KeyboardInterrupt):
            raise
        except Exception as exc:
            flag = check_failed(callback_name(cb))
            text = f"{hook.__name__} raised {_error(exc)}"
            self.evidence.setdefault(flag, text)
            raise CheckFailed(f"{flag}: {text}") from exc


def collect_flags(
    callbacks: Sequence[Callback],
    evidence: dict[str, str],
    *,
    status: str,
    history: list[dict[str, Any]] | None,
    majority: float,
    dist: DistContext | None,
) -> dict[str, str]:
    """``evidence`` with each callback's verdict and the learning check added (``history``
    None: the monitor is off). A check that raises is recorded as ``check-failed:<name>`` with
    its error, never dropped: a broken check must be seen."""
    evidence = dict(evidence)
    for cb in callbacks:
        found: dict[str, str] = {}
        try:
            cb.on_fit_end(status)
        except Exception as exc:
            found[check_failed(callback_name(cb))] = f"on_fit_end: {_error(exc)}"
        try:  # what it found before it failed still counts
            found = {**cb.flags(), **found}
        except Exception as exc:
            found.setdefault(check_failed(callback_name(cb)), f"flags: {_error(exc)}")
        for flag, text in found.items():
            evidence.setdefault(flag, text)
    if status == "finished" and history is not None:
        try:
            found = check_learning(history, majority)
        except Exception as exc:
            found = {check_failed("learning"): _error(exc)}
        for flag, text in found.items():
            evidence.setdefault(flag, text)
    if dist is not None and dist.in_sync:  # every rank's verdicts, to rank 0
        try:
            evidence = ddp.gather_flags(dist, evidence)
        except Exception as exc:
            evidence[check_failed("ranks")] = _error(exc)
    return evidence


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
