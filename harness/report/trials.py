"""The report's view of a study's trials: plain records read from Optuna and the run folders."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.files import read_jsonl
from harness.sweep.attrs import attrs_of
from harness.sweep.view import (
    study_outliers,
    trial_evidence,
    trial_flags,
)

# --- what the report needs of each trial ---------------------------------------------------------


@dataclass(frozen=True)
class TrialInfo:
    """One trial as the report sees it: plain values, no Optuna objects."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    value: float | None  # the objective when complete, else the best val mIoU it reached
    flags: list[str]
    evidence: dict[str, str]
    run_dir: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def trial_infos(
    trials: Sequence[Any], *, study: str = "", out: Path | None = None
) -> list[TrialInfo]:
    """The report's view of every trial, flags as the study stands now (outliers recomputed)."""
    outliers = study_outliers(trials)
    infos = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = attrs_of(t)
        state = t.state.name
        raw = t.value if state == "COMPLETE" else ua.best_miou
        value = float(raw) if raw is not None and math.isfinite(float(raw)) else None
        infos.append(
            TrialInfo(
                number=t.number,
                state=state,
                params=dict(t.params),
                value=value,
                flags=trial_flags(t, outliers),
                evidence=trial_evidence(t, outliers),
                run_dir=_run_dir(ua.run_dir, study, t.number, out),
                config=dict(ua.config or {}),
                reason=str(ua.reason or t.system_attrs.get("fail_reason") or ""),
            )
        )
    return infos


def _run_dir(recorded: Any, study: str, number: int, out: Path | None) -> Path | None:
    """The recorded run folder; when it is gone (moved study, relative path from another cwd),
    the sweep's standard place ``<out>/<study>/trials/<study>-<number>`` if that exists."""
    if recorded:
        path = Path(recorded)
        if path.is_dir() or out is None:
            return path
    if out is not None and study:
        standard = out / study / "trials" / f"{study}-{number}"
        if standard.is_dir():
            return standard
    return Path(recorded) if recorded else None


def param_names(infos: Sequence[TrialInfo]) -> list[str]:
    names: list[str] = []
    for t in infos:
        names.extend(n for n in t.params if n not in names)
    return names


def fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)


def params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items())


def read_metrics(run_dir: Path | None) -> list[dict[str, Any]] | None:
    """``metrics.jsonl`` rows, or None when the run folder or the file is missing."""
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return None
    return read_jsonl(run_dir / "metrics.jsonl", skip_broken=True)


def read_summary(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
