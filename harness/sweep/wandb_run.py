"""The study's own W&B run (``job_type`` "study"): the trial table, the best config, the outlier
verdicts, and the tags of online trial runs brought up to date with them."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from harness.checks.flags import OUTLIER_LOW
from harness.config.sweep import SweepSpec
from harness.secrets import redact
from harness.sweep.attrs import attrs_of
from harness.sweep.study import jsonable_spec
from harness.sweep.view import (
    best_trial,
    flagged_traits,
    study_outliers,
    trial_evidence,
    trial_flags,
)
from harness.tracking.wandb import resolve_mode, wandb_env

TABLE_COLUMNS = (
    "number",
    "state",
    "params",
    "val_mIoU",
    "epochs_run",
    "flags",
    "evidence",
    "wandb_run",
)
WANDB_ERROR = "wandb_error"  # the study attribute that keeps why its W&B run was not logged
_RUN_URL = re.compile(r"https?://[^/]+/([^/]+)/([^/]+)/runs/([^/?#\s]+)")


def retag_online_runs(trials: Sequence[Any], outliers: Mapping[int, str], api: Any) -> int:
    """Bring the W&B tags of online trial runs up to date with the study-level verdict, which
    can change after a run finished (the flag is recomputed as the study grows). Offline runs
    keep the tags they finished with; the study run's table is always current. Returns the
    number of runs changed."""
    changed = 0
    for t in trials:
        m = _RUN_URL.match(attrs_of(t).wandb)
        if t.state.name != "COMPLETE" or m is None:
            continue
        run = api.run("/".join(m.groups()))
        tags = [tag for tag in run.tags if tag != OUTLIER_LOW]
        if t.number in outliers:
            tags.append(OUTLIER_LOW)
        if tags != list(run.tags):
            run.tags = tags
            run.update()
            changed += 1
    return changed


def record_study_run(
    study: Any, spec: SweepSpec, trials: Sequence[Any], say: Callable[[str], None] | None
) -> str | None:
    """Log the study's W&B run; when that fails, say so (on stderr when the sweep is quiet) and
    keep the reason in the study's ``wandb_error`` attribute, so it is never lost. Returns it."""
    error = log_study_run(spec, trials)
    if error is not None:
        if say is not None:
            say(error)
        else:
            print(error, file=sys.stderr)
        study.set_user_attr(WANDB_ERROR, error)
    elif study.user_attrs.get(WANDB_ERROR) is not None:  # an earlier run's failure is mended
        study.set_user_attr(WANDB_ERROR, None)
    return error


def log_study_run(spec: SweepSpec, trials: Sequence[Any]) -> str | None:
    """One W&B run per study (``job_type`` "study", group = study): trial table + best config.
    Like every tracker call, W&B trouble never fails the sweep: it is returned as one line."""
    if spec.base.tracking.backend != "wandb":
        return None
    mode, _ = resolve_mode(os.environ)
    if mode == "disabled":
        return None
    best = best_trial(trials)
    outliers = study_outliers(trials)
    rows = [
        [
            t.number,
            t.state.name.lower(),
            json.dumps(t.params, sort_keys=True),
            t.value if t.state.name == "COMPLETE" else attrs_of(t).best_miou,
            t.user_attrs.get("epochs_run"),
            ",".join(trial_flags(t, outliers)),
            "; ".join(f"{k}: {v}" for k, v in trial_evidence(t, outliers).items()),
            attrs_of(t).wandb,
        ]
        for t in sorted(trials, key=lambda t: t.number)
    ]
    root = spec.study_dir / "wandb"
    root.mkdir(parents=True, exist_ok=True)
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        with wandb_env(root):
            run = wandb.init(
                project=spec.base.tracking.project,
                entity=spec.base.tracking.entity,
                group=spec.study,
                job_type="study",
                name=f"{spec.study}-study",
                config={
                    "sweep": jsonable_spec(spec),
                    "best_config": attrs_of(best).config if best else None,
                    "best_trial": best.number if best else None,
                },
                mode=mode,  # type: ignore[arg-type]
                dir=str(spec.study_dir),
                reinit="create_new",
                settings=wandb.Settings(silent=True, quiet=True, console="off"),
            )
            run.log({"trials": wandb.Table(columns=list(TABLE_COLUMNS), data=rows)})
            run.summary["best/val_mIoU"] = best.value if best else None
            run.summary["best/trial"] = best.number if best else None
            run.summary["outliers"] = {str(n): ev for n, ev in sorted(outliers.items())}
            run.summary["flagged_share"] = flagged_traits(trials)
            run.finish()
            if mode == "online":
                retag_online_runs(trials, outliers, wandb.Api())
    except Exception as exc:
        return f"W&B study run not logged ({redact(f'{type(exc).__name__}: {exc}')})"
    return None
