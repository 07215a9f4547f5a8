"""Benchmark fixtures: synthetic inputs the benchmarks time the harness on.

Kept out of the production modules: the mask-cache benchmark's random polygon dataset and the
pycocotools baseline it is compared with live here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.data import masks as _masks
from harness.data.cache import MaskCache
from harness.data.coco import CocoDataset, CocoSplit
from harness.report.eda import run_eda


def _random_polygon(rng: np.random.Generator, size: int) -> list[float]:
    # A star-shaped polygon: sorted angles around a centre, so it never self-intersects.
    n = int(rng.integers(8, 24))
    cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
    radius = rng.uniform(0.05 * size, 0.25 * size)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + r * np.cos(angles), 0, size - 1)
    ys = np.clip(cy + r * np.sin(angles), 0, size - 1)
    return np.stack([xs, ys], axis=1).ravel().round(2).tolist()


def _bench_dataset(
    n_images: int, size: int, anns_per_image: int, root: Path
) -> tuple[CocoDataset, CocoSplit]:
    rng = np.random.default_rng(0)
    categories: list[dict[str, Any]] = [{"id": i, "name": f"class{i}"} for i in range(10)]
    images: list[dict[str, Any]] = [
        {"id": i, "file_name": f"{i}.jpg", "width": size, "height": size} for i in range(n_images)
    ]
    anns: list[dict[str, Any]] = []
    for img in images:
        for _ in range(anns_per_image):
            anns.append(
                {
                    "id": len(anns),
                    "image_id": img["id"],
                    "category_id": int(rng.integers(0, 10)),
                    "segmentation": [_random_polygon(rng, size)],
                    "iscrowd": 0,
                }
            )
    raw = json.dumps({"images": images, "annotations": anns, "categories": categories})
    ann_path = root / "bench.json"
    ann_path.write_text(raw)
    by_image: dict[int, list[dict[str, Any]]] = {img["id"]: [] for img in images}
    for ann in anns:
        by_image[ann["image_id"]].append(ann)
    split = CocoSplit(
        "train", ann_path, root, images, by_image, hashlib.sha256(raw.encode()).hexdigest()
    )
    dataset = CocoDataset(
        root,
        "single",
        ["background"] + [c["name"] for c in categories],
        {c["id"]: c["id"] + 1 for c in categories},
        {"train": split},
    )
    return dataset, split


def _decode_with_pycocotools(
    anns: list[dict[str, Any]], h: int, w: int, cat_to_class: dict[int, int]
) -> np.ndarray:
    # The baseline the cache replaces: what a dataset without a cache does for every sample.
    import pycocotools.mask as mask_utils

    out = np.zeros((h, w), dtype=np.uint8)
    for ann in anns:
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
        cls = np.uint8(cat_to_class[ann["category_id"]])
        np.maximum(out, mask_utils.decode(rle) * cls, out=out)
    return out


def bench_masks(
    n_images: int = 200,
    size: int = 512,
    anns_per_image: int = 10,
    tmp_dir: Path | None = None,
) -> dict[str, float]:
    """Time decoding + painting every mask with pycocotools against reading it from the cache."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = Path(tmp)
        dataset, split = _bench_dataset(n_images, size, anns_per_image, root)

        start = time.perf_counter()
        cache = MaskCache.build(split, dataset, "max-class", root / "cache")
        build_s = time.perf_counter() - start

        start = time.perf_counter()
        for img in split.images:
            _decode_with_pycocotools(
                split.anns_by_image[img["id"]], size, size, dataset.cat_to_class
            )
        decode_s = time.perf_counter() - start

        start = time.perf_counter()
        for img in split.images:
            cache[img["id"]]
        cache_s = time.perf_counter() - start
    return {
        "n_images": float(n_images),
        "size": float(size),
        "anns_per_image": float(anns_per_image),
        "build_s": build_s,
        "decode_s": decode_s,
        "cache_s": cache_s,
        "speedup": decode_s / cache_s if cache_s > 0 else float("inf"),
    }


# --- harness eda on a competition-sized set -------------------------------------------------

_BENCH_CATEGORIES = [
    "UNKNOWN",
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
]
_BAG = 8


