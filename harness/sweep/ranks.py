"""A sweep's trial on several processes (``harness sweep --nproc-per-trial N``).

The worker runs the trial as ``harness trial --nproc N`` would (``harness.fit.launch``), with one
more thing in the ranks' environment: ``HARNESS_SWEEP_LINK``, the path of a small file that says
which study and trial this is. Rank 0 opens the study's storage itself and adds the sweep's
callbacks (``harness.sweep.linked``): it reports every epoch to Optuna and asks the pruner, as an
in-process trial does, and the ranks stop together on its decision. The worker's own Optuna trial
keeps its heartbeat meanwhile, and reads the trial's outcome back from its run folder.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import TrialConfig
from harness.config.sweep import SweepSpec
from harness.fit import TrialResult, read_metrics
from harness.fit.launch import launch_trial, settle

LINK_ENV = "HARNESS_SWEEP_LINK"


@dataclass(frozen=True)
class TrialLink:
    """What rank 0 needs to join the worker's Optuna trial."""

    spec: SweepSpec
    url: str  # the study's storage
    number: int  # the trial's number in the study


def run_on_ranks(
    spec: SweepSpec, url: str, number: int, cfg: TrialConfig, nproc: int, *, verbose: bool
) -> TrialResult:
    """Train ``cfg`` on ``nproc`` ranks as trial ``number`` of the study; its outcome as
    ``fit`` would return it (a trial whose rank 0 wrote no record comes back failed)."""
    with tempfile.TemporaryDirectory(prefix="harness-sweep-trial-") as tmp:
        link = Path(tmp) / "link.pickle"
        # our own file, read back by our own ranks: pickle keeps the spec exactly
        link.write_bytes(pickle.dumps(TrialLink(spec, url, number)))
        flags = ["-v"] if verbose else ["-q"]
        result = launch_trial(cfg, nproc, flags, env={**os.environ, LINK_ENV: str(link)})
    summary, reason = settle(cfg.run_dir, result)
    if summary is None:
        return _failed(cfg, reason or f"the ranks exited with code {result.returncode}")
    return TrialResult(
        status=str(summary["status"]),
        reason=summary.get("reason"),
        best_miou=_float(summary.get("best_val_mIoU")),
        best_epoch=summary.get("best_epoch"),
        epochs_run=int(summary.get("epochs_run") or 0),
        history=read_metrics(cfg.run_dir) if (cfg.run_dir / "metrics.jsonl").exists() else [],
        per_class_iou=dict(summary.get("per_class_iou") or {}),
        flags=list(summary.get("flags") or []),
        wall_time_s=float(summary.get("wall_time_s") or 0.0),
        run_dir=cfg.run_dir,
        summary=summary,
        evidence=dict(summary.get("evidence") or {}),
    )


def read_link(path: str) -> TrialLink:
    with open(path, "rb") as f:
        link = pickle.load(f)  # written by this trial's own worker, just now
    if not isinstance(link, TrialLink):
        raise TypeError(f"{path}: not a sweep trial link")
    return link


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _failed(cfg: TrialConfig, reason: str) -> TrialResult:
    return TrialResult(
        status="failed",
        reason=reason,
        best_miou=math.nan,
        best_epoch=None,
        epochs_run=0,
        history=[],
        per_class_iou={},
        flags=[],
        wall_time_s=0.0,
        run_dir=cfg.run_dir,
    )
