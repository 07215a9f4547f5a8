"""Rank 0 of a sweep's trial on several processes: the sweep's callbacks and tracker, bound to the
worker's Optuna trial through the study's storage (see ``harness.sweep.ranks``)."""

from __future__ import annotations

import os
from typing import Any

import optuna

from harness.callbacks import Callback
from harness.config import TrialConfig
from harness.sweep.objective import OptunaPruning, StudyOutlierCheck, sweep_tracker
from harness.sweep.ranks import LINK_ENV, read_link
from harness.sweep.storage import open_storage
from harness.sweep.study import make_pruner
from harness.tracking import Tracker


def linked_trial(cfg: TrialConfig, console: Any) -> tuple[list[Callback], Tracker]:
    """The pruning and study-outlier callbacks and the sweep's W&B tracker for the trial named
    by ``HARNESS_SWEEP_LINK`` (set by the sweep worker that started this process)."""
    link = read_link(os.environ[LINK_ENV])
    spec = link.spec
    storage = open_storage(link.url, spec, heartbeat=False)  # the worker keeps the heartbeat
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=spec.study, storage=storage, pruner=make_pruner(spec))
    study_id = storage.get_study_id_from_name(spec.study)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, link.number)
    trial = optuna.trial.Trial(study, trial_id)
    callbacks: list[Callback] = [
        OptunaPruning(trial, spec.metric, spec.pruner.name),
        StudyOutlierCheck(trial),
    ]
    return callbacks, sweep_tracker(spec, cfg, console, link.number)
