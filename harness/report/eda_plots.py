"""The EDA report's charts: class frequencies, overlap and containment matrices, policy
comparisons, object sizes and the grid of policy samples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.config import OVERLAP_POLICIES
from harness.eda import (
    LARGE_AREA,
    POLICY_PAIRS,
    SMALL_AREA,
    Sample,
    SplitStats,
)
from harness.palette import class_palette
from harness.report.html import save_png

PNGS = {
    "classes": "class_frequency.png",
    "overlap": "overlap_matrix.png",
    "containment": "containment_matrix.png",
    "policies": "policy_labels.png",
    "sizes": "object_sizes.png",
    "samples": "policy_samples.png",
}
_POLICY_COLOURS = {"max-class": "#4c72b0", "area-desc": "#dd8452", "ignore": "#8c8c8c"}
_DPI = 110


def fmt_compact(n: float) -> str:
    """1234 -> 1.2k, 3456789 -> 3.5M: compact numbers for chart labels and tables."""
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def _compact(axis: Any) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_compact(v)))


def _save(fig: Figure, path: Path) -> None:
    save_png(fig, path, _DPI)


# --- charts ----------------------------------------------------------------------------------


def plot_classes(stats: Mapping[str, Any], names: Sequence[str], path: Path) -> None:
    """Instances and pixels per class, most frequent first (class imbalance at a glance)."""
    rows = [c for c in stats["classes"] if c["index"] != 0]
    rows.sort(key=lambda c: (-c["instances"], c["index"]))
    labels = [c["name"] for c in rows]
    y = np.arange(len(rows))
    height = max(2.5, 0.32 * len(rows) + 1.2)
    fig = Figure(figsize=(11, height))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    inst = np.array([c["instances"] for c in rows])
    crowd = np.array([c["crowd"] for c in rows])
    ax1.barh(y, inst - crowd, color="#4c72b0", label="polygon/RLE")
    ax1.barh(y, crowd, left=inst - crowd, color="#c44e52", label="crowd")
    for k, v in enumerate(inst):
        ax1.text(v, k, f" {v:,}", va="center", fontsize=8)
    ax1.set_title("instances per class")
    ax1.set_yticks(y, labels)
    ax1.invert_yaxis()
    if crowd.any():
        ax1.legend(loc="lower right", fontsize=8)
    px = np.array([c["pixels"]["max-class"] for c in rows], dtype=float)
    fg = stats["overlap"]["foreground_pixels"]
    ax2.barh(y, px, color="#55a868")
    for k, v in enumerate(px):
        ax2.text(v, k, f" {fmt_compact(v)} ({pct(v, fg)})", va="center", fontsize=8)
    ax2.set_title("labelled pixels per class (max-class policy; share of object pixels)")
    _compact(ax2.xaxis)
    for ax in (ax1, ax2):
        ax.margins(x=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def plot_matrix(
    matrix: np.ndarray,
    names: Sequence[str],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    unit: str,
) -> None:
    """A class-by-class heat map on a log colour scale, zeros blank, counts written in."""
    m = np.asarray(matrix)[1:, 1:].astype(float)  # background never overlaps
    labels = list(names[1:])
    n = len(labels)
    side = max(4.0, 0.55 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    masked = np.ma.masked_equal(m, 0)
    norm = Normalize(vmin=0, vmax=1)
    if masked.count():
        lo, hi = float(masked.min()), float(masked.max())
        # a log scale only pays when the counts span decades; a narrow range stays linear
        norm = LogNorm(vmin=max(1.0, lo), vmax=hi) if hi > 20 * lo else Normalize(0, hi)
        im = ax.imshow(masked, cmap="viridis", norm=norm)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=unit)
        _compact(bar.ax.yaxis)
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.imshow(np.zeros_like(m), cmap=ListedColormap(["#f4f4f4"]))
    ax.set_xticks(np.arange(n), labels, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    bright = norm(m[i, j]) > 0.6
                    ax.text(
                        j,
                        i,
                        fmt_compact(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if bright else "white",
                    )
    fig.tight_layout()
    _save(fig, path)


def plot_policies(stats: Mapping[str, Any], names: Sequence[str], path: Path) -> None:
    """Which label each policy gives the pixels that two or more classes claim."""
    conflict = stats["policies"]["labels_of_multi_class_pixels"]
    labels = [n for n in [*names[1:], "ignore"] if any(n in conflict[p] for p in conflict)]
    fig = Figure(figsize=(max(6.0, 0.7 * len(labels) + 3), 3.8))
    ax = fig.subplots()
    x = np.arange(len(labels))
    w = 0.8 / len(OVERLAP_POLICIES)
    for k, p in enumerate(OVERLAP_POLICIES):
        vals = [conflict[p].get(lab, 0) for lab in labels]
        ax.bar(x + (k - 1) * w, vals, w, label=p, color=_POLICY_COLOURS[p])
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("pixels")
    _compact(ax.yaxis)
    ax.set_title("labels given to pixels claimed by two or more classes, per policy")
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def plot_sizes(stats: SplitStats, names: Sequence[str], path: Path) -> None:
    """Object areas with COCO's small/medium/large bands, S/M/L per class, annotations/image."""
    ann = stats.annotation_arrays()
    area, cls = ann["area"], ann["class"]
    fig = Figure(figsize=(15, 4.2))
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    positive = area[area > 0]
    if positive.size:
        top = max(float(positive.max()), LARGE_AREA * 2.0)
        bins = np.geomspace(1, top, 50)
        ax1.hist(positive, bins=bins, color="#4c72b0")
        ax1.set_xscale("log")
        ax1.set_xlim(min(float(positive.min()), SMALL_AREA / 4) / 1.5, top * 1.5)
    for edge, label in ((SMALL_AREA, "32²"), (LARGE_AREA, "96²")):
        ax1.axvline(edge, color="#c44e52", linestyle="--", linewidth=1)
        ax1.text(
            edge,
            1,
            f" {label}",
            color="#c44e52",
            transform=ax1.get_xaxis_transform(),
            va="top",
            fontsize=8,
        )
    small, large = int((area < SMALL_AREA).sum()), int((area >= LARGE_AREA).sum())
    ax1.set_title(
        f"object area (px): small {small:,} / medium {area.size - small - large:,} / "
        f"large {large:,}",
        fontsize=10,
    )
    ax1.set_xlabel("decoded pixels per annotation (log)")
    ax1.set_ylabel("annotations")

    present = [k for k in range(1, len(names)) if np.any(cls == k)]
    y = np.arange(len(present))
    left = np.zeros(len(present))
    for band, colour, sel in (
        ("small", "#8172b3", area < SMALL_AREA),
        ("medium", "#64b5cd", (area >= SMALL_AREA) & (area < LARGE_AREA)),
        ("large", "#ccb974", area >= LARGE_AREA),
    ):
        share = np.array([np.mean(sel[cls == k]) if np.any(cls == k) else 0 for k in present])
        ax2.barh(y, share, left=left, color=colour, label=band)
        left += share
    ax2.set_yticks(y, [names[k] for k in present])
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_title("size bands per class (share of instances)", fontsize=10)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, frameon=False)

    per_image = np.array(stats.per_image)
    if per_image.size:
        counts = np.bincount(per_image)
        ax3.bar(np.arange(counts.size), counts, color="#55a868", width=0.9)
    ax3.set_title(
        f"annotations per image (mean {per_image.mean() if per_image.size else 0:.1f}, "
        f"empty {stats.empty_images})",
        fontsize=10,
    )
    ax3.set_xlabel("annotations")
    ax3.set_ylabel("images")
    for ax in (ax1, ax2, ax3):
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def crop_box(masks: Mapping[str, np.ndarray], min_side: int = 64) -> tuple[slice, slice]:
    """A window around the pixels the policies disagree on, so a few pixels stay visible.

    The box is the disagreement's bounding box grown to twice its size and to at least a third
    of the image (``min_side`` pixels for small images), clipped to the image.
    """
    stack = list(masks.values())
    differ: np.ndarray = np.zeros(stack[0].shape, dtype=bool)
    for m in stack[1:]:
        differ |= m != stack[0]
    h, w = differ.shape
    if not differ.any():
        return slice(0, h), slice(0, w)
    out = []
    for axis, n in ((1, h), (0, w)):
        idx = np.flatnonzero(differ.any(axis=axis))
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        side = min(n, max(2 * (hi - lo), n // 3, min_side))
        start = max(0, min(n - side, (lo + hi - side) // 2))
        out.append(slice(start, start + side))
    return out[0], out[1]


def plot_samples(
    samples: Sequence[Sample], images: Sequence[np.ndarray], names: Sequence[str], path: Path
) -> None:
    """One row per image: the photo, its mask under each policy, and where the policies differ.

    Each row is cropped to the region where the policies disagree (the title says where).
    """
    palette = class_palette(len(names))
    cols = ["image", *OVERLAP_POLICIES, "where they differ"]
    fig = Figure(figsize=(2.6 * len(cols), 2.8 * len(samples) + 0.6))
    axes = np.asarray(fig.subplots(len(samples), len(cols), squeeze=False))
    seen: set[int] = set()
    for r, (s, img) in enumerate(zip(samples, images, strict=True)):
        ys, xs = crop_box(s.masks)
        masks = {p: m[ys, xs] for p, m in s.masks.items()}
        photo = img[ys, xs]
        full = photo.shape[:2] == img.shape[:2]
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == "image":
                ax.imshow(photo)
                where = "" if full else f"\ncrop x {xs.start}-{xs.stop}, y {ys.start}-{ys.stop}"
                ax.set_ylabel(f"{s.split} id={s.image['id']}{where}", fontsize=8)
            elif col in masks:
                m = masks[col]
                ax.imshow(palette[np.where(m == 255, len(names), m)], interpolation="nearest")
                seen.update(np.unique(m).tolist())
            else:
                # dimmed photo; red where max-class and area-desc differ, white where only
                # the ignore policy differs (pixels it drops from training)
                view = (photo.astype(float) * 0.35).astype(np.uint8)
                ignored = masks["ignore"] == 255
                visible = masks["max-class"] != masks["area-desc"]
                view[ignored & ~visible] = (255, 255, 255)
                view[visible] = (230, 30, 30)
                ax.imshow(view, interpolation="nearest")
                a, b = POLICY_PAIRS[0]
                ax.set_xlabel(
                    f"{a} ≠ {b}: {int(visible.sum()):,} px\nignored: {int(ignored.sum()):,} px",
                    fontsize=8,
                )
            if r == 0:
                ax.set_title(col, fontsize=10)
    handles = [
        Patch(facecolor=palette[k] / 255, edgecolor="#999", label=names[k])
        for k in sorted(seen)
        if k < len(names)
    ]
    handles.append(Patch(facecolor="white", edgecolor="#999", label="ignore (255)"))
    handles.append(Patch(facecolor=(0.9, 0.12, 0.12), label="max-class ≠ area-desc"))
    fig.legend(
        handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False
    )
    fig.tight_layout(rect=(0, 0.6 / (2.8 * len(samples) + 0.6), 1, 1))
    _save(fig, path)
