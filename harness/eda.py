"""Know the data before sweeping it: statistics and overlap analysis of a COCO segmentation set.

``harness eda`` answers the usual questions (images per split, image sizes, annotations per
image, instances and pixels per class, COCO object sizes, empty images, crowd and multi-polygon
annotations) and the story's open one: can a pixel carry several labels, and what does each
overlap policy (``max-class``, ``area-desc``, ``ignore``) make of it.

Speed comes from one pass per image: every annotation is decoded once, a per-pixel count of the
annotations covering it is summed, and only the pixels covered twice or more get a bit code of
*which* annotations cover them. ``np.unique`` over those codes yields a handful of "combos" (a set
of annotations and its pixel count), and every overlap quantity follows from the combos, without
painting a mask per policy:

- a pixel's label under each policy is a function of the set of annotations covering it, so the
  policy comparison is computed per combo and weighted by its pixels (tests hold it against
  :func:`harness.data.masks.build_semantic_mask`);
- pairwise intersections of annotations (containment) are sums over the combos holding both.

The masks shown for the sample images are the training masks themselves: read from the mask cache
when an entry exists, built with ``build_semantic_mask`` otherwise, and checked against the counts.
"""

# size: the analysis is one pass whose counters (SplitStats) and their JSON form belong together
from __future__ import annotations

import heapq
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.config import OVERLAP_POLICIES
from harness.data import masks as _masks
from harness.data.cache import MaskCache, cache_key
from harness.data.coco import CocoDataset, CocoSplit
from harness.errors import HarnessError

STATS_VERSION = 1
IGNORE_INDEX = 255  # the label the ignore policy writes (the training default)
SMALL_AREA = 32**2  # COCO: small < 32^2 <= medium < 96^2 <= large (in pixels)
LARGE_AREA = 96**2
CONTAINMENT = 0.9  # an annotation at least this share inside another is "contained"
POLICY_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.combinations(OVERLAP_POLICIES, 2))
# log2 bins for the object-area histogram: [0,1), [1,2), [2,4), ... up to 2^24 px (4096x4096)
AREA_EDGES: tuple[int, ...] = (0, *(2**k for k in range(25)))


class EdaError(HarnessError):
    """A bad ``harness eda`` option or an output folder that cannot be written."""


# --- one image -------------------------------------------------------------------------------


@dataclass
class ImageAnalysis:
    """What one image contributes to the statistics: counts only, no pixel maps.

    Label vectors have ``num_classes + 1`` slots: the class indices, then one for ignored pixels.
    """

    pixels: int
    classes: np.ndarray  # [n] class index per annotation (0 for a background category)
    areas: np.ndarray  # [n] decoded pixels per annotation
    crowd: np.ndarray  # [n] bool, iscrowd
    polygons: np.ndarray  # [n] polygons per annotation, 0 for RLE
    foreground: int  # pixels covered by at least one painted annotation
    multi_annotation: int  # ... by two or more
    multi_class: int  # ... by two or more different classes
    class_overlap: np.ndarray  # [C, C] pixels covered by classes a and b; [a, a]: by 2+ of a
    containment: np.ndarray  # [C, C] annotation pairs, inner class x outer class
    near_duplicates: int  # annotation pairs each >= CONTAINMENT inside the other
    labels: dict[str, np.ndarray]  # policy -> [C+1] pixels per label (background included)
    conflict: dict[str, np.ndarray]  # policy -> [C+1] labels of the multi-class pixels only
    changes: dict[tuple[str, str], np.ndarray]  # policy pair -> [C+1, C+1] label_a x label_b

    def differing(self, pair: tuple[str, str]) -> int:
        """Pixels the two policies label differently."""
        return int(self.changes[pair].sum())


def _polygon_count(segmentation: Any) -> int:
    return 0 if isinstance(segmentation, dict) else len(_masks._polygons(segmentation))


def _paint_area(ann: Mapping[str, Any], pixels: int) -> float:
    # masks._area's rule, with the pixels counted once already
    area: Any = ann.get("area")
    return float(area) if _masks._is_number(area) else float(pixels)


