"""The objective: one ``fit`` per Optuna trial, with the callbacks a sweep adds (pruning reports,
the study-level verdict as the trial finishes) and the trial's attributes written as it goes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import optuna

from harness.callbacks import Callback, StopTrial
from harness.checks.flags import OUTLIER_LOW
from harness.checks.outliers import TrialOutcome, find_outliers, outcome_of
from harness.config import HIDDEN_PARAMS, TrialConfig, with_overrides
from harness.config.sweep import SweepSpec
from harness.data.loaders import load_data
from harness.errors import ConfigError, DataError, WeightsError
from harness.fit import TrialResult, fit
from harness.plugins import UserCodeError
from harness.secrets import redact
from harness.sweep.attrs import attrs_of, fresh_attrs, set_attrs
from harness.sweep.ranks import run_on_ranks
from harness.tracking import Tracker, make_tracker


class TrialFailed(Exception):
    """A trial ended as failed (NaN loss, an error); optuna records it as FAIL and goes on."""


def trial_config(spec: SweepSpec, trial: Any) -> TrialConfig:
    values: dict[str, Any] = {}
    for p in spec.space:
        if p.kind == "categorical":
            values[p.path] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            step = int(p.step) if p.step else 1
            values[p.path] = trial.suggest_int(
                p.name, int(p.low or 0), int(p.high or 0), step=step, log=p.log
            )
        else:
            values[p.path] = trial.suggest_float(
                p.name, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
            )
    cfg = dataclasses.replace(
        spec.base, name=f"{spec.study}-{trial.number}", out_dir=str(spec.study_dir / "trials")
    )
    # None values would be skipped by with_overrides: set them on the section directly
    nones = {k: v for k, v in values.items() if v is None}
    cfg = with_overrides(cfg, {k: v for k, v in values.items() if v is not None})
    for dotted in nones:
        section, key = dotted.split(".")
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: None})}
        )
    return cfg


class OptunaPruning(Callback):
    """Reports the metric per epoch; the study's pruner may end the trial."""

    name = "pruning"

    def __init__(self, trial: optuna.Trial, metric: str, pruner: str) -> None:
        self.trial, self.metric, self.pruner = trial, metric, pruner
        self.majority_known = False

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        trial, metric = self.trial, self.metric
        value = row.get(metric)
        if value is None or math.isnan(value):
            return
        majority = row.get("val/majority_mIoU")
        if metric == "val/mIoU" and not self.majority_known and isinstance(majority, float):
            set_attrs(trial, majority_miou=majority)  # the median pruner's floor
            self.majority_known = True
        trial.report(float(value), epoch)
        if trial.should_prune():
            why = getattr(trial.study.pruner, "reasons", {}).get(trial.number)
            # the harness's median pruner says which rule stopped the trial
            raise StopTrial(why or f"{self.pruner} pruner ({metric} {value:.4f})", "pruned")


def judged_params(params: Mapping[str, Any]) -> dict[str, Any]:
    # an injected bug is what the detector must find, not a hyperparameter it may explain it by
    return {k: v for k, v in params.items() if k not in HIDDEN_PARAMS}


def outcome(t: Any) -> TrialOutcome:
    """A finished Optuna trial as the study-level detector sees it: its judged parameters and
    value, and, when the trial recorded them, its majority-class level and training-loss curve."""
    ua = attrs_of(t)
    return outcome_of(
        t.number,
        judged_params(t.params),
        float(t.value),
        majority_miou=ua.majority_miou,
        train_loss=ua.train_loss,
        val_loss=ua.val_loss,
        prior_loss=ua.prior_loss,
    )


class StudyOutlierCheck(Callback):
    """The study-level verdict on this trial as it finishes, from the trials finished so far,
    so the flag reaches the trial's own attributes, W&B tags and summary (``fit`` records
    callback flags). The study's current verdict (``study_outliers``) may change later."""

    name = "study-outliers"

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.best = -math.inf
        self.status = ""
        self.rows: list[dict[str, Any]] = []  # what the detector reads of each epoch

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        value = row.get("val/mIoU")
        if value is not None and not math.isnan(value):
            self.best = max(self.best, float(value))
        keep = ("train/loss", "val/loss", "val/majority_mIoU", "val/prior_loss")
        self.rows.append({k: row[k] for k in keep if k in row})

    def on_fit_end(self, status: str) -> None:
        self.status = status

    def flags(self) -> dict[str, str]:
        if self.status != "finished" or not math.isfinite(self.best):
            return {}  # a pruned or failed trial's mIoU says nothing about its parameters
        trial = self.trial
        done = [
            outcome(t)
            for t in trial.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
            )
            if t.value is not None and t.number != trial.number
        ]
        done.append(outcome_of(trial.number, judged_params(trial.params), self.best, self.rows))
        verdict = find_outliers(done).get(trial.number)
        return {OUTLIER_LOW: verdict.evidence} if verdict is not None else {}