def _star(rng: np.random.Generator, cx: float, cy: float, radius: float, size: int) -> list[float]:
    # A star-shaped polygon (sorted angles around a centre): never self-intersecting.
    n = int(rng.integers(8, 24))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.6, 1.0, n)
    xs = np.clip(cx + r * np.cos(angles), 0, size - 1)
    ys = np.clip(cy + r * np.sin(angles), 0, size - 1)
    return np.stack([xs, ys], axis=1).ravel().round(1).tolist()


def _bench_objects(rng: np.random.Generator, size: int, n: int) -> list[tuple[int, Any, int]]:
    """(category, segmentation, iscrowd) of one image: free objects, bags with items inside,
    multi-polygon objects and crowd RLE, like the competition set."""
    objs: list[tuple[int, Any, int]] = []
    while len(objs) < n:
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        if rng.random() < 0.2:  # a bag with 1-2 objects inside it
            radius = rng.uniform(0.15, 0.3) * size
            objs.append((_BAG, [_star(rng, cx, cy, radius, size)], 0))
            for _ in range(int(rng.integers(1, 3))):
                ox, oy = rng.uniform(-0.25, 0.25, 2) * radius
                inner = _star(rng, cx + ox, cy + oy, rng.uniform(0.15, 0.3) * radius, size)
                objs.append((int(rng.integers(1, 11)), [inner], 0))
            continue
        cat = int(rng.integers(0, 11))
        radius = rng.uniform(0.01, 0.2) * size
        segm: Any = [_star(rng, cx, cy, radius, size)]
        if rng.random() < 0.1:  # torn in two: a second polygon nearby
            segm.append(_star(rng, cx + 2.2 * radius, cy, 0.6 * radius, size))
        if rng.random() < 0.03:  # a crowd pile as compressed RLE
            rle = _masks.mask_utils.merge(_masks.mask_utils.frPyObjects(segm, size, size))
            objs.append((cat, {"counts": rle["counts"].decode("ascii"), "size": [size, size]}, 1))
        else:
            objs.append((cat, segm, 0))
    return objs


def write_bench_dataset(
    root: Path, *, n_train: int = 2617, n_val: int = 655, size: int = 512, seed: int = 0
) -> Path:
    """A competition-layout set of random polygons, about 7.6 annotations per image.

    Every image file is a hard link to one JPEG of the right size: the analysis only reads
    headers, and the sample grid a few images.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    proto = root / "proto.jpg"
    Image.fromarray(np.full((size, size, 3), 127, dtype=np.uint8)).save(proto)
    categories = [{"id": i, "name": n} for i, n in enumerate(_BENCH_CATEGORIES)]
    ann_id = 0
    for split, n_images in (("train", n_train), ("val", n_val)):
        folder = root / f"batch_{split}"
        folder.mkdir()
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for i in range(n_images):
            file_name = f"batch_{split}/{i:04d}.jpg"
            try:
                os.link(proto, root / file_name)
            except OSError:
                shutil.copyfile(proto, root / file_name)
            images.append({"id": i, "file_name": file_name, "width": size, "height": size})
            n = 0 if rng.random() < 0.01 else int(rng.poisson(6.6)) + 1
            for cat, segm, crowd in _bench_objects(rng, size, n):
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": i,
                        "category_id": cat,
                        "segmentation": segm,
                        "iscrowd": crowd,
                    }
                )
                ann_id += 1
        data = {"images": images, "annotations": anns, "categories": categories}
        (root / f"{split}.json").write_text(json.dumps(data, separators=(",", ":")))
    proto.unlink()
    return root


def bench_eda(
    n_train: int = 2617, n_val: int = 655, size: int = 512, tmp_dir: Path | None = None
) -> dict[str, float]:
    """Time ``run_eda`` (load + validate, analyse, report) on a competition-sized random set."""
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        root = write_bench_dataset(Path(tmp) / "data", n_train=n_train, n_val=n_val, size=size)
        n_anns = sum(
            len(json.loads((root / f"{s}.json").read_text())["annotations"])
            for s in ("train", "val")
        )
        result, _ = run_eda(root, Path(tmp) / "eda", cache_dir=None)
    return {
        "images": float(n_train + n_val),
        "annotations": float(n_anns),
        "size": float(size),
        **{f"{k}_s": v for k, v in result.timing.items()},
    }
