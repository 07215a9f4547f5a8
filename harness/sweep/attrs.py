"""What a sweep stores on each Optuna trial, as one typed record.

Optuna keeps per-trial "user attributes" as a string-keyed mapping. The sweep writes them in the
objective and reads them in the trial table, the report, the pruner and the benchmarks; every key
is a field of ``TrialAttrs``, so a typo is an error and not a silently missing value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialAttrs:
    config: dict[str, Any] | None = None  # the trial's full config (TrialConfig.to_dict)
    run_dir: str = ""  # its run folder
    status: str = ""  # running | finished | pruned | failed | aborted
    reason: str | None = None  # why it ended as it did, when not plainly finished
    flags: tuple[str, ...] = ()  # the trial's own flags (audit, monitor, learning check, ...)
    evidence: dict[str, str] = field(default_factory=dict)  # flag -> what was seen
    epochs_run: int = 0
    best_epoch: int | None = None
    best_miou: float | None = None  # best val mIoU, also for pruned trials
    wandb: str = ""  # the W&B run's URL, or its id and mode
    majority_miou: float | None = None  # val mIoU of predicting the majority class (the floor)
    train_loss: tuple[float, ...] = ()  # train/loss per epoch, for the study-level detector
    val_loss: tuple[float, ...] = ()  # val/loss per epoch, for the same
    prior_loss: float | None = None  # val loss of predicting the class frequencies (no learning)
    # where it trained, as the machine numbers it: cpu, or cuda:2 (the worker's GPU through its
    # CUDA_VISIBLE_DEVICES); "" until the trial has run
    device: str = ""


FIELDS = frozenset(f.name for f in dataclasses.fields(TrialAttrs))


def attrs_of(trial: Any) -> TrialAttrs:
    """The trial's attributes as a record (missing keys take their defaults)."""
    ua = trial.user_attrs
    raw = {k: v for k, v in ua.items() if k in FIELDS and v is not None}
    for key in ("flags", "train_loss", "val_loss"):
        if key in raw:
            raw[key] = tuple(raw[key])
    return TrialAttrs(**raw)


def set_attrs(trial: Any, **values: Any) -> None:
    """Store fields of ``TrialAttrs`` on an Optuna trial (JSON-serialisable values)."""
    for key, value in values.items():
        if key not in FIELDS:
            raise KeyError(f"{key!r} is not a TrialAttrs field ({', '.join(sorted(FIELDS))})")
        trial.set_user_attr(key, list(value) if isinstance(value, tuple) else value)


def fresh_attrs(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """A starting trial's attributes: all of them, since a retried trial inherits the stale
    one's and every one must be overwritten."""
    fresh = dataclasses.asdict(TrialAttrs(config=config, run_dir=run_dir, status="running"))
    fresh.pop("majority_miou")  # set by the first evaluation; absent until then
    return fresh
