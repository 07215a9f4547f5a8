"""The ``harness eda`` report: PNG charts and one self-contained HTML file.

The HTML embeds every chart as a base64 data URI and carries its CSS inline: it opens offline,
mailed or copied anywhere. Charts are drawn with matplotlib's object API on Agg canvases (no
pyplot, no global backend state), so a report can be built inside any process.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import OVERLAP_POLICIES
from harness.data.coco import load_coco
from harness.eda import (
    CONTAINMENT,
    POLICY_PAIRS,
    EdaError,
    EdaResult,
    analyze_dataset,
    dataset_name,
    dumps_stats,
    load_image,
)
from harness.palette import class_palette
from harness.progress import bar
from harness.report.eda_plots import (
    PNGS,
    fmt_compact,
    pct,
    plot_classes,
    plot_matrix,
    plot_policies,
    plot_samples,
    plot_sizes,
)
from harness.report.html import Html, esc, inline_png, table

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
        moves = ", ".join(f"{c[a]} → {c[b]} ({fmt_compact(c['pixels'])} px)" for c in top)
        verdict = (
            f"<b>Yes.</b> {ov['multi_class_pixels']:,} pixels ({pct(ov['multi_class_pixels'], fg)}"
            f" of object pixels) in {ov['images_with_class_overlap']:,} of {stats['images']:,} "
            f"images lie under two or more classes. "
            + (
                f"<code>{a}</code> and <code>{b}</code> label {vis['pixels']:,} of them "
                f"differently ({vis['images']:,} images); mostly {esc(moves)}. "
                if vis["pixels"]
                else f"<code>{a}</code> and <code>{b}</code> agree on all of them. "
            )
            + f"<code>ignore</code> drops all {stats['policies']['ignore_pixels']:,} from the "
            "loss and the metric."
        )
    return (
        f'<div class="answer"><b>Can a pixel carry several labels?</b> '
        f"{ov['multi_annotation_pixels']:,} pixels ({pct(ov['multi_annotation_pixels'], fg)} of "
        f"object pixels) are covered by two or more annotations, in "
        f"{ov['images_with_overlap']:,} images. {verdict}</div>"
    )


def _splittable(result: EdaResult) -> str:
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
    return table(header, rows)


def _classtable(stats: Mapping[str, Any], palette: np.ndarray) -> str:
    fg = stats["overlap"]["foreground_pixels"]
    rows = []
    for c in stats["classes"]:
        colour = "#" + "".join(f"{int(v):02x}" for v in palette[c["index"]])
        px = c["pixels"]
        rows.append(
            [
                Html(f'<span class="sw" style="background:{colour}"></span>{esc(c["name"])}'),
                c["index"],
                c["instances"],
                c["crowd"],
                c["images"],
                c["instance_pixels"],
                *(px[p] for p in OVERLAP_POLICIES),
                pct(px["max-class"], fg) if c["index"] else "-",
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
    return table(header, rows)


def _policy_tables(stats: Mapping[str, Any]) -> str:
    out = []
    fg = stats["overlap"]["foreground_pixels"]
    rows = [
        [f"{p['a']} vs {p['b']}", p["pixels"], pct(p["pixels"], fg), p["images"]]
        for p in stats["policies"]["pairs"]
    ]
    out.append(
        table(["policies", "pixels labelled differently", "of object pixels", "images"], rows)
    )
    for p in stats["policies"]["pairs"]:
        a, b = p["a"], p["b"]
        if not p["changes"]:
            continue
        rows = [[c[a], c[b], c["pixels"]] for c in p["changes"][:12]]
        more = len(p["changes"]) - 12
        caption = f"<p><b>{esc(a)}</b> vs <b>{esc(b)}</b>: label changes, largest first"
        caption += f" ({more} smaller ones in stats.json)</p>" if more > 0 else "</p>"
        out.append(caption + table([f"{a} says", f"{b} says", "pixels"], rows, left=2))
    return "".join(out)


def _containmenttable(stats: Mapping[str, Any]) -> str:
    rows = [
        [r["inner"], r["outer"], r["count"]]
        for r in stats["overlap"]["containment"]["by_class_pair"][:15]
    ]
    if not rows:
        return "<p>No annotation lies 90% or more inside another one.</p>"
    return table(["inner class", "outer class", "annotations ≥ 90% inside"], rows, left=2)


# long: the page, section by section, in reading order
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
    image_folder = f", images in {esc(ds.image_root)}" if ds.image_root is not None else ""
    sections.append(
        f"<h1>{esc(title)}</h1><p class='sub'>{esc(ds.root)}{image_folder} — layout "
        f"<code>{ds.layout}</code>, "
        f"{len(names) - 1} classes + background; statistics over the annotated splits "
        f"({', '.join(n for n, s in result.splits.items() if n != 'all' and s.annotated)}).</p>"
    )
    if not has_data:
        sections.append('<p class="warn">No annotations: nothing to analyse.</p>')
    else:
        sections.append(_answer(stats))
    for w in result.warnings:
        sections.append(f'<p class="warn">{esc(w)}</p>')
    sections.append("<h2>Splits</h2>" + _splittable(result))

    if has_data:
        plot_classes(stats, names, paths["classes"])
        sections.append(
            "<h2>Classes</h2><p>Pixel counts are the labels of the semantic masks under each "
            "overlap policy; <i>annotated px</i> sums the annotations' own areas (overlaps "
            "counted twice). Size bands use the decoded area: small &lt; 32², large ≥ 96².</p>"
            + _classtable(stats, palette)
            + inline_png(paths["classes"], "instances and pixels per class")
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
                "class cover.</p>" + inline_png(paths["overlap"], "class overlap matrix")
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
            containment_img = inline_png(paths["containment"], "containment matrix")
        ov = stats["overlap"]
        fg = ov["foreground_pixels"]
        sections.append(
            "<h2>Overlaps</h2>"
            + table(
                ["", "pixels", "of object pixels", "images"],
                [
                    ["covered by ≥ 1 annotation (object pixels)", fg, pct(fg, fg), "-"],
                    [
                        "covered by ≥ 2 annotations",
                        ov["multi_annotation_pixels"],
                        pct(ov["multi_annotation_pixels"], fg),
                        ov["images_with_overlap"],
                    ],
                    [
                        "covered by ≥ 2 different classes",
                        ov["multi_class_pixels"],
                        pct(ov["multi_class_pixels"], fg),
                        ov["images_with_class_overlap"],
                    ],
                ],
            )
            + f"<p>Near-duplicate annotation pairs (each ≥ 90% inside the other): "
            f"{ov['near_duplicate_pairs']:,}.</p>"
            + overlap_img
            + "<h3>Containment</h3><p>An annotation at least 90% inside another one (a bottle in "
            "a bag), counted per (inner class, outer class).</p>"
            + _containmenttable(stats)
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
            sections.append(inline_png(paths["policies"], "labels per policy"))
        if result.samples:
            images = [load_image(ds, s) for s in result.samples]
            plot_samples(result.samples, images, names, paths["samples"])
            source = ", ".join(sorted({s.mask_source for s in result.samples}))
            sections.append(
                "<h3>Where they differ</h3><p>The images whose labels depend most on the policy"
                f" (masks from: {esc(source)}; the training masks themselves).</p>"
                + inline_png(paths["samples"], "sample masks under each policy")
            )
        plot_sizes(total, names, paths["sizes"])
        sections.append("<h2>Sizes</h2>" + inline_png(paths["sizes"], "object sizes"))

    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.timing.items())
    extra = ", ".join(f"{k}={v}" for k, v in (settings or {}).items())
    sections.append(
        f"<p class='sub'>All numbers are in <code>stats.json</code> beside this file. "
        f"{esc(extra)}. Timing: {esc(timing)}.</p>"
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# --- the command ---------------------------------------------------------------------------


def run_eda(
    root: Path | str,
    out_dir: Path | str,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    image_root: Path | str | None = None,
    cache_dir: Path | str | None = "runs/cache",
    n_samples: int = 6,
    progress: bool = False,
) -> tuple[EdaResult, Path]:
    """Load and validate ``root``, analyse it and write the report into ``out_dir``.

    Returns the result and the path of ``report.html``; ``progress`` shows a bar on a terminal
    for sets of 200 images or more. ``out_dir`` is created; the files this writes in it are
    replaced on a rerun. ``image_root``: the images' own folder (``--images``), as in
    :func:`~harness.data.coco.load_coco`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise EdaError(f"--val-fraction={val_fraction}: must be strictly between 0 and 1")
    if n_samples < 0:
        raise EdaError(f"--samples={n_samples}: must be >= 0")
    start = time.perf_counter()
    dataset = load_coco(
        root, val_fraction=val_fraction, split_seed=split_seed, image_root=image_root
    )
    loaded = time.perf_counter()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdaError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    total = sum(len(s) for s in dataset.splits.values())
    with bar(total, "analysing images", enabled=progress, min_total=200) as advance:
        result = analyze_dataset(
            dataset, n_samples=n_samples, cache_dir=cache_dir, progress=advance
        )
    result.timing = {"load": loaded - start, **result.timing}

    settings: dict[str, Any] = {"val_fraction": val_fraction, "split_seed": split_seed}
    if image_root is not None:
        settings["image_root"] = str(image_root)
    report_start = time.perf_counter()
    try:
        write_report(result, out, settings)
    except OSError as exc:
        raise EdaError(f"{out}: cannot write the report ({exc})") from None
    result.timing["report"] = time.perf_counter() - report_start
    result.timing["total"] = time.perf_counter() - start
    # stats.json is written last so it carries the full timing
    (out / "stats.json").write_text(dumps_stats(result.to_json(settings)) + "\n")
    return result, out / "report.html"


