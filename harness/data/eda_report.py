"""The ``harness eda`` report: PNG charts and one self-contained HTML file.

The HTML embeds every chart as a base64 data URI and carries its CSS inline: it opens offline,
mailed or copied anywhere. Charts are drawn with matplotlib's object API on Agg canvases (no
pyplot, no global backend state), so a report can be built inside any process.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import OVERLAP_POLICIES
from harness.data.eda import (
    LARGE_AREA,
    POLICY_PAIRS,
    SMALL_AREA,
    EdaResult,
    Sample,
    SplitStats,
    dataset_name,
    load_image,
)

# matplotlib writes its font cache to ~/.cache unless told otherwise; keep $HOME clean.
if "MPLCONFIGDIR" not in os.environ:
    _uid = getattr(os, "getuid", lambda: 0)()
    os.environ["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / f"harness-matplotlib-{_uid}")

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

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


def _fmt(n: float) -> str:
    """1234 -> 1.2k, 3456789 -> 3.5M: compact numbers for chart labels and tables."""
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def class_palette(n: int) -> np.ndarray:
    """RGB uint8 colours: [0] background (near black), 1..n-1 distinct, [n] ignore (white)."""
    from matplotlib import colormaps

    colours = np.zeros((n + 1, 3), dtype=np.uint8)
    colours[0] = (25, 25, 25)
    for k in range(1, n):
        if n - 1 <= 20:
            # tab20 pairs a strong and a light tone: take the strong ones first
            rgba = colormaps["tab20"]((2 * (k - 1)) % 20 + (2 * (k - 1)) // 20)
        else:
            rgba = colormaps["hsv"]((k - 1) / (n - 1))
        colours[k] = np.round(np.asarray(rgba[:3]) * 255)
    colours[n] = (255, 255, 255)
    return colours


def _compact(axis: Any) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")


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
        ax2.text(v, k, f" {_fmt(v)} ({_pct(v, fg)})", va="center", fontsize=8)
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
                        _fmt(m[i, j]),
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


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #eee;padding-bottom:.2rem;margin-top:2.2rem}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f6f6f6}td.l,th.l{text-align:left}
.answer{background:#f3f8ff;border-left:4px solid #4c72b0;padding:.7rem 1rem;margin:1rem 0}
.warn{background:#fff4e5;border-left:4px solid #dd8452;padding:.5rem 1rem}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #999;vertical-align:middle;
margin-right:.3em}
code{background:#f4f4f4;padding:0 .25em}
"""


class _Html(str):
    """Markup that a table cell inserts as it is (everything else is escaped)."""


