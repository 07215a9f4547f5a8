"""The built-in dataset: deterministic synthetic COCO segmentation data imitating recycling trash.

It lets a sweep run on a laptop CPU with no download, yet exercises what the real competition set
throws at a loader: category ids 0..K-1 (id 0 is a real class), image and annotation ids starting at
0, several polygons per annotation, crowd RLE masks (compressed and uncompressed) and overlapping
instances, including objects drawn fully inside a plastic bag, so the overlap policy changes labels.

Rendering rules that keep annotations honest:

* every annotation is rasterised with pycocotools exactly as ``COCO.annToMask`` does, and the object
  is painted on exactly those pixels, so the masks match the image;
* annotations are whole (amodal) shapes and objects are painted in decreasing area, so where two
  annotations overlap the smaller one is visible: the "area-desc" policy reproduces the image;
* unannotated clutter (background blobs, lines, tiles, the sticks across split paper) only ever
  lies on pixels no annotation claims.

Randomness comes from ``numpy.random.default_rng((seed, split, index))`` per image and nothing
else, so the same parameters give byte-identical JSON and JPEG files.
"""

# size: one generator: shapes, scene layout and the rendering rules that keep the annotations
# honest are read together
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from harness.errors import ConfigError, DataError
from harness.files import check_folder

VERSION = 1
JPEG_QUALITY = 90
_SPLITS = ("train", "val", "test")
# A stale temp folder older than this is a crashed generation, not a racing one.
_STALE_TMP_S = 3600.0

BUILTIN_CATEGORIES: list[dict[str, Any]] = [
    {"id": 0, "name": "general_trash", "supercategory": "trash"},
    {"id": 1, "name": "paper", "supercategory": "paper"},
    {"id": 2, "name": "metal", "supercategory": "metal"},
    {"id": 3, "name": "glass", "supercategory": "glass"},
    {"id": 4, "name": "plastic_bottle", "supercategory": "plastic"},
    {"id": 5, "name": "styrofoam", "supercategory": "plastic"},
    {"id": 6, "name": "plastic_bag", "supercategory": "plastic"},
    {"id": 7, "name": "battery", "supercategory": "hazardous"},
]
GENERAL, PAPER, METAL, GLASS, BOTTLE, STYROFOAM, BAG, BATTERY = range(8)

# Free (not inside a bag) objects: bags are rarer since most come with contents.
_FREE_CATS = np.array([GENERAL, PAPER, METAL, GLASS, BOTTLE, STYROFOAM, BAG, BATTERY])
_FREE_P = np.array([1.2, 1.3, 1.0, 1.0, 1.0, 1.0, 0.4, 1.0])
_FREE_P = _FREE_P / _FREE_P.sum()
_INNER_CATS = np.array([BOTTLE, BATTERY, METAL, PAPER, GLASS, GENERAL])
_INNER_P = np.array([0.3, 0.25, 0.15, 0.1, 0.1, 0.1])
_P_BAG_SCENE = 0.45  # share of images with a filled bag (the overlap-policy case)
_P_CROWD = 0.3  # chance that a free general_trash/styrofoam object is a crowd pile (RLE)

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]


# ----------------------------------------------------------------------------------------------
# public API


