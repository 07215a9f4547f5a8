"""The checks' verdicts when a trial ends: every callback's flags, the learning check and, on
several processes, every rank's verdicts gathered to rank 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import harness.fit.distributed as ddp
from harness.callbacks import Callback, callback_name
from harness.checks.flags import check_failed
from harness.checks.learning import check_learning
from harness.fit.distributed import DistContext


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
        try:
            cb.on_fit_end(status)
            found = cb.flags()
        except Exception as exc:
            found = {check_failed(callback_name(cb)): _error(exc)}
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
