"""What ``harness predict`` writes: the competition's submission CSV (``image_id,PredictionString``,
the mask at 256x256 nearest, row-major, space-separated class ids) and one palette PNG per
image (pixel value = class index), and the CSV read back."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from harness.data.coco import CocoSplit
from harness.files import atomic_write
from harness.palette import class_palette
from harness.predict.inputs import MASK_DIR, mask_names

SUBMISSION_SIZE = 256
CSV_NAME = "submission.csv"
CSV_HEADER = ("image_id", "PredictionString")


def submission_mask(mask: np.ndarray) -> np.ndarray:
    """A full-size class mask as the CSV holds it: 256x256, nearest neighbour."""
    return cv2.resize(
        np.ascontiguousarray(mask, dtype=np.uint8),
        (SUBMISSION_SIZE, SUBMISSION_SIZE),
        interpolation=cv2.INTER_NEAREST,
    )


def write_png(path: Path, mask: np.ndarray, num_classes: int) -> None:
    """Palette PNG: pixel value = class index, colours of the harness's one class palette."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(class_palette(num_classes).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def read_submission(path: Path | str) -> dict[str, np.ndarray]:
    """``image_id -> [256, 256]`` class mask, parsed back from a submission CSV."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if tuple(header) != CSV_HEADER:
            raise ValueError(f"{path}: header {header}, expected {list(CSV_HEADER)}")
        return {
            image_id: np.array(pred.split(), dtype=np.int64).reshape(
                SUBMISSION_SIZE, SUBMISSION_SIZE
            )
            for image_id, pred in reader
        }


class Outputs:
    """The CSV (streamed into a temp file inside ``out``, renamed when complete) and the PNGs."""

    def __init__(self, out: Path, formats: tuple[str, ...], split: CocoSplit, n: int) -> None:
        self.out, self.split, self.num_classes = out, split, n
        self.png = "png" in formats
        self.names = mask_names(split)
        self.tmp_csv = out / f".{CSV_NAME}.tmp"
        self._fh = open(self.tmp_csv, "w", newline="") if "csv" in formats else None  # noqa: SIM115
        self._csv = csv.writer(self._fh, lineterminator="\n") if self._fh is not None else None
        if self._csv is not None:
            self._csv.writerow(CSV_HEADER)

    def add(self, index: int, mask: np.ndarray) -> None:
        if self.png:
            write_png(self.out / MASK_DIR / self.names[index], mask, self.num_classes)
        if self._csv is not None:
            flat = " ".join(map(str, submission_mask(mask).reshape(-1).tolist()))
            self._csv.writerow((self.split.images[index]["file_name"], flat))

    def close(self, complete: bool) -> None:
        if self._fh is None:
            return
        self._fh.close()
        if complete:
            os.replace(self.tmp_csv, self.out / CSV_NAME)