def generate(
    out: Path,
    *,
    seed: int = 0,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 30,
    size: int = 128,
) -> Path:
    """Write the dataset into `out` (created; must be empty or missing, else raise harness.errors.DataError naming the folder); returns out."""  # noqa: E501
    out = Path(out)
    _check_params(seed, n_train, n_val, n_test, size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"{out}: cannot generate the synthetic dataset here, the folder is not empty"
        )
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split_idx, split in enumerate(_SPLITS):
        (out / split).mkdir()
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for i in range(counts[split]):
            rng = np.random.default_rng((seed, split_idx, i))
            pixels, objs = _render_image(rng, size)
            file_name = f"{split}/{i:04d}.jpg"
            Image.fromarray(pixels).save(out / file_name, "JPEG", quality=JPEG_QUALITY)
            images.append({"id": i, "file_name": file_name, "width": size, "height": size})
            if split != "test":  # the competition's test.json has no annotations
                for obj in objs:
                    annotations.append(_annotation(obj, len(annotations), i))
        coco = {
            "info": {
                "description": f"harness synthetic trash, synth-v{VERSION}",
                "version": str(VERSION),
            },
            "images": images,
            "annotations": annotations,
            "categories": BUILTIN_CATEGORIES,
        }
        (out / f"{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
    (out / "README.md").write_text(_readme(seed, n_train, n_val, n_test, size))
    return out


def builtin_path(
    cache_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 30,
    size: int = 128,
) -> Path:
    """Where :func:`ensure_builtin` keeps the built-in dataset; nothing is generated here."""
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"synth-v{VERSION}-{digest}"


def ensure_builtin(
    cache_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 30,
    size: int = 128,
) -> Path:
    """Generate once into cache_dir/f"synth-v1-{hash of params}" and reuse it afterwards.

    The data is written to a temp sibling and renamed into place, so an interrupted generation is
    never reused and two racing processes are safe (the loser deletes its copy, uses the winner's).
    """
    _check_params(seed, n_train, n_val, n_test, size)
    cache_dir = Path(cache_dir)
    check_folder(cache_dir, "data.cache_dir (--cache-dir)")
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size}
    target = builtin_path(cache_dir, **params)
    name = target.name
    if target.exists():
        return _checked_complete(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache_dir, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
    try:
        generate(tmp, **params)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            os.rename(tmp, target)
        except OSError:
            # Lost a race: the other process's complete copy is already in place.
            if not target.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _checked_complete(target)


def _check_params(seed: int, n_train: int, n_val: int, n_test: int, size: int) -> None:
    if seed < 0:
        raise ConfigError(f"synthetic dataset seed: must be >= 0, got {seed}")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise ConfigError(f"synthetic dataset {key}: must be >= 0, got {n}")
    if size < 32:
        raise ConfigError(f"synthetic dataset size: must be >= 32 pixels, got {size}")


def _checked_complete(target: Path) -> Path:
    # Only complete folders are ever renamed into place, so a gap means someone edited it.
    missing = [f"{s}.json" for s in _SPLITS if not (target / f"{s}.json").is_file()]
    if missing:
        raise DataError(f"{target}: cached synthetic dataset lacks {', '.join(missing)}; delete it")
    return target


def _remove_stale_tmp(cache_dir: Path, name: str) -> None:
    now = time.time()
    for tmp in cache_dir.glob(f".{name}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _readme(seed: int, n_train: int, n_val: int, n_test: int, size: int) -> str:
    cats = ", ".join(f"{c['id']} {c['name']}" for c in BUILTIN_CATEGORIES)
    return (
        f"# harness built-in synthetic trash dataset (synth-v{VERSION})\n\n"
        "Generated by `harness.data.synth.generate`; deterministic: the same parameters give\n"
        "byte-identical files. It imitates the recycling-trash competition layout.\n\n"
        f"Parameters: seed={seed}, n_train={n_train}, n_val={n_val}, n_test={n_test}, "
        f"size={size}x{size}\n\n"
        "- `train.json`, `val.json`, `test.json`: COCO; `file_name` relative to this folder;\n"
        "  test.json has no annotations. Images: JPEG quality 90 in `train/`, `val/`, `test/`.\n"
        f"- Categories (COCO id name): {cats}.\n"
        "  Class index = category id + 1, 0 = background.\n"
        "- Image and annotation ids start at 0. Annotations are whole shapes and overlap; the\n"
        "  smaller object is drawn on top (the area-desc overlap policy matches the pixels).\n"
        "- Polygon annotations (some with several polygons) and crowd piles as RLE (iscrowd=1).\n"
    )


# ----------------------------------------------------------------------------------------------
# objects: shapes live in a local frame (unrotated, centred at 0) and are placed by (cx, cy, th, k)


@dataclass
class _Obj:
    cat: int
    polys: list[Array]  # local-frame polygons, each (N, 2)
    dims: dict[str, Any]  # shape sizes (local units) and sampled colours for the painter
    crowd: bool = False
    stick: Array | None = None  # unannotated occluder across a split paper (local frame)
    cx: float = 0.0
    cy: float = 0.0
    th: float = 0.0
    k: float = 1.0
    segm: list[list[float]] = field(default_factory=list)  # the polygons as written to JSON
    mask: Mask | None = None

    def to_image(self, pts: Array) -> Array:
        c, s = math.cos(self.th), math.sin(self.th)
        x = self.cx + self.k * (pts[:, 0] * c - pts[:, 1] * s)
        y = self.cy + self.k * (pts[:, 0] * s + pts[:, 1] * c)
        return np.stack([x, y], axis=1)

    def to_local(self, x: Array, y: Array) -> tuple[Array, Array]:
        c, s = math.cos(self.th), math.sin(self.th)
        dx, dy = x - self.cx, y - self.cy
        return (dx * c + dy * s) / self.k, (-dx * s + dy * c) / self.k

    def extent(self) -> float:
        """Largest distance of a vertex from the centre, in local units."""
        return max(float(np.hypot(p[:, 0], p[:, 1]).max()) for p in self.polys)


def _ring(rx: Array | float, ry: Array | float, n: int, phase: float = 0.0) -> Array:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False) + phase
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _rect(u0: float, u1: float, v0: float, v1: float) -> Array:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], dtype=np.float64)


