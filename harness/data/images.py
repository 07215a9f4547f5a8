"""Where a split's image files live: the path-escape rule, the folder pick, and the hint.

A ``file_name`` is a path relative to the image folder (the layout's, or ``data.image_root``);
one that is absolute or climbs out with ``..`` is refused from its text alone, before anything
is opened.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


def escapes(file_name: str, folder: Path | None = None) -> str | None:
    """Why ``file_name`` cannot be a path inside the image folder, judged from the text alone.

    ``folder`` (the image folder) is only named in the reason.
    """
    where = f" {folder}" if folder is not None else ""
    if (
        os.path.isabs(file_name)
        or file_name.startswith(("/", "\\"))
        or PureWindowsPath(file_name).drive
    ):
        return f"is an absolute path (file names are relative to the image folder{where})"
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    if ".." in parts:
        return f"leaves the image folder{where} ('..')"
    return None


def pick_image_root(candidates: tuple[Path, ...], images: list[dict[str, Any]]) -> Path | None:
    """The candidate that holds the first few images; None when no candidate exists at all."""
    sample = sorted(images, key=lambda im: im["id"])[:5]
    best: tuple[int, Path] | None = None
    for cand in candidates:
        if not cand.is_dir():
            continue
        hits = sum(
            1
            for im in sample
            if escapes(im["file_name"]) is None and (cand / im["file_name"]).is_file()
        )
        if best is None or hits > best[0]:
            best = (hits, cand)
    return best[1] if best else None


def images_elsewhere(ann_path: Path, image_root: Path, file_name: str) -> Path | None:
    """A folder beside the annotation file (``JPEGImages/``, ``images/``...) holding ``file_name``.

    A cheap guess for the error message when most images are missing: only the annotation
    file's folder and its direct subfolders are looked at, for one file name.
    """
    base = ann_path.parent
    try:
        subdirs = sorted(p for p in base.iterdir() if p.is_dir())
    except OSError:
        return None
    real_root = image_root.resolve()
    for folder in (base, *subdirs):
        if folder.resolve() != real_root and (folder / file_name).is_file():
            return folder
    return None
