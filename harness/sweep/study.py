"""An Optuna study of trials: created once, loaded by every worker, with the sampler and pruner the
sweep file names."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any

import optuna
import yaml

from harness.config.sweep import SweepSpec
from harness.errors import HarnessError
from harness.files import check_folder
from harness.secrets import mask_url
from harness.sweep.pruner import CheckedMedianPruner
from harness.sweep.storage import STUDY_DB, open_storage, sqlite_file, sqlite_url


def make_sampler(spec: SweepSpec, seed_offset: int = 0) -> Any:
    # a resumed or parallel worker must not replay the first worker's random draws
    sampler = spec.sampler
    seed = zlib.crc32(f"{sampler.seed}:{seed_offset}".encode()) if seed_offset else sampler.seed
    if sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if sampler.name == "grid":
        grid = {p.name: list(p.choices) for p in spec.space}
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)


def make_pruner(spec: SweepSpec) -> Any:
    pruner = spec.pruner
    if pruner.name == "median":
        # Optuna's median rule, but trials a check flagged (e.g. no-learning) do not set the bar
        return CheckedMedianPruner(
            n_startup_trials=pruner.n_startup_trials,
            n_warmup_steps=pruner.n_warmup_epochs,
            majority_floor=pruner.majority_floor,
        )
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=spec.base.train.epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def create_study(spec: SweepSpec, url: str) -> Any:
    """Create the study once (before any worker starts); a racing creator just loads it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_folder(spec.study_dir, "--out/study:")
    spec.study_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, spec)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study,
            direction="maximize" if spec.direction == "maximize" else "minimize",
            load_if_exists=True,
        )
    except Exception as exc:  # DuplicatedStudyError / IntegrityError from a concurrent creator
        if "exist" not in str(exc).lower() and "unique" not in str(exc).lower():
            raise
        study = optuna.load_study(study_name=spec.study, storage=storage)
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", jsonable_spec(spec))
    else:
        _check_same_space(spec, study.user_attrs["sweep"].get("space") or {})
    return study


def _check_same_space(spec: SweepSpec, before: dict[str, Any]) -> None:
    """A resumed study keeps its parameters: other names would leave half-empty columns and
    mislead the sampler and the study-level detector. A changed range is allowed, and said."""
    now = jsonable_spec(spec).get("space") or {}
    if set(now) != set(before):
        raise HarnessError(
            f"study {spec.study}: was searched over {', '.join(sorted(before)) or 'nothing'}, "
            f"this sweep file over {', '.join(sorted(now)) or 'nothing'}; use another --study "
            "(or the file it began with)"
        )
    for name in sorted(now):
        if now[name] != before[name]:
            print(
                f"note: study {spec.study}: space.{name} was {before[name]} when it began, now "
                f"{now[name]}: its trials mix both",
                file=sys.stderr,
            )


def jsonable_spec(spec: SweepSpec) -> dict[str, Any]:
    """The sweep file as the study records it, with what the command's options made of it:
    the study name (``--study``), the trial target and the checks and tracking the trials ran
    with (``--n-trials``, ``--no-audit``, ``--no-monitor``, ``--tracking``)."""
    raw = dict(spec.raw)
    raw.pop("storage", None)  # may hold a password
    train = spec.base.train
    effective = {
        "n_trials": spec.n_trials,
        "timeout": spec.timeout,
        "audit": train.audit,
        "monitor": train.monitor,
        "tracking": spec.base.tracking.backend,
    }
    recorded = {**yaml.safe_load(yaml.safe_dump(raw)), "study": spec.study}
    return {"source": spec.source, **recorded, "effective": effective}


def load_study(study: str, *, out: str = "runs", storage: str | None = None) -> Any:
    url = storage or sqlite_url(Path(out) / study)
    if storage is None and not (Path(out) / study / STUDY_DB).exists():
        raise HarnessError(
            f"study {study}: no {Path(out) / study / STUDY_DB}; pass --storage URL for a "
            "study kept elsewhere"
        )
    db = sqlite_file(url)
    if storage is not None and db is not None and not db.is_file():
        # opening it would create an empty database: a reader never writes one
        raise HarnessError(f"study {study}: --storage {mask_url(url)}: no such file {db}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=False))
    except KeyError:
        raise HarnessError(f"study {study}: not found in {mask_url(url)}") from None