def _jitter_colour(
    rng: np.random.Generator, base: tuple[float, float, float], amount: float
) -> Array:
    return np.clip(np.asarray(base) + rng.uniform(-amount, amount, 3), 0, 255)


def _jagged(rng: np.random.Generator, r: float, n: int, lo: float = 0.55) -> Array:
    t = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = r * rng.uniform(lo, 1.1, n)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)


# long: one branch per category: the table of shapes, colours and textures, written as code
def _make(cat: int, rng: np.random.Generator, size: int, crowd: bool = False) -> _Obj:
    """Sample a shape and its colours in the local frame; sizes are fractions of the image."""
    s = float(size)
    if cat == GENERAL:
        colour = _jitter_colour(rng, (120, 95, 60), 30)
        if crowd:  # a pile of debris: many small jagged pieces, annotated as one crowd RLE
            pieces = []
            for _ in range(int(rng.integers(5, 11))):
                off = rng.normal(0, 0.07 * s, 2)
                pieces.append(_jagged(rng, rng.uniform(0.02, 0.045) * s, 7) + off)
            return _Obj(cat, pieces, {"colour": colour}, crowd=True)
        r = rng.uniform(0.1, 0.18) * s
        return _Obj(cat, [_jagged(rng, r, int(rng.integers(11, 17)), 0.6)], {"colour": colour})
    if cat == PAPER:
        a = rng.uniform(0.14, 0.24) * s
        b = a * rng.uniform(0.55, 0.85)
        base = (235, 228, 210) if rng.random() < 0.7 else (200, 170, 130)  # white or cardboard
        dims = {
            "colour": _jitter_colour(rng, base, 22),
            "line": rng.uniform(3.5, 5.5) * s / 128,
            "depth": rng.uniform(0.22, 0.4),
            "a": a,
        }
        if rng.random() < 0.3:  # torn in two, with a stick lying in the gap: two polygons
            u0 = rng.uniform(-0.3, 0.3) * a
            g = max(1.5, rng.uniform(0.015, 0.03) * s)
            pieces = [_rect(-a, u0 - g, -b, b), _rect(u0 + g, a, -b, b)]
            stick = _rect(
                u0 - g, u0 + g, -b - rng.uniform(0.05, 0.3) * s, b + rng.uniform(0.05, 0.3) * s
            )
            dims["stick_colour"] = _jitter_colour(rng, (140, 100, 60), 30)
            return _Obj(cat, pieces, dims, stick=stick)
        return _Obj(cat, [_rect(-a, a, -b, b)], dims)
    if cat == METAL:
        a = rng.uniform(0.11, 0.18) * s
        b = a * rng.uniform(0.55, 0.8)
        dims = {
            "colour": np.full(3, rng.uniform(110, 175)) + rng.uniform(-12, 12, 3),
            "b": b,
            "v0": rng.uniform(-0.4, 0.4) * b,
        }
        return _Obj(cat, [_ring(a, b, 32)], dims)
    if cat == GLASS:
        r = rng.uniform(0.09, 0.16) * s
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        poly = np.stack([np.cos(t), np.sin(t)], axis=1) * (r * rng.uniform(0.8, 1.1, n))[:, None]
        base = (60, 140, 80) if rng.random() < 0.6 else (70, 150, 140)  # green or teal
        dims = {
            "colour": _jitter_colour(rng, base, 25),
            "alpha": rng.uniform(0.75, 0.9),
            "r": r,
            "phi": rng.uniform(0, 2 * math.pi),
            "off": rng.uniform(-0.5, 0.5) * r,
        }
        if n >= 6 and rng.random() < 0.35:  # broken into shards: fan sectors pushed apart
            cuts = np.sort(rng.choice(np.arange(1, n), size=2, replace=False))
            shards = []
            for idx in np.split(np.arange(n + 1) % n, cuts):
                if len(idx) < 2:
                    continue
                sector = np.vstack([[0.0, 0.0], poly[idx]])
                d = sector.mean(axis=0)
                d = d / (np.hypot(*d) + 1e-9) * rng.uniform(0.15, 0.3) * r
                shards.append(sector + d)
            if len(shards) >= 2:
                return _Obj(cat, shards, dims)
        return _Obj(cat, [poly], dims)
    if cat == BOTTLE:
        length = rng.uniform(0.15, 0.24) * s
        radius = length * rng.uniform(0.33, 0.42)
        neck = length * rng.uniform(0.25, 0.4)
        caps = [(200, 40, 40), (40, 70, 200), (240, 240, 240), (40, 160, 60), (240, 150, 30)]
        dims = {
            "colour": _jitter_colour(rng, (170, 205, 240), 20),
            "alpha": rng.uniform(0.65, 0.8),
            "R": radius,
            "cap_u": length + 0.35 * neck - neck / 2,
            "cap": _jitter_colour(rng, caps[int(rng.integers(len(caps)))], 20),
        }
        # centre the outline along its length
        return _Obj(cat, [_bottle(length, radius, neck, 0.45 * radius) - [neck / 2, 0.0]], dims)
    if cat == STYROFOAM:
        colour = np.full(3, rng.uniform(215, 245)) + rng.uniform(-8, 8, 3)
        if crowd:  # loose foam fragments: one crowd RLE
            pieces = []
            for _ in range(int(rng.integers(6, 13))):
                off = rng.normal(0, 0.07 * s, 2)
                rr = rng.uniform(0.02, 0.04) * s
                pieces.append(_superellipse(rr, rr * rng.uniform(0.6, 1.0), 3.0, 12) + off)
            return _Obj(cat, pieces, {"colour": colour}, crowd=True)
        r = rng.uniform(0.1, 0.18) * s
        return _Obj(
            cat,
            [_superellipse(r, r * rng.uniform(0.6, 1.0), rng.uniform(3, 5), 32)],
            {"colour": colour},
        )
    if cat == BAG:
        radius = rng.uniform(0.2, 0.3) * s
        amps = rng.uniform(0, 0.12, 3)
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        wobble = sum(
            a * np.cos(kk * t + rng.uniform(0, 2 * math.pi))
            for kk, a in zip((2, 3, 4), amps, strict=True)
        )
        rad = radius * (1 + wobble)
        palette = [(230, 230, 225), (45, 45, 50), (225, 205, 90), (225, 165, 185), (170, 200, 230)]
        pick = int(rng.integers(len(palette)))
        dims = {
            "colour": _jitter_colour(rng, palette[pick], 18),
            "alpha": rng.uniform(0.75, 0.85) if pick == 1 else rng.uniform(0.55, 0.75),
            "wave": rng.uniform(0.05, 0.09) * s,
            "rmin": radius * (1 - amps.sum()),
            "rmax": radius * (1 + amps.sum()),
        }
        return _Obj(cat, [np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)], dims)
    if cat == BATTERY:
        hl = rng.uniform(0.06, 0.09) * s
        hw = max(1.8, hl / rng.uniform(2.0, 2.6))
        bodies = [(35, 35, 40), (30, 40, 90), (30, 75, 40), (90, 30, 30)]
        dims = {
            "colour": _jitter_colour(rng, bodies[int(rng.integers(len(bodies)))], 15),
            "cap": _jitter_colour(
                rng, (215, 185, 70) if rng.random() < 0.6 else (205, 205, 210), 20
            ),
            "cap_u": 0.62 * hl,
        }
        return _Obj(cat, [_rect(-hl, hl, -hw, hw)], dims)
    raise AssertionError(f"unknown category {cat}")


