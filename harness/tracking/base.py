"""The tracker protocol: where a trial is reported besides its run folder.

``fit`` always writes the local run record (config.yaml, metrics.jsonl, summary.json, ...). A
``Tracker`` receives the same numbers at the same moments:

    start(TrialStart)                              after the param-group audit, before training
    log_epoch(row, final=)                         once per completed epoch (the metrics.jsonl row)
    finish(summary)                                exactly once, whatever the outcome

A tracker never ends a trial: trouble is reported once, in one line, and the trial goes on.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.config import TrialConfig

Say = Callable[[str], None]

# --- messages said once per process ----------------------------------------------------------

_lock = threading.Lock()
_said: set[str] = set()


def say_once(say: Say, key: str, message: str) -> None:
    with _lock:
        if key in _said:
            return
        _said.add(key)
    say(message)


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def console_say(console: Any) -> Say:
    """Messages to a rich console when there is one (plain text, no markup), else stderr."""
    if console is None:
        return stderr
    return lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True)


# --- the protocol ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialStart:
    """What a tracker is told when a trial starts: after the param-group audit, before training."""

    cfg: TrialConfig
    model: nn.Module
    device: torch.device
    bundle: Any  # harness.data.dataset.DataBundle (val images for the mask panels, class names)
    audit: Any  # harness.checks.audit.AuditReport
    runtime: Mapping[str, Any] | None = None  # the resolved runtime settings (summary.json)


class Tracker:
    """``--tracking none``: the run record alone. The base of the other backends."""

    backend = "none"

    def start(self, trial: TrialStart) -> None:
        pass

    def log_epoch(self, row: Mapping[str, Any], *, final: bool) -> None:
        pass

    def finish(self, summary: Mapping[str, Any]) -> None:
        pass

    def info(self) -> dict[str, Any]:
        """What summary.json records about this tracker (never a credential)."""
        return {"backend": self.backend}
