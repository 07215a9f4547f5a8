"""Files that must never be half-written: atomic writes, JSON records, checkpoints.

Everything a run or a study writes goes through here: a temp file in the same folder, then a
rename, so a crash (or Ctrl-C) leaves the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.errors import ConfigError


def check_folder(path: Path | str, what: str) -> None:
    """``path`` is, or can be made as, a folder: the nearest part of it that exists must be a
    folder. Checked before any work, so that a plain file where a folder belongs is one line
    (``what`` names the option) instead of a NotADirectoryError deep in a write."""
    for part in (Path(path), *Path(path).parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{what} {path}: {part} is a file, not a folder")
            return


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` fills a temp file beside ``path``, which then replaces ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); the record is as readable as any file the
        # user creates (0666 less the umask), e.g. by teammates sharing the runs folder
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status; elsewhere, before Python
    3.13's os.getumask, the only way is to set it and set it back, during which a file another
    thread makes (W&B writes from its own threads) would get the wrong mode."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass  # no /proc: the fallback below reads it just as exactly
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    atomic_write(Path(path), write)


def jsonable(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null so every reader can parse the record."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)


def read_jsonl(path: Path, *, skip_broken: bool = False) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped. ``skip_broken``: a line cut short by
    a crash is left out (for readers that show what there is) instead of raising."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_broken:
                raise
    return rows


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` atomically: a crash never leaves a truncated best.pt."""
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Tensors and plain containers only (``weights_only=True``): no code runs on load."""
    return torch.load(path, map_location=map_location, weights_only=True)