def _wandb_path(info: Mapping[str, Any]) -> str:
    if info.get("url"):
        return str(info["url"])
    if info.get("run_id"):
        return f"{info['run_id']} ({info.get('mode')})"
    return str(info.get("mode") or info.get("backend") or "")


def sweep_tracker(spec: SweepSpec, cfg: TrialConfig, console: Any, number: int) -> Tracker:
    """A trial's tracker: its W&B run in the study's group, tagged with the study."""
    return make_tracker(
        cfg,
        console,
        group=spec.study,
        tags=[f"study:{spec.study}"],
        extra_config={"study": spec.study, "trial_number": number},
    )


# A trial refused before training by the user's input (a setting, the data, a weights file, an
# import path): every later trial of the study would be refused the same way, so the sweep stops
# with the one-line error instead of burning trials (the audit's --strict abort is a verdict on
# one trial, not a refusal: it is not here).
REFUSALS = (ConfigError, DataError, WeightsError, UserCodeError)


class Objective:
    """``fit`` per trial; data is loaded once per worker (per distinct data config).

    ``nproc`` > 1: each trial runs on that many processes (``harness.sweep.ranks``), whose rank 0
    reports to the study and asks its pruner itself."""

    def __init__(
        self,
        spec: SweepSpec,
        console: Any = None,
        *,
        verbose: bool = False,
        nproc: int = 1,
        url: str = "",
    ) -> None:
        self.spec = spec
        self.console = console
        self.verbose = verbose
        self.nproc = nproc
        self.url = url
        self._data: dict[Any, Any] = {}
        # the last trial refused before training by a user error (the worker stops on it)
        self.refused: tuple[int, Exception] | None = None

    def data_for(self, cfg: TrialConfig) -> Any:
        key = (cfg.data, cfg.train.seed)
        if key not in self._data:
            self._data[key] = load_data(cfg)
        return self._data[key]

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = trial_config(self.spec, trial)
        set_attrs(trial, **fresh_attrs(cfg.to_dict(), str(cfg.run_dir)))
        if self.console is not None and self.verbose:
            params = ", ".join(f"{k}={fmt_value(v)}" for k, v in trial.params.items())
            self.console.print(f"[bold]trial {trial.number}[/]: {params}", soft_wrap=True)
        try:
            result = self._run(cfg, trial)
        except KeyboardInterrupt:
            set_attrs(trial, status="failed", reason="interrupted (SIGINT)")
            raise
        except Exception as exc:
            set_attrs(trial, status="failed", reason=redact(f"{type(exc).__name__}: {exc}", 500))
            if isinstance(exc, REFUSALS):
                self.refused = (trial.number, exc)
            raise
        # what the study-level detector reads of the trial, read from its history once, as the
        # detector reads any metrics rows
        seen = outcome_of(trial.number, {}, math.nan, result.history)
        set_attrs(
            trial,
            status=result.status,
            reason=result.reason,
            flags=list(result.flags),
            evidence=dict(result.evidence),
            epochs_run=result.epochs_run,
            best_epoch=result.best_epoch,
            best_miou=_finite(result.best_miou),
            train_loss=seen.train_loss,
            val_loss=seen.val_loss,
            prior_loss=seen.prior_loss,
            wandb=_wandb_path(result.summary.get("tracking") or {}),
            device=str((result.summary.get("runtime") or {}).get("device", "")),
        )
        if result.status == "pruned":
            raise optuna.TrialPruned(result.reason or "pruned")
        if result.status != "finished" or math.isnan(result.best_miou):
            raise TrialFailed(result.reason or result.status)
        return float(result.best_miou)

    def _run(self, cfg: TrialConfig, trial: optuna.Trial) -> TrialResult:
        if self.nproc > 1:
            spec = self.spec
            return run_on_ranks(spec, self.url, trial.number, cfg, self.nproc, verbose=self.verbose)
        return fit(
            cfg,
            console=self.console,
            callbacks=[
                OptunaPruning(trial, self.spec.metric, self.spec.pruner.name),
                StudyOutlierCheck(trial),
            ],
            data=self.data_for(cfg),
            tracker=sweep_tracker(self.spec, cfg, self.console, trial.number),
            verbose=self.verbose,
            label=f"trial {trial.number}",
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
