"""Optuna sweeps: a validated sweep file, a study that resumes to a total, workers, best config.

    storage     where the study lives (SQLite by default, any SQLAlchemy URL)
    study       creating / loading the study, its sampler and pruner
    pruner      the median rule judged against unflagged trials, with a majority-class floor
    attrs       what is stored on each trial (one typed record)
    objective   one ``fit`` per trial, with the pruning and study-level callbacks
    view        counts, flags, the best trial, the trial table and progress lines
    best        runs/<study>/best.yaml
    workers     worker processes, signals, ``run_sweep``
    wandb_run   the study's own W&B run

Each trial is a ``fit`` whose run folder is ``runs/<study>/trials/<study>-<number>``.
"""

from harness.sweep.best import BEST_FILE, best_text, read_best, write_best
from harness.sweep.storage import STUDY_DB, open_storage, sqlite_url, storage_url
from harness.sweep.study import create_study, load_study
from harness.sweep.view import (
    best_trial,
    counts,
    evidence_lines,
    flagged_traits,
    progress_line,
    study_outliers,
    trial_evidence,
    trial_flags,
    trial_rows,
    trial_table,
    trials_of,
)
from harness.sweep.workers import run_sweep, run_worker

__all__ = [
    "BEST_FILE",
    "STUDY_DB",
    "best_text",
    "best_trial",
    "counts",
    "create_study",
    "evidence_lines",
    "flagged_traits",
    "load_study",
    "open_storage",
    "progress_line",
    "read_best",
    "run_sweep",
    "run_worker",
    "sqlite_url",
    "storage_url",
    "study_outliers",
    "trial_evidence",
    "trial_flags",
    "trial_rows",
    "trial_table",
    "trials_of",
    "write_best",
]
