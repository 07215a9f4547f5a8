"""Decoded semantic masks cached on disk, so polygons are decoded once per dataset and policy.

One cache entry per split lives in ``<cache_dir>/masks/<key[:16]>/``: ``masks.u8`` holds every
mask of the split concatenated (row-major uint8) and ``index.json`` the offset and shape of each
image's mask. Reads go through ``np.memmap``: a slice and a copy, no file open, no header parse,
and the mapping survives the fork into DataLoader workers. Mixed image sizes need no padding.

The key covers everything a mask depends on (annotation bytes and split selection, overlap policy,
class map, ignore index, format version), so a changed input can never hit a stale entry.
An entry is built in a temporary folder and renamed into place in one step: a folder under its
final name is always complete, a crash leaves only a temporary folder, and when two processes
build the same entry at once the second rename fails and its copy is thrown away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.data import masks as _masks
from harness.data.coco import CocoDataset, CocoSplit
from harness.progress import bar

FORMAT_VERSION = 1
DATA_FILE = "masks.u8"
INDEX_FILE = "index.json"
_PROGRESS_MIN_IMAGES = 200  # below this a build takes about a second: no progress bar


def cache_key(split: CocoSplit, dataset: CocoDataset, policy: str, ignore_index: int = 255) -> str:
    spec = {
        "version": FORMAT_VERSION,
        "content": split.content_hash,
        "policy": policy,
        "cat_to_class": sorted(dataset.cat_to_class.items()),
        "class_names": dataset.class_names,
        "ignore_index": ignore_index,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


class MaskCache:
    """Read-only access to the cached masks of one split, by COCO image id."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        index = json.loads((self.path / INDEX_FILE).read_text())
        self.key: str = index["key"]
        self.policy: str = index["policy"]
        self.ignore_index: int = index["ignore_index"]
        self._slots: dict[int, tuple[int, int, int]] = {
            int(iid): (int(off), int(h), int(w))
            for iid, off, h, w in zip(
                index["image_ids"], index["offsets"], index["heights"], index["widths"], strict=True
            )
        }
        self._nbytes = int(index["nbytes"])
        actual = (self.path / DATA_FILE).stat().st_size
        if actual != self._nbytes:
            raise ValueError(f"{self.path / DATA_FILE}: {actual} bytes, index says {self._nbytes}")
        self._data: np.memmap | None = None

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        split: CocoSplit,
        dataset: CocoDataset,
        policy: str,
        cache_dir: Path | str,
        ignore_index: int = 255,
    ) -> MaskCache:
        """Open the cached masks of ``split``, decoding and writing them first if needed."""
        key = cache_key(split, dataset, policy, ignore_index)
        base = Path(cache_dir) / "masks"
        final = base / key[:16]
        tmp: Path | None = None
        try:
            # Retries only matter when several processes repair a broken entry at the same time.
            for _ in range(5):
                cache = cls._open_valid(final, key)
                if cache is not None:
                    return cache
                if tmp is None:
                    base.mkdir(parents=True, exist_ok=True)
                    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=base))
                    cls._write(tmp, key, split, dataset, policy, ignore_index)
                if final.exists() and cls._open_valid(final, key) is None:
                    cls._discard(final, base, key)
                # Fails when a concurrent build renamed its identical copy first: use that one.
                with contextlib.suppress(OSError):
                    os.rename(tmp, final)
                    tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{final}: mask cache could not be written")

    @staticmethod
    def _discard(final: Path, base: Path, key: str) -> None:
        # A broken entry (truncated files, or a colliding key prefix) under the final name: move
        # it aside in one step, then delete it, so nobody sees a half-deleted folder.
        stale = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", suffix=".stale", dir=base))
        with contextlib.suppress(OSError):  # another process got there first
            os.replace(final, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)

    @classmethod
    def _open_valid(cls, path: Path, key: str) -> MaskCache | None:
        if not (path / INDEX_FILE).is_file():
            return None
        try:
            cache = cls(path)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cache if cache.key == key else None

    @staticmethod
    def _write(
        folder: Path,
        key: str,
        split: CocoSplit,
        dataset: CocoDataset,
        policy: str,
        ignore_index: int,
    ) -> None:
        ids: list[int] = []
        offsets: list[int] = []
        heights: list[int] = []
        widths: list[int] = []
        offset = 0
        with (
            open(folder / DATA_FILE, "wb") as fh,
            bar(
                len(split.images), f"decoding {split.name} masks", min_total=_PROGRESS_MIN_IMAGES
            ) as step,
        ):
            for img in split.images:
                h, w = img["height"], img["width"]
                mask = _masks.build_semantic_mask(
                    split.anns_by_image.get(img["id"], []),
                    h,
                    w,
                    dataset.cat_to_class,
                    policy,
                    ignore_index,
                )
                fh.write(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
                ids.append(img["id"])
                offsets.append(offset)
                heights.append(h)
                widths.append(w)
                offset += h * w
                step()
            fh.flush()
            os.fsync(fh.fileno())
        index = {
            "key": key,
            "version": FORMAT_VERSION,
            "split": split.name,
            "ann_path": str(split.ann_path),
            "policy": policy,
            "ignore_index": ignore_index,
            "class_names": dataset.class_names,
            "nbytes": offset,
            "image_ids": ids,
            "offsets": offsets,
            "heights": heights,
            "widths": widths,
        }
        (folder / INDEX_FILE).write_text(json.dumps(index))

    # --- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slots

    def __getitem__(self, image_id: int) -> np.ndarray:
        """The mask of one image: a fresh, writable uint8 HxW array."""
        off, h, w = self._slots[image_id]
        if h * w == 0:
            return np.zeros((h, w), dtype=np.uint8)
        if self._data is None:
            # Opened lazily, so a pickled cache (spawned DataLoader workers) maps the file anew.
            self._data = np.memmap(self.path / DATA_FILE, dtype=np.uint8, mode="r")
        return np.array(self._data[off : off + h * w]).reshape(h, w)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None
        return state