def _members(row: np.ndarray) -> list[int]:
    """Bit positions set in one bit code (a row of uint64 words), lowest first."""
    out = []
    for w, word in enumerate(row.tolist()):
        while word:
            low = word & -word
            out.append(w * 64 + low.bit_length() - 1)
            word ^= low
    return out


# long: one image in one pass: decoding, coverage counts and overlap codes share their arrays
def analyze_image(
    anns: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    cat_to_class: Mapping[int, int],
    num_classes: int,
) -> ImageAnalysis:
    """Statistics and overlap counts of one image's annotations (pure; decodes each once)."""
    n = len(anns)
    ignore = num_classes  # the label slot of ignored pixels
    classes = np.array([cat_to_class[a["category_id"]] for a in anns], dtype=np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    polygons = np.array([_polygon_count(a["segmentation"]) for a in anns], dtype=np.int64)
    areas = np.zeros(n, dtype=np.int64)
    # Background categories are never painted, so they cannot overlap anything.
    painted: list[int] = []
    count: np.ndarray = np.zeros(height * width, np.uint8 if n < 255 else np.uint16)
    # Masks are kept bit-packed (8x smaller) until the overlap pixels are known: a large image
    # with many annotations stays cheap. One flat pixel order for all of them: pycocotools
    # decodes column-major, so an "F" ravel is a view.
    packed: dict[int, np.ndarray] = {}
    for i, a in enumerate(anns):
        flat = np.ravel(_masks.decode_instance(a, height, width), order="F")
        areas[i] = np.count_nonzero(flat)
        if classes[i] != 0 and areas[i] > 0:
            painted.append(i)
            np.add(count, flat, out=count)
            packed[i] = np.packbits(flat)
    # area-desc paints by masks._area (the JSON area, else the pixel count), then by id
    order_key = [(-_paint_area(a, int(px)), a["id"]) for a, px in zip(anns, areas, strict=True)]
    foreground = int(np.count_nonzero(count))
    multi = np.flatnonzero(count >= 2)

    class_overlap = np.zeros((num_classes, num_classes), dtype=np.int64)
    inter = np.zeros((n, n), dtype=np.int64)  # pixels shared by two annotations
    shared = np.zeros(n, dtype=np.int64)  # pixels an annotation shares with any other
    single_extra = np.zeros(num_classes + 1, dtype=np.int64)  # 2+ annotations, one class
    conflict = {p: np.zeros(num_classes + 1, dtype=np.int64) for p in OVERLAP_POLICIES}
    changes = {pair: np.zeros((num_classes + 1,) * 2, dtype=np.int64) for pair in POLICY_PAIRS}
    multi_class = 0
    if multi.size:
        # Bit j of a pixel's code says whether painted[j] covers it; 64 annotations per word.
        words = (len(painted) + 63) // 64
        codes = np.zeros((multi.size, words), dtype=np.uint64)
        byte, shift = multi >> 3, (7 - (multi & 7)).astype(np.uint8)
        for j, i in enumerate(painted):
            hit = ((packed[i][byte] >> shift) & 1).astype(bool)
            codes[hit, j // 64] |= np.uint64(1 << (j % 64))
        if words == 1:
            uniq, counts = np.unique(codes[:, 0], return_counts=True)
            rows = uniq[:, None]
        else:
            rows, counts = np.unique(codes, axis=0, return_counts=True)
        for row, c in zip(rows, counts.tolist(), strict=True):
            members = [painted[j] for j in _members(row)]
            idx = np.array(members)
            inter[np.ix_(idx, idx)] += c
            shared[idx] += c
            cls = classes[idx]
            distinct = sorted(set(cls.tolist()))
            for a in distinct:
                if np.count_nonzero(cls == a) >= 2:
                    class_overlap[a, a] += c
            if len(distinct) == 1:
                single_extra[distinct[0]] += c
                continue
            multi_class += c
            for a, b in itertools.permutations(distinct, 2):
                class_overlap[a, b] += c
            label = {
                "max-class": distinct[-1],
                # painted in ascending key order, so the largest key is painted last and shows
                "area-desc": int(classes[max(members, key=lambda k: order_key[k])]),
                "ignore": ignore,
            }
            for p in OVERLAP_POLICIES:
                conflict[p][label[p]] += c
            for pa, pb in POLICY_PAIRS:
                if label[pa] != label[pb]:
                    changes[(pa, pb)][label[pa], label[pb]] += c

    # Pixels covered by one class only carry that class under every policy.
    base = np.zeros(num_classes + 1, dtype=np.int64)
    base[0] = height * width - foreground
    np.add.at(base, classes[painted], areas[painted] - shared[painted])
    base += single_extra
    labels = {p: base + conflict[p] for p in OVERLAP_POLICIES}

    containment = np.zeros((num_classes, num_classes), dtype=np.int64)
    near_duplicates = 0
    if len(painted) >= 2:
        p_idx = np.array(painted)
        sub = inter[np.ix_(p_idx, p_idx)]
        np.fill_diagonal(sub, 0)
        # integer form of inter >= 0.9 * area, so borderline cases do not depend on rounding
        inside = (sub > 0) & (10 * sub >= round(10 * CONTAINMENT) * areas[p_idx][:, None])
        rows_i, cols_j = np.nonzero(inside)
        np.add.at(containment, (classes[p_idx[rows_i]], classes[p_idx[cols_j]]), 1)
        near_duplicates = int(np.count_nonzero(inside & inside.T)) // 2

    return ImageAnalysis(
        pixels=height * width,
        classes=classes,
        areas=areas,
        crowd=crowd,
        polygons=polygons,
        foreground=foreground,
        multi_annotation=int(multi.size),
        multi_class=multi_class,
        class_overlap=class_overlap,
        containment=containment,
        near_duplicates=near_duplicates,
        labels=labels,
        conflict=conflict,
        changes=changes,
    )


# --- one split -------------------------------------------------------------------------------


@dataclass
class SplitStats:
    """Running totals over the images of one split (or of all annotated splits)."""

    name: str
    class_names: list[str]
    annotated: bool = True  # False for a test split without annotations
    images: int = 0
    empty_images: int = 0
    pixels: int = 0
    foreground: int = 0
    multi_annotation: int = 0
    multi_class: int = 0
    images_with_overlap: int = 0
    images_with_class_overlap: int = 0
    near_duplicates: int = 0
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (width, height) -> images
    per_image: list[int] = field(default_factory=list)  # annotations per image
    _classes: list[np.ndarray] = field(default_factory=list, repr=False)
    _areas: list[np.ndarray] = field(default_factory=list, repr=False)
    _crowd: list[np.ndarray] = field(default_factory=list, repr=False)
    _polygons: list[np.ndarray] = field(default_factory=list, repr=False)
    images_per_class: np.ndarray = field(init=False)
    class_overlap: np.ndarray = field(init=False)
    containment: np.ndarray = field(init=False)
    labels: dict[str, np.ndarray] = field(init=False)
    conflict: dict[str, np.ndarray] = field(init=False)
    changes: dict[tuple[str, str], np.ndarray] = field(init=False)
    images_changed: dict[tuple[str, str], int] = field(init=False)

    def __post_init__(self) -> None:
        c = len(self.class_names)
        self.images_per_class = np.zeros(c, dtype=np.int64)
        self.class_overlap = np.zeros((c, c), dtype=np.int64)
        self.containment = np.zeros((c, c), dtype=np.int64)
        self.labels = {p: np.zeros(c + 1, dtype=np.int64) for p in OVERLAP_POLICIES}
        self.conflict = {p: np.zeros(c + 1, dtype=np.int64) for p in OVERLAP_POLICIES}
        self.changes = {pair: np.zeros((c + 1, c + 1), dtype=np.int64) for pair in POLICY_PAIRS}
        self.images_changed = dict.fromkeys(POLICY_PAIRS, 0)

    def add(self, image: Mapping[str, Any], a: ImageAnalysis) -> None:
        self.images += 1
        size = (int(image["width"]), int(image["height"]))
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.per_image.append(len(a.classes))
        self.empty_images += len(a.classes) == 0
        for store, values in (
            (self._classes, a.classes),
            (self._areas, a.areas),
            (self._crowd, a.crowd),
            (self._polygons, a.polygons),
        ):
            store.append(values)
        self.images_per_class[np.unique(a.classes)] += 1
        self.pixels += a.pixels
        self.foreground += a.foreground
        self.multi_annotation += a.multi_annotation
        self.multi_class += a.multi_class
        self.images_with_overlap += a.multi_annotation > 0
        self.images_with_class_overlap += a.multi_class > 0
        self.near_duplicates += a.near_duplicates
        self.class_overlap += a.class_overlap
        self.containment += a.containment
        for p in OVERLAP_POLICIES:
            self.labels[p] += a.labels[p]
            self.conflict[p] += a.conflict[p]
        for pair in POLICY_PAIRS:
            self.changes[pair] += a.changes[pair]
            self.images_changed[pair] += a.differing(pair) > 0

    def annotation_arrays(self) -> dict[str, np.ndarray]:
        """Per-annotation arrays over the split: class, area, crowd, polygons."""

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return {
            "class": cat(self._classes, np.int64),
            "area": cat(self._areas, np.int64),
            "crowd": cat(self._crowd, bool),
            "polygons": cat(self._polygons, np.int64),
        }

    def label_name(self, label: int) -> str:
        return "ignore" if label == len(self.class_names) else self.class_names[label]

    # long: one key per statistic of stats.json, in the file's order
    def to_json(self) -> dict[str, Any]:
        names = self.class_names
        ann = self.annotation_arrays()
        cls, area = ann["class"], ann["area"]
        per_image = np.array(self.per_image, dtype=np.int64)
        out: dict[str, Any] = {
            "images": self.images,
            "annotated": self.annotated,
            "image_sizes": [
                {"width": w, "height": h, "images": k}
                for (w, h), k in sorted(self.sizes.items(), key=lambda t: (-t[1], t[0]))
            ],
        }
        if not self.annotated:
            return out
        small, large = area < SMALL_AREA, area >= LARGE_AREA
        medium = ~small & ~large
        hist, _ = np.histogram(area, bins=np.array((*AREA_EDGES, 2**62)))
        out |= {
            "empty_images": self.empty_images,
            "annotations": int(cls.size),
            "crowd_annotations": int(ann["crowd"].sum()),
            "rle_annotations": int(np.count_nonzero(ann["polygons"] == 0)),
            "multi_polygon_annotations": int(np.count_nonzero(ann["polygons"] >= 2)),
            "zero_area_annotations": int(np.count_nonzero(area == 0)),
            "background_annotations": int(np.count_nonzero(cls == 0)),
            "annotations_per_image": {
                "mean": float(per_image.mean()) if per_image.size else 0.0,
                "median": float(np.median(per_image)) if per_image.size else 0.0,
                "max": int(per_image.max()) if per_image.size else 0,
                "histogram": np.bincount(per_image).tolist() if per_image.size else [],
            },
            "object_sizes": {
                "area": "decoded pixels per annotation",
                "small": int(small.sum()),
                "medium": int(medium.sum()),
                "large": int(large.sum()),
                "area_bin_edges": list(AREA_EDGES),
                "area_histogram": hist.tolist(),
            },
            "classes": [
                {
                    "index": k,
                    "name": name,
                    "instances": int(np.count_nonzero(cls == k)),
                    "crowd": int(np.count_nonzero((cls == k) & ann["crowd"])),
                    "images": int(self.images_per_class[k]),
                    "instance_pixels": int(area[cls == k].sum()),
                    "pixels": {p: int(self.labels[p][k]) for p in OVERLAP_POLICIES},
                    "small": int(np.count_nonzero((cls == k) & small)),
                    "medium": int(np.count_nonzero((cls == k) & medium)),
                    "large": int(np.count_nonzero((cls == k) & large)),
                }
                for k, name in enumerate(names)
            ],
            "overlap": {
                "pixels": self.pixels,
                "foreground_pixels": self.foreground,
                "multi_annotation_pixels": self.multi_annotation,
                "multi_class_pixels": self.multi_class,
                "images_with_overlap": self.images_with_overlap,
                "images_with_class_overlap": self.images_with_class_overlap,
                "near_duplicate_pairs": self.near_duplicates,
                "class_matrix": self.class_overlap.tolist(),
                "containment": {
                    "threshold": CONTAINMENT,
                    "pairs": int(self.containment.sum()),
                    "matrix": self.containment.tolist(),
                    "by_class_pair": [
                        {"inner": names[i], "outer": names[j], "count": int(self.containment[i, j])}
                        for i, j in zip(*np.nonzero(self.containment), strict=True)
                    ],
                },
            },
            "policies": {
                "ignore_pixels": int(self.labels["ignore"][-1]),
                "labels_of_multi_class_pixels": {
                    p: {self.label_name(k): int(v) for k, v in enumerate(self.conflict[p]) if v}
                    for p in OVERLAP_POLICIES
                },
                "pairs": [self._pair_json(pair) for pair in POLICY_PAIRS],
            },
        }
        out["overlap"]["containment"]["by_class_pair"].sort(key=lambda r: -r["count"])
        return out

    def _pair_json(self, pair: tuple[str, str]) -> dict[str, Any]:
        m = self.changes[pair]
        rows, cols = np.nonzero(m)
        order = np.argsort(-m[rows, cols], kind="stable")
        return {
            "a": pair[0],
            "b": pair[1],
            "pixels": int(m.sum()),
            "images": self.images_changed[pair],
            "share_of_foreground": float(m.sum() / self.foreground) if self.foreground else 0.0,
            "changes": [
                {
                    f"{pair[0]}": self.label_name(int(rows[k])),
                    f"{pair[1]}": self.label_name(int(cols[k])),
                    "pixels": int(m[rows[k], cols[k]]),
                }
                for k in order
            ],
        }


# --- the whole dataset -----------------------------------------------------------------------


@dataclass
class Sample:
    """An image whose label depends on the policy, with its masks under each policy."""

    split: str
    image: dict[str, Any]
    conflict_pixels: int
    differing: dict[tuple[str, str], int]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_source: str = ""  # "cache" or "build_semantic_mask"
    consistent: bool = True  # masks agree with the counted disagreement


@dataclass
class EdaResult:
    dataset: CocoDataset
    splits: dict[str, SplitStats]  # per split, plus "all" over the annotated ones
    samples: list[Sample]
    timing: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_json(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        ds = self.dataset
        return {
            "harness_eda_version": STATS_VERSION,
            "dataset": {
                "root": str(ds.root),
                "image_root": str(ds.image_root) if ds.image_root is not None else None,
                "layout": ds.layout,
                "class_names": ds.class_names,
                "category_to_class": {str(k): v for k, v in sorted(ds.cat_to_class.items())},
                "splits": {name: len(s) for name, s in ds.splits.items()},
            },
            "settings": {
                "policies": list(OVERLAP_POLICIES),
                "ignore_index": IGNORE_INDEX,
                "small_area_below": SMALL_AREA,
                "large_area_from": LARGE_AREA,
                "containment_threshold": CONTAINMENT,
                **(settings or {}),
            },
            "splits": {name: s.to_json() for name, s in self.splits.items()},
            "samples": [
                {
                    "split": s.split,
                    "image_id": s.image["id"],
                    "file_name": s.image["file_name"],
                    "multi_class_pixels": s.conflict_pixels,
                    "differing_pixels": {f"{a} vs {b}": v for (a, b), v in s.differing.items()},
                    "mask_source": s.mask_source,
                    "consistent": s.consistent,
                }
                for s in self.samples
            ],
            "warnings": self.warnings,
            "timing_s": {k: round(v, 3) for k, v in self.timing.items()},
        }


Progress = Callable[[int], None]


def _is_annotated(split: CocoSplit) -> bool:
    # The competition's test.json has no annotations: its images are counted, not analysed.
    return split.name != "test" or any(split.anns_by_image.values())


def analyze_dataset(
    dataset: CocoDataset,
    *,
    n_samples: int = 6,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> EdaResult:
    """Analyse every split of ``dataset``; pick the ``n_samples`` most policy-dependent images.

    ``cache_dir`` is searched for the mask cache of the sample images (nothing is written there).
    ``progress(n)`` is called after every image.
    """
    start = time.perf_counter()
    names = dataset.class_names
    total = SplitStats("all", names)
    splits: dict[str, SplitStats] = {}
    candidates: list[tuple[tuple[int, int, int, int], str, dict[str, Any], ImageAnalysis]] = []
    for s_idx, split in enumerate(dataset.splits.values()):
        annotated = _is_annotated(split)
        stats = SplitStats(split.name, names, annotated=annotated)
        splits[split.name] = stats
        for img in split.images:
            a = analyze_image(
                split.anns_by_image.get(img["id"], []),
                img["height"],
                img["width"],
                dataset.cat_to_class,
                len(names),
            )
            stats.add(img, a)
            if annotated:
                total.add(img, a)
            if a.multi_class:
                # The visible choice (max-class vs area-desc) first, then the ignored pixels;
                # the last two keys only make the pick deterministic.
                key = (a.differing(POLICY_PAIRS[0]), a.multi_class, -s_idx, -int(img["id"]))
                candidates.append((key, split.name, img, a))
            if progress is not None:
                progress(1)
    splits["all"] = total
    analyzed = time.perf_counter()

    samples = [
        Sample(split, img, a.multi_class, {pair: a.differing(pair) for pair in POLICY_PAIRS})
        for _, split, img, a in heapq.nlargest(n_samples, candidates, key=lambda t: t[0])
    ]
    warnings = _attach_masks(samples, dataset, cache_dir)
    timing = {"analyze": analyzed - start, "samples": time.perf_counter() - analyzed}
    return EdaResult(dataset, splits, samples, timing, warnings)


def _open_cached(
    split: CocoSplit, dataset: CocoDataset, policy: str, cache_dir: Path | str | None
) -> MaskCache | None:
    """The cache entry training would use for this split and policy, if it was built already."""
    if cache_dir is None:
        return None
    key = cache_key(split, dataset, policy, IGNORE_INDEX)
    # cache.py's layout: <cache_dir>/masks/<key[:16]>, verified against the full key
    return MaskCache._open_valid(Path(cache_dir) / "masks" / key[:16], key)


def _attach_masks(
    samples: list[Sample], dataset: CocoDataset, cache_dir: Path | str | None
) -> list[str]:
    """Give each sample its training masks and check them against the counted disagreement."""
    warnings: list[str] = []
    opened: dict[tuple[str, str], MaskCache | None] = {}
    for s in samples:
        split = dataset.splits[s.split]
        img = s.image
        sources = set()
        for p in OVERLAP_POLICIES:
            if (s.split, p) not in opened:
                opened[(s.split, p)] = _open_cached(split, dataset, p, cache_dir)
            cache = opened[(s.split, p)]
            if cache is not None and img["id"] in cache:
                s.masks[p] = cache[img["id"]]
                sources.add("cache")
            else:
                s.masks[p] = _masks.build_semantic_mask(
                    split.anns_by_image.get(img["id"], []),
                    img["height"],
                    img["width"],
                    dataset.cat_to_class,
                    p,
                    IGNORE_INDEX,
                )
                sources.add("build_semantic_mask")
        s.mask_source = "+".join(sorted(sources))
        measured = {
            (a, b): int(np.count_nonzero(s.masks[a] != s.masks[b])) for a, b in POLICY_PAIRS
        }
        s.consistent = measured == s.differing
        if not s.consistent:
            warnings.append(
                f"{s.split} image id={img['id']}: policy masks differ on {measured} pixels, "
                f"the counts say {s.differing} (a stale mask cache?)"
            )
    return warnings


def load_image(dataset: CocoDataset, sample: Sample) -> np.ndarray:
    """The sample's RGB pixels (HxWx3 uint8)."""
    path = dataset.splits[sample.split].image_path(sample.image)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --- the command -----------------------------------------------------------------------------


_NUMBER_LIST = re.compile(r"\[[-0-9.eE,\s]*\]")


def dumps_stats(data: Any) -> str:
    """Indented JSON with every list of numbers on one line (matrices stay readable)."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text
    )


def dataset_name(root: Path) -> str:
    """A folder name for the report: the dataset folder, with its parent if it is generic."""
    root = root.resolve()
    name = root.stem if root.is_file() else root.name
    if name.lower() in {"data", "dataset", "datasets", "annotations", "images", "coco", "trainval"}:
        name = f"{root.parent.name}-{name}"
    return name or "dataset"
