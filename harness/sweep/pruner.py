"""The sweep's ``median`` pruner: Optuna's median rule, judged only against sound trials, with
a floor at the level of a model that learned nothing.

Optuna's ``MedianPruner`` stops a trial whose best value so far is below the median of the
finished trials' values at the same step. On a study where a share of the configurations is
broken (a DeconvNet without decoder BatchNorm sits at the majority-class mIoU from its first
epoch, while a learning one starts *below* that level and passes it a few epochs later), the
broken trials set the bar: the median ties with them (a tie is never pruned) and sits above the
learning trials, so the pruner spares the broken trials and stops the good ones. And before the
first sound trial has finished there is no bar at all, so every broken trial early in a study
runs to the end.

``CheckedMedianPruner`` makes two changes:

- a finished trial that one of the trial-level checks flagged (``no-learning``, the optimizer
  audit, ``never-updated:*``, ``masks-misaligned``, ...) is left out of the median and out of
  the start-up count. Those flags are facts about the trial itself, recorded before it is
  marked finished; the study-level ``outlier:low-miou`` verdict is not used, since it changes
  as the study grows;
- the floor: from the warm-up step on, a trial whose best val mIoU so far is no better than
  what predicting the majority class everywhere scores (the trial's user attribute
  ``majority_miou``, set by the sweep from its first evaluation) is pruned, with no reference
  trial needed: it is what the ``no-learning`` check would flag at the end.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from harness.checks.flags import trial_level
from harness.sweep.attrs import attrs_of

FLOOR_MARGIN = 1e-3  # "no better than the majority class": above it by less than this


class CheckedMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule over the finished trials that no trial-level check flagged, plus
    the majority-class floor (``majority_floor``; maximised studies only).

    From step ``n_warmup_steps`` on, a trial is pruned when its best value so far is at most
    its ``majority_miou`` attribute + ``FLOOR_MARGIN``, or, once ``n_startup_trials`` sound
    trials have finished (at least one), when it is worse than the median of their values at
    the same step. Without the floor and with no flagged trial in the study this is exactly
    Optuna's ``MedianPruner(n_startup_trials, n_warmup_steps)`` (tested against it).
    ``reasons`` holds why each trial this pruner stopped was stopped, in words."""

    def __init__(
        self, n_startup_trials: int = 5, n_warmup_steps: int = 0, majority_floor: bool = False
    ) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.majority_floor = majority_floor
        self.reasons: dict[int, str] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        mine = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
        best = (max(mine) if maximize else min(mine)) if mine else math.nan
        attr = attrs_of(trial).majority_miou
        floor = float(attr) if isinstance(attr, float) and self.majority_floor else math.nan
        if maximize and math.isfinite(floor) and mine and best <= floor + FLOOR_MARGIN:
            self.reasons[trial.number] = (
                f"majority floor: best {best:.4f} <= {floor:.4f} (majority-class mIoU) "
                f"+ {FLOOR_MARGIN:g}"
            )
            return True
        sound = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not trial_level(attrs_of(t).flags)  # the checks' own flags, not the study-level one
        ]
        if len(sound) < max(self.n_startup_trials, 1):
            return False
        if not mine:
            return True  # only NaN so far: as Optuna does
        at_step = [
            v
            for t in sound
            if (v := t.intermediate_values.get(step)) is not None and not math.isnan(v)
        ]
        if not at_step:
            return False
        median = statistics.median(at_step)
        if _worse(best, median, maximize):
            self.reasons[trial.number] = (
                f"median rule: best {best:.4f} {'<' if maximize else '>'} {median:.4f}, the median "
                f"of {len(at_step)} unflagged trials"
            )
            return True
        return False


def _worse(value: float, reference: float, maximize: bool) -> bool:
    return value < reference if maximize else value > reference


def median_replay(
    curves: Sequence[tuple[Sequence[float], bool]],
    n_startup_trials: int,
    n_warmup_epochs: int,
    *,
    skip_flagged: bool = True,
    floor: float | None = None,
) -> tuple[float, int]:
    """The median rule replayed on recorded learning curves (maximised), trial by trial in
    order: returns (best value among the finished trials no check flagged, epochs trained).

    ``curves``: each trial's metric per epoch (epoch 1 first) and whether a check flagged it.
    ``skip_flagged`` leaves flagged trials out of the median, as ``CheckedMedianPruner`` does;
    ``False`` gives Optuna's plain ``MedianPruner``. ``floor``: the majority-class mIoU of the
    study's val set (one for all trials), for the pruner's floor. Exact for the curves of a
    study run without pruning, since a trial's curve does not depend on whether it is stopped
    later (same seed, same device), nor do its check flags (the checks read the whole run, and
    only finished trials count)."""
    reference: list[Sequence[float]] = []
    best, epochs = -math.inf, 0
    for curve, flagged in curves:
        so_far, pruned = -math.inf, False
        for epoch, value in enumerate(curve, 1):
            so_far = max(so_far, value)
            if floor is not None and epoch >= n_warmup_epochs and so_far <= floor + FLOOR_MARGIN:
                epochs, pruned = epochs + epoch, True
                break
            if len(reference) >= max(n_startup_trials, 1) and epoch >= n_warmup_epochs:
                at_epoch = [c[epoch - 1] for c in reference if len(c) >= epoch]
                if at_epoch and so_far < statistics.median(at_epoch):
                    epochs, pruned = epochs + epoch, True
                    break
        if pruned:
            continue
        epochs += len(curve)
        if not (flagged and skip_flagged):
            reference.append(curve)
        if not flagged:
            best = max(best, so_far)
    return best, epochs


def replay_of(trials: Sequence[Any]) -> list[tuple[list[float], bool]]:
    """(metric per epoch, flagged by a trial-level check) of a study's finished trials, in
    order: the input of ``median_replay``."""
    return [
        (
            [t.intermediate_values[e] for e in sorted(t.intermediate_values)],
            bool(trial_level(attrs_of(t).flags)),
        )
        for t in trials
        if t.state == TrialState.COMPLETE
    ]
