"""Flag names: what every check calls what it found, in one place.

A flag is a short name (``audit:missing:decoder``); its evidence is a sentence in plain words
(``decoder: 0 of 231.3k trainable parameters in any optimiser group``). Trials, W&B tags, the
trial table, the report and the pruner all use these names, so they are built only here.
"""

from __future__ import annotations

from collections.abc import Iterable

AUDIT = "audit"  # param-group audit findings: audit:missing:<module>, audit:zero-lr:<group>, ...
NEVER_UPDATED = "never-updated"  # never-updated:<module>, from the update monitor
NO_LEARNING = "no-learning"  # the learning check, after a finished trial
MASKS_MISALIGNED = "masks-misaligned"  # the mask pairing check, before training
NAN_LOSS = "nan-loss"  # the training loss became NaN or inf
EVAL_MODE = "eval-mode"  # eval-mode:<module>: BatchNorm/Dropout in eval mode while training
OUTLIER_LOW = "outlier:low-miou"  # the study-level detector (changes as the study grows)
CHECK_FAILED = "check-failed"  # check-failed:<check>: a check itself raised
RANKS_DIFFER = "ranks-differ"  # ranks-differ:optimizer: a rank's optimiser differs from rank 0's


def audit_flag(code: str) -> str:
    """``missing:decoder`` -> ``audit:missing:decoder``."""
    return f"{AUDIT}:{code}"


def never_updated(module: str) -> str:
    return f"{NEVER_UPDATED}:{module}"


def eval_mode(module: str) -> str:
    return f"{EVAL_MODE}:{module}"


def check_failed(check: str) -> str:
    return f"{CHECK_FAILED}:{check}"


def ranks_differ(what: str) -> str:
    return f"{RANKS_DIFFER}:{what}"


def is_study_level(flag: str) -> bool:
    """The study-level verdict is recomputed from the study as it grows; every other flag is a
    fact about the trial itself, recorded when it ended."""
    return flag == OUTLIER_LOW


def trial_level(flags: Iterable[str]) -> list[str]:
    return [f for f in flags if not is_study_level(f)]
