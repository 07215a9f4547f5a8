"""Training: ``fit`` (one trial, recorded), its loop, and the run record."""

from harness.callbacks import Callback, StopTrial
from harness.fit.fit import AuditFailed, TrialResult, default_callbacks, fit
from harness.fit.loop import (
    NonFiniteLoss,
    evaluate,
    resolve_device,
    seed_everything,
    train_one_epoch,
)
from harness.fit.record import RECORD_FILES, RunRecord, read_metrics

__all__ = [
    "RECORD_FILES",
    "AuditFailed",
    "Callback",
    "NonFiniteLoss",
    "RunRecord",
    "StopTrial",
    "TrialResult",
    "default_callbacks",
    "evaluate",
    "fit",
    "read_metrics",
    "resolve_device",
    "seed_everything",
    "train_one_epoch",
]