def _superellipse(a: float, b: float, p: float, n: int) -> Array:
    # |x/a|^p + |y/b|^p = 1: a blocky foam-like outline, unlike the metal ellipse
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack(
        [a * np.sign(c) * np.abs(c) ** (2 / p), b * np.sign(s) * np.abs(s) ** (2 / p)], axis=1
    )


def _bottle(length: float, radius: float, neck: float, nr: float, n: int = 8) -> Array:
    """Bottle silhouette along +u: rounded bottom at -length, shoulder, neck up to length+neck."""
    rb = 0.6 * radius
    phi = np.linspace(math.pi, math.pi / 2, n)
    upper = [(-length + rb + rb * math.cos(p), radius - rb + rb * math.sin(p)) for p in phi]
    for u in np.linspace(length - radius, length, n)[1:]:
        upper.append(
            (u, nr + (radius - nr) * (1 + math.cos(math.pi * (u - length + radius) / radius)) / 2)
        )
    upper.append((length + neck, nr))
    up = np.array(upper)
    low = up[::-1] * [1.0, -1.0]
    return np.vstack([up, low])


# ----------------------------------------------------------------------------------------------
# layout


def _rasterise(polys: list[list[float]], size: int) -> Mask:
    # Exactly what COCO.annToMask does for polygons, so painted pixels == decoded annotation.
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, size, size))
    return mask_utils.decode(rle).astype(bool)


