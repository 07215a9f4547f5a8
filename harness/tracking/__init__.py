"""Where a trial is reported besides its run folder: Weights & Biases, local mask panels, nowhere.

Backends (``tracking.backend``, ``--tracking``):

    wandb  one W&B run per trial; online when logged in, offline under runs/<name>/wandb/ otherwise
    local  the mask panels as PNGs under runs/<name>/media/, no W&B
    none   nothing beyond the run record
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.config import TrialConfig
from harness.tracking.base import Tracker, TrialStart, console_say
from harness.tracking.panels import LocalTracker, MaskPanel
from harness.tracking.wandb import WandbTracker

__all__ = [
    "LocalTracker",
    "MaskPanel",
    "Tracker",
    "TrialStart",
    "WandbTracker",
    "make_tracker",
]


def make_tracker(
    cfg: TrialConfig,
    console: Any = None,
    *,
    group: str = "manual",
    tags: Sequence[str] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> Tracker:
    """The tracker ``cfg.tracking.backend`` names. A sweep passes ``group`` (the study name),
    ``tags`` and ``extra_config`` (e.g. ``{"trial_number": 7}``)."""
    backend = cfg.tracking.backend
    if backend == "wandb":
        return WandbTracker(
            group=group, tags=tags, extra_config=extra_config, say=console_say(console)
        )
    if backend == "local":
        return LocalTracker(say=console_say(console))
    return Tracker()
