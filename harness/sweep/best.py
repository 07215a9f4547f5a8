"""``runs/<study>/best.yaml``: the best unflagged trial's full config, a plain trial config that
``harness trial --config`` reads back, with its trial number and mIoU as comments."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.config import config_from_dict
from harness.config.sweep import SweepSpec
from harness.files import atomic_write_bytes
from harness.sweep.attrs import attrs_of
from harness.sweep.view import best_trial

BEST_FILE = "best.yaml"


def write_best(spec: SweepSpec, trials: Sequence[Any]) -> Path | None:
    """runs/<study>/best.yaml, atomically: the config plus trial number and mIoU as comments
    (comments, so that ``harness trial --config`` reads the file as a plain trial config)."""
    path = spec.study_dir / BEST_FILE
    text = best_text(spec.study, trials, out_dir=spec.base.out_dir, path=path, metric=spec.metric)
    if text is None:
        return None
    atomic_write_bytes(path, text.encode())
    return path


def best_text(
    study: str, trials: Sequence[Any], *, out_dir: str, path: Path, metric: str = "val/mIoU"
) -> str | None:
    """best.yaml's text for the study's best unflagged trial (None when there is none yet);
    ``path`` is where the file is meant to be, for its "reproduce" line."""
    best = best_trial(trials)
    if best is None:
        return None
    attrs = attrs_of(best)
    cfg = config_from_dict(attrs.config or {})
    cfg = dataclasses.replace(cfg, name=f"{study}-best", out_dir=out_dir)
    header = (
        f"# best of study {study}: trial {best.number}, {metric} {best.value:.6f}\n"
        f"# trial: {best.number}\n# val_mIoU: {best.value!r}\n"
        f"# run folder: {attrs.run_dir}\n"
        f"# reproduce: harness trial --config {path}\n"
    )
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def read_best(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """best.yaml -> (config mapping, header fields)."""
    text = path.read_text()
    header: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"# (trial|val_mIoU|run folder|reproduce): (.*)", line)
        if m:
            header[m.group(1)] = m.group(2)
    return yaml.safe_load(text) or {}, header