def _place(obj: _Obj, cx: float, cy: float, th: float, k: float, size: int) -> bool:
    """Fix the pose, write the JSON polygons and the mask; False when too little is visible."""
    obj.cx, obj.cy, obj.th, obj.k = cx, cy, th, k
    segm = []
    for poly in obj.polys:
        pts = np.clip(obj.to_image(poly), 0, size)  # clamp to the image, as annotation tools do
        x, y = pts[:, 0], pts[:, 1]
        if 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) < 1.0:
            continue  # fell off the image
        segm.append([round(float(c), 1) for c in pts.ravel()])
    if not segm:
        return False
    obj.segm = segm
    obj.mask = _rasterise(segm, size)
    return int(obj.mask.sum()) >= max(12, int(0.0015 * size * size))


def _layout(rng: np.random.Generator, size: int) -> list[_Obj]:
    n_total = int(rng.choice(np.arange(2, 7), p=[0.1, 0.2, 0.25, 0.25, 0.2]))
    objs: list[_Obj] = []
    if rng.random() < _P_BAG_SCENE:
        objs.extend(_bag_scene(rng, size, n_total))
    crowd_used = False
    for _ in range(60):
        if len(objs) >= n_total:
            break
        cat = int(rng.choice(_FREE_CATS, p=_FREE_P))
        crowd = cat in (GENERAL, STYROFOAM) and not crowd_used and rng.random() < _P_CROWD
        obj = _make(cat, rng, size, crowd)
        cx, cy = rng.uniform(0.08, 0.92, 2) * size
        if not _place(obj, cx, cy, rng.uniform(0, 2 * math.pi), 1.0, size):
            continue
        assert obj.mask is not None
        area = obj.mask.sum()
        # Partial overlaps are welcome, burying one object under another is not.
        if any(
            (obj.mask & o.mask).sum() > 0.5 * min(area, o.mask.sum())
            for o in objs
            if o.mask is not None
        ):
            continue
        crowd_used |= crowd
        objs.append(obj)
    return objs


