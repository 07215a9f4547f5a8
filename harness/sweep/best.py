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
    best = best_trial(trials)
    if best is None:
        return None
    attrs = attrs_of(best)
    cfg = config_from_dict(attrs.config or {})
    cfg = dataclasses.replace(cfg, name=f"{spec.study}-best", out_dir=spec.base.out_dir)
    path = spec.study_dir / BEST_FILE
    header = (
        f"# best of study {spec.study}: trial {best.number}, {spec.metric} {best.value:.6f}\n"
        f"# trial: {best.number}\n# val_mIoU: {best.value!r}\n"
        f"# run folder: {attrs.run_dir}\n"
        f"# reproduce: harness trial --config {path}\n"
    )
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_bytes(path, (header + body).encode())
    return path


def read_best(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """best.yaml -> (config mapping, header fields)."""
    text = path.read_text()
    header: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"# (trial|val_mIoU|run folder|reproduce): (.*)", line)
        if m:
            header[m.group(1)] = m.group(2)
    return yaml.safe_load(text) or {}, header