def _e(value: Any) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns are text (left-aligned), the rest numbers."""

    def cell(tag: str, k: int, v: Any) -> str:
        cls = ' class="l"' if k < left else ""
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else _e(v)
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "".join(cell("th", k, h) for k, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", k, v) for k, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _answer(stats: Mapping[str, Any]) -> str:
    ov = stats["overlap"]
    fg = ov["foreground_pixels"]
    pairs = {(p["a"], p["b"]): p for p in stats["policies"]["pairs"]}
    a, b = POLICY_PAIRS[0]
    vis = pairs[(a, b)]
    if not ov["multi_class_pixels"]:
        verdict = (
            "No pixel is claimed by two different classes: every overlap policy gives the same "
            "masks, the choice does not matter for this dataset."
        )
    else:
        top = vis["changes"][:3]
        moves = ", ".join(f"{c[a]} → {c[b]} ({_fmt(c['pixels'])} px)" for c in top)
        verdict = (
            f"<b>Yes.</b> {ov['multi_class_pixels']:,} pixels ({_pct(ov['multi_class_pixels'], fg)}"
            f" of object pixels) in {ov['images_with_class_overlap']:,} of {stats['images']:,} "
            f"images lie under two or more classes. "
            + (
                f"<code>{a}</code> and <code>{b}</code> label {vis['pixels']:,} of them "
                f"differently ({vis['images']:,} images); mostly {_e(moves)}. "
                if vis["pixels"]
                else f"<code>{a}</code> and <code>{b}</code> agree on all of them. "
            )
            + f"<code>ignore</code> drops all {stats['policies']['ignore_pixels']:,} from the "
            "loss and the metric."
        )
    return (
        f'<div class="answer"><b>Can a pixel carry several labels?</b> '
        f"{ov['multi_annotation_pixels']:,} pixels ({_pct(ov['multi_annotation_pixels'], fg)} of "
        f"object pixels) are covered by two or more annotations, in "
        f"{ov['images_with_overlap']:,} images. {verdict}</div>"
    )


def _split_table(result: EdaResult) -> str:
    header = [
        "split",
        "images",
        "empty",
        "annotations",
        "per image (mean / max)",
        "crowd",
        "RLE",
        "multi-polygon",
        "zero-area",
        "image sizes (w x h: images)",
    ]
    rows = []
    for name, s in result.splits.items():
        j = s.to_json()
        sizes = ", ".join(f"{r['width']}x{r['height']}: {r['images']:,}" for r in j["image_sizes"])
        if len(j["image_sizes"]) > 4:
            sizes = f"{len(j['image_sizes'])} sizes; " + ", ".join(sizes.split(", ")[:3]) + ", …"
        if not j["annotated"]:
            rows.append([name, j["images"], "-", "no annotations", "-", "-", "-", "-", "-", sizes])
            continue
        api = j["annotations_per_image"]
        rows.append(
            [
                name,
                j["images"],
                j["empty_images"],
                j["annotations"],
                f"{api['mean']:.2f} / {api['max']}",
                j["crowd_annotations"],
                j["rle_annotations"],
                j["multi_polygon_annotations"],
                j["zero_area_annotations"],
                sizes,
            ]
        )
    return _table(header, rows)


def _class_table(stats: Mapping[str, Any], palette: np.ndarray) -> str:
    fg = stats["overlap"]["foreground_pixels"]
    rows = []
    for c in stats["classes"]:
        colour = "#" + "".join(f"{int(v):02x}" for v in palette[c["index"]])
        px = c["pixels"]
        rows.append(
            [
                _Html(f'<span class="sw" style="background:{colour}"></span>{_e(c["name"])}'),
                c["index"],
                c["instances"],
                c["crowd"],
                c["images"],
                c["instance_pixels"],
                *(px[p] for p in OVERLAP_POLICIES),
                _pct(px["max-class"], fg) if c["index"] else "-",
                c["small"],
                c["medium"],
                c["large"],
            ]
        )
    header = [
        "class",
        "index",
        "instances",
        "crowd",
        "images",
        "annotated px",
        *(f"px {p}" for p in OVERLAP_POLICIES),
        "of object px (max-class)",
        "small",
        "medium",
        "large",
    ]
    return _table(header, rows)


def _policy_tables(stats: Mapping[str, Any]) -> str:
    out = []
    fg = stats["overlap"]["foreground_pixels"]
    rows = [
        [f"{p['a']} vs {p['b']}", p["pixels"], _pct(p["pixels"], fg), p["images"]]
        for p in stats["policies"]["pairs"]
    ]
    out.append(
        _table(["policies", "pixels labelled differently", "of object pixels", "images"], rows)
    )
    for p in stats["policies"]["pairs"]:
        a, b = p["a"], p["b"]
        if not p["changes"]:
            continue
        rows = [[c[a], c[b], c["pixels"]] for c in p["changes"][:12]]
        more = len(p["changes"]) - 12
        caption = f"<p><b>{_e(a)}</b> vs <b>{_e(b)}</b>: label changes, largest first"
        caption += f" ({more} smaller ones in stats.json)</p>" if more > 0 else "</p>"
        out.append(caption + _table([f"{a} says", f"{b} says", "pixels"], rows, left=2))
    return "".join(out)


def _containment_table(stats: Mapping[str, Any]) -> str:
    rows = [
        [r["inner"], r["outer"], r["count"]]
        for r in stats["overlap"]["containment"]["by_class_pair"][:15]
    ]
    if not rows:
        return "<p>No annotation lies 90% or more inside another one.</p>"
    return _table(["inner class", "outer class", "annotations ≥ 90% inside"], rows, left=2)


def write_report(result: EdaResult, out: Path, settings: Mapping[str, Any] | None = None) -> Path:
    """Write the PNGs and ``report.html`` into ``out``; returns the HTML path."""
    ds = result.dataset
    names = ds.class_names
    total = result.splits["all"]
    stats = total.to_json()
    palette = class_palette(len(names))
    paths = {k: out / v for k, v in PNGS.items()}
    for stale in paths.values():  # a rerun may not draw every chart: drop the old ones
        stale.unlink(missing_ok=True)
    has_data = stats.get("annotations", 0) > 0

    sections: list[str] = []
    title = f"harness eda: {dataset_name(ds.root)}"
    sections.append(
        f"<h1>{_e(title)}</h1><p class='sub'>{_e(ds.root)} — layout <code>{ds.layout}</code>, "
        f"{len(names) - 1} classes + background; statistics over the annotated splits "
        f"({', '.join(n for n, s in result.splits.items() if n != 'all' and s.annotated)}).</p>"
    )
    if not has_data:
        sections.append('<p class="warn">No annotations: nothing to analyse.</p>')
    else:
        sections.append(_answer(stats))
    for w in result.warnings:
        sections.append(f'<p class="warn">{_e(w)}</p>')
    sections.append("<h2>Splits</h2>" + _split_table(result))

    if has_data:
        plot_classes(stats, names, paths["classes"])
        sections.append(
            "<h2>Classes</h2><p>Pixel counts are the labels of the semantic masks under each "
            "overlap policy; <i>annotated px</i> sums the annotations' own areas (overlaps "
            "counted twice). Size bands use the decoded area: small &lt; 32², large ≥ 96².</p>"
            + _class_table(stats, palette)
            + _img(paths["classes"], "instances and pixels per class")
        )
        overlap_img = "<p>No two annotations overlap.</p>"
        if total.class_overlap.any():
            plot_matrix(
                total.class_overlap,
                names,
                paths["overlap"],
                title="pixels covered by both classes (diagonal: by 2+ of the same class)",
                xlabel="class",
                ylabel="class",
                unit="pixels",
            )
            overlap_img = (
                "<p>Which class lies on which: the pixels two classes share (the matrix is "
                "symmetric); the diagonal counts pixels that two or more instances of one "
                "class cover.</p>" + _img(paths["overlap"], "class overlap matrix")
            )
        containment_img = ""
        if total.containment.any():
            plot_matrix(
                total.containment,
                names,
                paths["containment"],
                title="annotations ≥ 90% inside another annotation",
                xlabel="outer class (the container)",
                ylabel="inner class (the contained)",
                unit="annotation pairs",
            )
            containment_img = _img(paths["containment"], "containment matrix")
        ov = stats["overlap"]
        fg = ov["foreground_pixels"]
        sections.append(
            "<h2>Overlaps</h2>"
            + _table(
                ["", "pixels", "of object pixels", "images"],
                [
                    ["covered by ≥ 1 annotation (object pixels)", fg, _pct(fg, fg), "-"],
                    [
                        "covered by ≥ 2 annotations",
                        ov["multi_annotation_pixels"],
                        _pct(ov["multi_annotation_pixels"], fg),
                        ov["images_with_overlap"],
                    ],
                    [
                        "covered by ≥ 2 different classes",
                        ov["multi_class_pixels"],
                        _pct(ov["multi_class_pixels"], fg),
                        ov["images_with_class_overlap"],
                    ],
                ],
            )
            + f"<p>Near-duplicate annotation pairs (each ≥ 90% inside the other): "
            f"{ov['near_duplicate_pairs']:,}.</p>"
            + overlap_img
            + "<h3>Containment</h3><p>An annotation at least 90% inside another one (a bottle in "
            "a bag), counted per (inner class, outer class).</p>"
            + _containment_table(stats)
            + containment_img
        )
        sections.append(
            "<h2>Overlap policies</h2><p><code>max-class</code>: the higher class index wins "
            "(1st edition); <code>area-desc</code>: larger annotations painted first, so the "
            "smaller one wins (2nd edition); <code>ignore</code>: pixels of two or more "
            "classes get 255 and count for nothing. They differ only on the pixels that two "
            "or more classes claim.</p>" + _policy_tables(stats)
        )
        if stats["overlap"]["multi_class_pixels"]:
            plot_policies(stats, names, paths["policies"])
            sections.append(_img(paths["policies"], "labels per policy"))
        if result.samples:
            images = [load_image(ds, s) for s in result.samples]
            plot_samples(result.samples, images, names, paths["samples"])
            source = ", ".join(sorted({s.mask_source for s in result.samples}))
            sections.append(
                "<h3>Where they differ</h3><p>The images whose labels depend most on the policy"
                f" (masks from: {_e(source)}; the training masks themselves).</p>"
                + _img(paths["samples"], "sample masks under each policy")
            )
        plot_sizes(total, names, paths["sizes"])
        sections.append("<h2>Sizes</h2>" + _img(paths["sizes"], "object sizes"))

    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timing.items())
    extra = ", ".join(f"{k}={v}" for k, v in (settings or {}).items())
    sections.append(
        f"<p class='sub'>All numbers are in <code>stats.json</code> beside this file. "
        f"{_e(extra)}. Timing: {_e(timing)}.</p>"
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