def _bag_scene(rng: np.random.Generator, size: int, n_total: int) -> list[_Obj]:
    """A plastic bag with 1-2 smaller objects wholly inside it (they show through, on top)."""
    bag = _make(BAG, rng, size)
    margin = min(bag.dims["rmax"] + 1, size / 2)
    cx, cy = rng.uniform(margin, size - margin, 2)
    if not _place(bag, cx, cy, rng.uniform(0, 2 * math.pi), 1.0, size):
        return []
    assert bag.mask is not None
    out = [bag]
    n_inner = 1 if n_total <= 3 or rng.random() < 0.7 else 2
    rmin = bag.dims["rmin"]
    for _ in range(20):
        if len(out) > n_inner:
            break
        inner = _make(int(rng.choice(_INNER_CATS, p=_INNER_P)), rng, size)
        rho = rng.uniform(0, 0.45) * rmin
        ang = rng.uniform(0, 2 * math.pi)
        # Shrink the object until its farthest vertex stays inside the bag's smallest radius.
        k = min(1.0, (0.9 * rmin - rho) / inner.extent())
        if k < 0.45 or not _place(
            inner,
            cx + rho * math.cos(ang),
            cy + rho * math.sin(ang),
            rng.uniform(0, 2 * math.pi),
            k,
            size,
        ):
            continue
        assert inner.mask is not None
        area = inner.mask.sum()
        if (inner.mask & ~bag.mask).sum() > 0.02 * area:
            continue
        if any((inner.mask & o.mask).sum() > 0.2 * area for o in out[1:] if o.mask is not None):
            continue
        out.append(inner)
    return out


# ----------------------------------------------------------------------------------------------
# painting


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> Array:
    """Unit-ish noise with features about `cell` pixels wide (bilinear upsampled)."""
    gh, gw = max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)
    small = Image.fromarray(rng.normal(0, 1, (gh, gw)).astype(np.float32))  # mode "F"
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)


