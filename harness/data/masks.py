"""COCO instance annotations -> one semantic mask per image (pure functions, no I/O).

Three overlap policies decide the label of a pixel that several annotations cover:

- ``max-class``: the highest class index wins (the 1st edition of the competition painted with
  ``np.maximum``);
- ``area-desc``: annotations are painted largest first, so smaller objects end on top (the 2nd
  edition); equal areas are broken by annotation id so the result never depends on file order;
- ``ignore``: a pixel claimed by two or more *different* classes gets the ignore index; several
  instances of the same class keep that class.

Annotations of a category mapped to class 0 (a ``_background_`` category) are never painted:
background is already the default, and painting it would let such a category erase objects under
``area-desc`` or create conflicts under ``ignore``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from harness.config import OVERLAP_POLICIES

_NUMBER_TYPES = {int, float}  # what JSON numbers parse to (bool excluded on purpose)


class MaskFormatError(ValueError):
    """A segmentation that cannot be decoded (coco.py turns it into a DataError with context)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_number_list(values: Any) -> bool:
    # map() keeps this at C speed: validation touches every coordinate of every polygon.
    return (
        isinstance(values, list)
        and set(map(type, values)) <= _NUMBER_TYPES
        and all(map(math.isfinite, values))
    )


def rle_string_counts(counts: str | bytes) -> list[int]:
    """Decode the run lengths of a compressed COCO RLE string (pycocotools' rleFrString).

    pycocotools fills a mask from uninitialised memory when the runs do not cover the image, so
    the runs are checked here, in Python, before it ever sees them.
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value = 0
        shift = 0
        more = True
        while more:
            if pos >= len(text):
                raise MaskFormatError("compressed RLE ends in the middle of a run")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise MaskFormatError(f"compressed RLE has an invalid character {text[pos]!r}")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            pos += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)  # sign extension, as in the C code
        if len(runs) > 2:
            value += runs[-2]  # runs after the third are stored as deltas
        if value < 0:
            raise MaskFormatError("compressed RLE has a negative run length")
        runs.append(value)
    return runs


def check_segmentation(segmentation: Any, height: int, width: int) -> None:
    """Raise MaskFormatError unless ``segmentation`` is a decodable polygon list or RLE."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise MaskFormatError("RLE needs 'counts' and 'size'")
        size = segmentation["size"]
        if (
            not isinstance(size, list | tuple)
            or len(size) != 2
            or [int(s) if _is_number(s) else None for s in size] != [height, width]
        ):
            raise MaskFormatError(f"RLE size {size!r} is not the image size [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, str | bytes):
            try:
                runs = rle_string_counts(counts)
            except UnicodeDecodeError:
                raise MaskFormatError("compressed RLE is not ASCII") from None
        elif isinstance(counts, list) and all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
        ):
            runs = counts
        else:
            raise MaskFormatError("RLE counts must be a string or a list of non-negative integers")
        if sum(runs) != height * width:
            raise MaskFormatError(
                f"RLE runs cover {sum(runs)} pixels, the image has {height * width}"
            )
        return
    if not isinstance(segmentation, list):
        raise MaskFormatError(
            f"segmentation must be a list of polygons or an RLE dict, got "
            f"{type(segmentation).__name__}"
        )
    for k, polygon in enumerate(_polygons(segmentation)):
        if not _is_number_list(polygon):
            raise MaskFormatError(f"polygon {k} is not a list of finite numbers")
        if len(polygon) % 2:
            raise MaskFormatError(f"polygon {k} has an odd number of coordinates ({len(polygon)})")
        if len(polygon) < 6:
            raise MaskFormatError(f"polygon {k} has {len(polygon) // 2} points, needs at least 3")


def _polygons(segmentation: list[Any]) -> list[Any]:
    # A flat list of numbers is one polygon written without the outer list (seen in the wild).
    if segmentation and _is_number_list(segmentation):
        return [segmentation]
    return segmentation


def decode_instance(ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The pixels of one annotation as a bool HxW array (polygons, RLE or compressed RLE).

    ``iscrowd`` (false/0/1) does not matter here: the encoding is read from the segmentation.
    """
    seg = ann["segmentation"]
    check_segmentation(seg, height, width)
    if isinstance(seg, dict):
        rle = seg
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        elif isinstance(seg["counts"], str):
            rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    else:
        polygons = [[float(v) for v in p] for p in _polygons(seg)]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return np.asarray(mask_utils.decode(rle), dtype=bool)


def _area(ann: Mapping[str, Any], mask: np.ndarray) -> float:
    # The JSON area is what the 2nd edition sorted by; fall back to the pixel count without one.
    area = ann.get("area")
    return float(area) if _is_number(area) else float(mask.sum())  # type: ignore[arg-type]


def build_semantic_mask(
    anns: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    cat_to_class: Mapping[int, int],
    policy: str,
    ignore_index: int = 255,
) -> np.ndarray:
    """Paint the annotations of one image into a uint8 HxW class mask (background 0)."""
    if policy not in OVERLAP_POLICIES:
        choices = ", ".join(OVERLAP_POLICIES)
        raise ValueError(f"unknown overlap policy {policy!r} (one of {choices})")
    if not 0 <= ignore_index <= 255:
        raise ValueError(f"ignore_index={ignore_index} does not fit in uint8")
    out = np.zeros((height, width), dtype=np.uint8)
    items: list[tuple[Mapping[str, Any], int]] = [
        (ann, cat_to_class[ann["category_id"]]) for ann in anns
    ]
    items = [(ann, cls) for ann, cls in items if cls != 0]
    if not items:
        return out

    if policy == "max-class":
        for ann, cls in items:
            np.maximum(out, decode_instance(ann, height, width) * np.uint8(cls), out=out)
        return out

    if policy == "area-desc":
        decoded = [(ann, cls, decode_instance(ann, height, width)) for ann, cls in items]
        decoded.sort(key=lambda t: (-_area(t[0], t[2]), t[0]["id"]))
        for _, cls, mask in decoded:
            out[mask] = cls
        return out

    # ignore: ``out`` holds the first class that claimed a pixel; any other class is a conflict.
    claimed = np.zeros((height, width), dtype=bool)
    conflict = np.zeros((height, width), dtype=bool)
    for ann, cls in items:
        mask = decode_instance(ann, height, width)
        conflict |= mask & claimed & (out != cls)
        out[mask & ~claimed] = cls
        claimed |= mask
    out[conflict] = ignore_index
    return out