def summary_lines(result: EdaResult, report: Path) -> list[str]:
    """What ``harness eda`` prints: splits, the overlap answer, the policy comparison."""
    ds = result.dataset
    lines = [f"{ds.root}: layout {ds.layout}, {ds.num_classes - 1} classes + background"]
    for name, s in result.splits.items():
        if name == "all":
            continue
        j = s.to_json()
        if not j["annotated"]:
            lines.append(f"  {name:<5} {j['images']:>6,} images, no annotations")
            continue
        lines.append(
            f"  {name:<5} {j['images']:>6,} images, {j['annotations']:,} annotations "
            f"({j['empty_images']:,} empty images, {j['crowd_annotations']:,} crowd, "
            f"{j['multi_polygon_annotations']:,} multi-polygon)"
        )
    total = result.splits["all"]
    fg = max(total.foreground, 1)
    lines.append(
        f"overlaps: {total.multi_annotation:,} px under 2+ annotations "
        f"({100 * total.multi_annotation / fg:.2f}% of object px), {total.multi_class:,} px "
        f"under 2+ classes in {total.images_with_class_overlap:,} images; "
        f"{int(total.containment.sum()):,} annotations >= {CONTAINMENT:.0%} inside another"
    )
    for a, b in POLICY_PAIRS:
        differ = int(total.changes[(a, b)].sum())
        lines.append(
            f"  {a} vs {b}: {differ:,} px labelled differently in "
            f"{total.images_changed[(a, b)]:,} images"
        )
    files = sorted(p.name for p in report.parent.glob("*.png"))
    lines.append(
        f"report: {report} (+ stats.json, {len(files)} PNGs) in {result.timing['total']:.1f}s"
    )
    return lines
