"""The local run record: everything a trial did, in plain files under ``runs/<name>/``.

    config.yaml     the full resolved config (``harness trial --config`` reads it back)
    audit.json      the param-group audit and its findings
    metrics.jsonl   one JSON line per epoch
    summary.json    status, best val mIoU and epoch, per-class IoU, wall time, flags
    best.pt         the best checkpoint by val mIoU (written by ``fit``)

Files are written atomically (temp file + rename) so a crash never leaves a half-written record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.checks.audit import AuditReport
from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.files import atomic_write_bytes, check_folder, dumps, read_jsonl


@dataclass
class TrialResult:
    """What ``fit`` returns: how the trial ended, its best epoch, history and flags."""

    status: str  # finished | failed | pruned | aborted
    reason: str | None
    best_miou: float
    best_epoch: int | None
    epochs_run: int
    history: list[dict[str, Any]]
    per_class_iou: dict[str, float]
    flags: list[str]
    wall_time_s: float
    run_dir: Path
    audit: AuditReport | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, str] = field(default_factory=dict)  # flag -> what was seen


RECORD_FILES = ("config.yaml", "audit.json", "metrics.jsonl", "summary.json", "best.pt")


def ensure_free(run_dir: Path) -> None:
    """A folder that already holds a run is never overwritten: say so before any work starts
    (and that the folder can be made at all)."""
    check_folder(run_dir, "out_dir/name:")
    existing = [f for f in RECORD_FILES if (Path(run_dir) / f).exists()]
    if existing:
        raise ConfigError(
            f"{run_dir}: already holds a run ({', '.join(existing)}); "
            "choose another --name or --out, or remove that folder"
        )


class RunRecord:
    """Writes one run folder; refuses a folder that already holds a run."""

    writes = True

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        ensure_free(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: TrialConfig, extra: dict[str, Any] | None = None) -> None:
        doc = cfg.to_dict()
        atomic_write_bytes(self.dir / "config.yaml", yaml.safe_dump(doc, sort_keys=False).encode())
        if extra:
            atomic_write_bytes(self.dir / "dataset.json", dumps(extra, indent=2).encode())

    def write_audit(self, audit: dict[str, Any]) -> None:
        atomic_write_bytes(self.dir / "audit.json", dumps(audit, indent=2).encode())

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(dumps(row) + "\n")
            f.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_bytes(self.dir / "summary.json", dumps(summary, indent=2).encode())


class NullRecord(RunRecord):
    """The record of a rank other than 0 in a trial on several processes: it writes nothing
    (rank 0 writes the one run folder)."""

    writes = False

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def write_config(self, cfg: TrialConfig, extra: dict[str, Any] | None = None) -> None:
        pass

    def write_audit(self, audit: dict[str, Any]) -> None:
        pass

    def append_metrics(self, row: dict[str, Any]) -> None:
        pass

    def write_summary(self, summary: dict[str, Any]) -> None:
        pass


def amend_summary(run_dir: Path, **fields: Any) -> dict[str, Any] | None:
    """Change fields of a written summary.json (the launcher adds what only it knows: which rank
    died, with which exit code); None when the trial wrote none."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    summary = {**json.loads(path.read_text()), **fields}
    atomic_write_bytes(path, dumps(summary, indent=2).encode())
    return summary


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
