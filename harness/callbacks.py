"""The callback protocol between ``fit`` and what plugs into it (checks, pruning, monitors).

It lives below both: the checks implement callbacks without knowing ``fit``, and ``fit`` calls
them without knowing which checks exist.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class StopTrial(Exception):
    """Raised by a callback to end a trial early (pruning, a monitor's verdict)."""

    def __init__(self, reason: str, status: str = "pruned") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Callback:
    """Hooks into ``fit``; override what you need. Raise ``StopTrial`` to end the trial.

    ``name`` identifies the callback in a ``check-failed:<name>`` flag when one of its hooks
    raises something other than ``StopTrial``.
    """

    name: str = ""

    def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """``row`` is the epoch's metrics row: keys added here reach metrics.jsonl and W&B."""

    def on_step_end(self, step: int, loss: float) -> None:
        """After each optimiser step (``step`` counts from 1 over the whole fit). Only called
        on callbacks that override it: the hot path costs nothing otherwise."""

    def on_fit_end(self, status: str) -> None:
        """Once, when the trial ends (finished, pruned, failed, aborted), before ``flags``."""

    def flags(self) -> dict[str, str]:
        """Flags this callback raised, each with its evidence; ``fit`` records them."""
        return {}


def callback_name(cb: Callback) -> str:
    return cb.name or type(cb).__name__