def _background(rng: np.random.Generator, size: int) -> Array:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    ang = rng.uniform(0, 2 * math.pi)
    t = np.clip((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5, 0, 1)[..., None]
    c1, c2 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    img = c1 * (1 - t) + c2 * t
    img += (_smooth_noise(rng, size, size, size / 6) * 15)[..., None] * rng.uniform(0.7, 1.3, 3)
    img += _smooth_noise(rng, size, size, 3)[..., None] * 8
    if rng.random() < 0.35:  # floor tiles: straight lines that are not paper rulings
        period = rng.uniform(0.15, 0.3) * size
        off = rng.uniform(0, period, 2)
        lines = (np.mod(xx * size + off[0], period) < 1) | (np.mod(yy * size + off[1], period) < 1)
        img[lines] *= 0.8
    return img


def _distractors(rng: np.random.Generator, img: Array, size: int) -> None:
    """Unannotated clutter: soft or sharp blobs, some in object-like colours, and scratches."""
    confusers = [
        (70, 140, 90),
        (150, 150, 155),
        (180, 205, 235),
        (235, 230, 220),
        (40, 40, 45),
        (125, 95, 60),
    ]
    for _ in range(int(rng.integers(2, 7))):
        layer = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(layer)
        if rng.random() < 0.35:
            pts = rng.uniform(0, size, (int(rng.integers(2, 4)), 2))
            width = max(1, round(rng.uniform(1, 2.5) * size / 128))
            draw.line([tuple(p) for p in pts], fill=255, width=width)
            colour = np.full(3, 30.0) if rng.random() < 0.5 else np.full(3, 220.0)
            colour = colour + rng.uniform(-25, 25, 3)
            blur = 0.6
        else:
            c = rng.uniform(0, size, 2)
            poly = _ring(
                rng.uniform(0.04, 0.2) * size,
                rng.uniform(0.04, 0.2) * size,
                16,
                rng.uniform(0, 6.3),
            )
            if rng.random() < 0.5:
                poly = poly * rng.uniform(0.6, 1.1, (16, 1))
            draw.polygon([tuple(p) for p in poly + c], fill=255)
            base = (
                confusers[int(rng.integers(len(confusers)))]
                if rng.random() < 0.3
                else rng.uniform(40, 220, 3)
            )
            colour = _jitter_colour(rng, tuple(base), 20)
            blur = rng.uniform(1.5, 4) if rng.random() < 0.7 else 0.0
        if blur:
            layer = layer.filter(ImageFilter.GaussianBlur(blur * size / 128))
        alpha = np.asarray(layer, dtype=np.float64)[..., None] / 255 * rng.uniform(0.35, 0.85)
        img *= 1 - alpha
        img += alpha * colour


def _texture(
    obj: _Obj, rng: np.random.Generator, u: Array, v: Array, inside: Mask
) -> tuple[Array, Array | float]:
    """The object's colour over local coordinates (u, v) of its bbox; returns (rgb, alpha).

    `inside` is the object's mask over the same bbox.
    """
    d = obj.dims
    col: Array = d["colour"]
    h, w = u.shape
    noise = rng.normal(0, 1, (h, w))[..., None]
    flat = np.broadcast_to(col, (h, w, 3)).astype(np.float64)
    if obj.cat == GENERAL:  # brown crumple: blotches and dark speckles
        tex = flat + _smooth_noise(rng, h, w, 3)[..., None] * 20 + noise * 6
        tex[rng.random((h, w)) < 0.18] *= 0.45
        return tex, 1.0
    if obj.cat == PAPER:  # ruled lines parallel to the long side
        ph = np.mod(v, d["line"]) - d["line"] / 2
        line = np.exp(-((ph / 0.6) ** 2))[..., None]
        return flat * (1 - d["depth"] * line) + noise * 4, 1.0
    if obj.cat == METAL:  # cylinder shading with a specular stripe along the can
        b = d["b"]
        shade = np.clip(1 - 0.4 * (v / b) ** 2, 0.4, 1)[..., None]
        spec = 90 * np.exp(-(((v - d["v0"]) / (0.13 * b)) ** 2))[..., None]
        return flat * shade + spec + noise * 5, 1.0
    if obj.cat == GLASS:  # translucent green with a glossy band and a bright cut edge
        r = d["r"]
        along = u * math.cos(d["phi"]) + v * math.sin(d["phi"]) - d["off"]
        tex = flat + 70 * np.exp(-((along / (0.12 * r)) ** 2))[..., None] + noise * 4
        rim = inside & ~_erode(inside)
        tex[rim] = np.minimum(col + 90, 255)
        return tex, np.where(rim, 1.0, d["alpha"])
    if obj.cat == BOTTLE:  # translucent bluish body, highlight, darker rims, opaque cap
        radius = d["R"]
        tex = flat + 80 * np.exp(-(((v - 0.45 * radius) / (0.12 * radius)) ** 2))[..., None]
        tex -= 35 * np.clip(np.abs(v) / radius, 0, 1)[..., None] ** 3
        cap = u > d["cap_u"]
        tex[cap] = d["cap"]
        alpha = np.where(cap, 1.0, d["alpha"])
        return tex + noise * 4, alpha
    if obj.cat == STYROFOAM:  # white with a coarse bead texture
        return flat + _smooth_noise(rng, h, w, 2)[..., None] * 22 + noise * 14, 1.0
    if obj.cat == BAG:  # semi-transparent with wavy wrinkles
        wav = np.sin(2 * math.pi * u / d["wave"] + 2.5 * _smooth_noise(rng, h, w, 8))
        return flat + 28 * wav[..., None] + noise * 4, d["alpha"]
    if obj.cat == BATTERY:  # dark body, bright metal cap at one end
        tex = flat + noise * 4
        tex[u > d["cap_u"]] = d["cap"]
        return tex, 1.0
    raise AssertionError(f"unknown category {obj.cat}")


def _erode(m: Mask) -> Mask:
    """One-pixel 4-neighbour erosion; pixels outside the array count as outside."""
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _paint(img: Array, obj: _Obj, rng: np.random.Generator) -> None:
    mask = obj.mask
    assert mask is not None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    yy, xx = np.mgrid[ys, xs].astype(np.float64) + 0.5
    u, v = obj.to_local(xx, yy)
    m = mask[ys, xs]
    tex, alpha = _texture(obj, rng, u, v, m)
    a = alpha[m][:, None] if isinstance(alpha, np.ndarray) else alpha
    sub = img[ys, xs]
    sub[m] = sub[m] * (1 - a) + tex[m] * a


def _render_image(rng: np.random.Generator, size: int) -> tuple[NDArray[np.uint8], list[_Obj]]:
    img = _background(rng, size)
    _distractors(rng, img, size)
    objs = _layout(rng, size)
    claimed = np.zeros((size, size), dtype=bool)
    # Painter's order by decreasing area: where annotations overlap, the smaller one shows.
    for obj in sorted(objs, key=lambda o: -int(o.mask.sum()) if o.mask is not None else 0):
        _paint(img, obj, rng)
        assert obj.mask is not None
        claimed |= obj.mask
    for obj in objs:
        if obj.stick is not None:  # the stick may only cover pixels no annotation claims
            stick = np.clip(obj.to_image(obj.stick), 0, size)
            sm = _rasterise([[float(c) for c in stick.ravel()]], size) & ~claimed
            img[sm] = obj.dims["stick_colour"] + rng.normal(0, 6, (int(sm.sum()), 3))
    # Uneven light over everything, so a fixed colour threshold cannot separate the classes.
    yy, xx = np.mgrid[0:size, 0:size] / size
    gain = 1 + rng.uniform(-0.15, 0.15) * (xx - 0.5) * 2 + rng.uniform(-0.15, 0.15) * (yy - 0.5) * 2
    img *= gain[..., None]
    img += rng.normal(0, 3, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objs


# ----------------------------------------------------------------------------------------------
# annotations


def _annotation(obj: _Obj, ann_id: int, image_id: int) -> dict[str, Any]:
    assert obj.mask is not None
    fortran = np.asfortranarray(obj.mask.astype(np.uint8))
    rle = mask_utils.encode(fortran)
    segmentation: Any
    if obj.crowd:
        # Crowd piles are RLE like COCO's; alternate compressed and uncompressed by id parity so
        # both encodings occur deterministically.
        if ann_id % 2:
            segmentation = {
                "counts": rle["counts"].decode("ascii"),
                "size": [int(x) for x in rle["size"]],
            }
        else:
            segmentation = {"counts": _uncompressed_counts(obj.mask), "size": list(obj.mask.shape)}
    else:
        segmentation = obj.segm
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.cat,
        "segmentation": segmentation,
        "area": float(obj.mask.sum()),
        "bbox": [round(float(x), 2) for x in mask_utils.toBbox(rle)],
        "iscrowd": int(obj.crowd),
    }


def _uncompressed_counts(mask: Mask) -> list[int]:
    """COCO uncompressed RLE: column-major run lengths, starting with a (maybe empty) run of 0s."""
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] if flat[0] else []) + [int(r) for r in runs]
