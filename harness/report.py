"""``harness report STUDY``: one self-contained HTML page and its PNGs for a study.

Everything comes from the study's storage (trial params, states, user attributes) and from each
trial's run folder (``metrics.jsonl``, ``summary.json``, ``best.pt``). The page embeds every chart
as a base64 data URI and carries its CSS inline, so it opens offline, mailed or copied anywhere.
Charts are drawn with matplotlib's object API on Agg canvases (no pyplot, no global backend
state). A missing piece (no best trial, a deleted run folder, no checkpoint, too few trials for
importances) becomes a sentence in the page, never an exception.

A tiny inline script records window errors and, once the page has loaded, checks that every image
decoded; it sets ``<body data-render="ok">`` (or ``"error: ..."``) so a headless browser can tell.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

# matplotlib writes its font cache to ~/.cache unless told otherwise; keep $HOME clean.
if "MPLCONFIGDIR" not in os.environ:
    _uid = getattr(os, "getuid", lambda: 0)()
    os.environ["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / f"harness-matplotlib-{_uid}")

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

REPORT_DIR = "report"
REPORT_FILE = "report.html"
PNGS = {
    "history": "history.png",
    "parallel": "parallel_coordinates.png",
    "importance": "param_importances.png",
    "bn": "bn_switches.png",
    "curves": "learning_curves.png",
    "per_class": "per_class_iou.png",
    "masks": "best_masks.png",
}
BN_SWITCHES = ("encoder_bn", "fcn_bn", "decoder_bn")
MIN_IMPORTANCE_TRIALS = 3  # fewer complete trials than this say nothing about importance
_DPI = 100
_FLAG_RED = "#d62728"
_STATE_STYLE = {  # marker, colour, label per Optuna state in the history chart
    "COMPLETE": ("o", "#1f77b4", "complete"),
    "PRUNED": ("v", "#ff7f0e", "pruned (best val mIoU so far)"),
    "FAIL": ("x", "#7f7f7f", "failed"),
    "RUNNING": ("s", "#9467bd", "running"),
    "WAITING": ("s", "#bcbd22", "waiting"),
}


class ReportError(HarnessError):
    """The report cannot be written at all (e.g. the destination is not a folder)."""


# --- what the report needs of each trial ---------------------------------------------------------


@dataclass(frozen=True)
class TrialInfo:
    """One trial as the report sees it: plain values, no Optuna objects."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    value: float | None  # the objective when complete, else the best val mIoU it reached
    flags: list[str]
    evidence: dict[str, str]
    run_dir: Path | None
    config: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def trial_infos(
    trials: Sequence[Any], *, study: str = "", out: Path | None = None
) -> list[TrialInfo]:
    """The report's view of every trial, flags as the study stands now (outliers recomputed)."""
    from harness.sweep import study_outliers, trial_evidence, trial_flags

    outliers = study_outliers(trials)
    infos = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = t.user_attrs
        state = t.state.name
        raw = t.value if state == "COMPLETE" else ua.get("best_miou")
        value = float(raw) if raw is not None and math.isfinite(float(raw)) else None
        infos.append(
            TrialInfo(
                number=t.number,
                state=state,
                params=dict(t.params),
                value=value,
                flags=trial_flags(t, outliers),
                evidence=trial_evidence(t, outliers),
                run_dir=_run_dir(ua.get("run_dir"), study, t.number, out),
                config=dict(ua.get("config") or {}),
                reason=str(ua.get("reason") or t.system_attrs.get("fail_reason") or ""),
            )
        )
    return infos


def _run_dir(recorded: Any, study: str, number: int, out: Path | None) -> Path | None:
    """The recorded run folder; when it is gone (moved study, relative path from another cwd),
    the sweep's standard place ``<out>/<study>/trials/<study>-<number>`` if that exists."""
    if recorded:
        path = Path(recorded)
        if path.is_dir() or out is None:
            return path
    if out is not None and study:
        standard = out / study / "trials" / f"{study}-{number}"
        if standard.is_dir():
            return standard
    return Path(recorded) if recorded else None


def param_names(infos: Sequence[TrialInfo]) -> list[str]:
    names: list[str] = []
    for t in infos:
        names.extend(n for n in t.params if n not in names)
    return names


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]  # "model.fcn_bn" and "fcn_bn" are one switch


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "none" if value is None else str(value)


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def read_metrics(run_dir: Path | None) -> list[dict[str, Any]] | None:
    """``metrics.jsonl`` rows, or None when the run folder or the file is missing."""
    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return None
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: keep what is readable
    return rows


def read_summary(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


# --- charts ------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")


def plot_history(infos: Sequence[TrialInfo], path: Path) -> None:
    """val mIoU per trial number by state, flagged trials ringed red, best-so-far line over the
    unflagged complete trials (the ones best.yaml may come from)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    floor = min([t.value for t in infos if t.value is not None] or [0.0])
    handles = []
    for state, (marker, colour, label) in _STATE_STYLE.items():
        pts = [t for t in infos if t.state == state]
        if not pts:
            continue
        # a failed trial has no value: drawn on the floor line so it is still seen
        ys = [t.value if t.value is not None else floor for t in pts]
        ax.scatter([t.number for t in pts], ys, marker=marker, color=colour, zorder=3, s=40)
        handles.append(Line2D([], [], marker=marker, color=colour, ls="", label=label))
    flagged = [t for t in infos if t.flags]
    if flagged:
        ys = [t.value if t.value is not None else floor for t in flagged]
        ax.scatter(
            [t.number for t in flagged],
            ys,
            s=160,
            facecolors="none",
            edgecolors=_FLAG_RED,
            linewidths=1.8,
            zorder=4,
        )
        for t, y in zip(flagged, ys, strict=True):
            ax.annotate(
                f"#{t.number}",
                (t.number, y),
                textcoords="offset points",
                xytext=(6, 6),
                color=_FLAG_RED,
                fontsize=8,
            )
        handles.append(
            Line2D([], [], marker="o", mfc="none", mec=_FLAG_RED, ls="", ms=10, label="flagged")
        )
    xs, best, best_ys = [], -math.inf, []
    for t in infos:
        if t.state == "COMPLETE" and t.value is not None and not t.flags:
            best = max(best, t.value)
        if math.isfinite(best):
            xs.append(t.number)
            best_ys.append(best)
    if xs:
        ax.step(xs, best_ys, where="post", color="#2ca02c", lw=1.5, zorder=2)
        handles.append(Line2D([], [], color="#2ca02c", label="best so far (unflagged)"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number")
    ax.set_ylabel("val mIoU")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8)
    _save(fig, path)


def _is_log(name: str, values: Sequence[float]) -> bool:
    from harness.outliers import LOG_PARAMS

    positive = bool(values) and min(values) > 0
    return positive and (name in LOG_PARAMS or max(values) / min(values) > 20)


def axis_positions(name: str, values: Sequence[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Each value's position on a [0, 1] axis and the axis ticks. Numbers (learning rates on a
    log scale) are min-max scaled; anything else (bool, str, None) is a category, spread evenly."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric and values:
        raw = [float(v) for v in values]
        log = _is_log(name, raw)
        xs = [math.log10(v) for v in raw] if log else raw
        lo, hi = min(xs), max(xs)
        span = hi - lo or 1.0
        pos = [(x - lo) / span if hi > lo else 0.5 for x in xs]
        ticks = [(0.0, f"{min(raw):.3g}"), (1.0, f"{max(raw):.3g}")] if hi > lo else []
        if hi > lo:
            mid = lo + span / 2
            ticks.insert(1, (0.5, f"{10**mid if log else mid:.3g}"))
        else:
            ticks = [(0.5, f"{raw[0]:.3g}")]
        return pos, ticks
    cats = sorted({_fmt(v) for v in values})
    where = {c: (k / (len(cats) - 1) if len(cats) > 1 else 0.5) for k, c in enumerate(cats)}
    return [where[_fmt(v)] for v in values], [(where[c], c) for c in cats]


def plot_parallel(infos: Sequence[TrialInfo], names: Sequence[str], path: Path) -> bool:
    """One line per trial with a value through the swept parameters to val mIoU, coloured by
    val mIoU; flagged trials dashed. False (no chart) when nothing can be drawn."""
    shown = [t for t in infos if t.value is not None and t.state in ("COMPLETE", "PRUNED")]
    if not names or not shown:
        return False
    axes_names = [*names, "val mIoU"]
    columns = [axis_positions(n, [t.params.get(n) for t in shown]) for n in names]
    columns.append(axis_positions("val mIoU", [t.value for t in shown]))
    values = [float(t.value) for t in shown if t.value is not None]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(max(6, 1.8 * len(axes_names)), 4.2))
    ax = fig.add_subplot()
    for i, t in enumerate(shown):
        ys = [col[0][i] for col in columns]
        style = "--" if t.flags or t.state != "COMPLETE" else "-"
        ax.plot(
            range(len(axes_names)), ys, style, color=cmap(norm(t.value or 0.0)), lw=1.6, alpha=0.9
        )
    for k, (_, ticks) in enumerate(columns):
        ax.axvline(k, color="black", lw=0.8)
        for y, label in ticks:
            ax.text(
                k + 0.04,
                y,
                label,
                fontsize=8,
                va="center",
                bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1},
            )
    log_names = {n for n in names if _is_log(n, _numbers([t.params.get(n) for t in shown]))}
    ax.set_xticks(range(len(axes_names)))
    ax.set_xticklabels([f"{n} (log)" if n in log_names else n for n in axes_names], fontsize=9)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlim(-0.2, len(axes_names) - 0.4)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = _mappable(norm, cmap)
    fig.colorbar(sm, ax=ax, label="val mIoU", fraction=0.04)
    ax.set_title("parallel coordinates (dashed: flagged or pruned)")
    _save(fig, path)
    return True


def _numbers(values: Sequence[Any]) -> list[float]:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values]
    return []


def _mappable(norm: Normalize, cmap: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    return sm


def param_importances(study: Any, infos: Sequence[TrialInfo]) -> dict[str, float] | str:
    """Optuna's importances (PED-ANOVA by default) or the sentence that says why there are none."""
    done = [t for t in infos if t.state == "COMPLETE" and t.value is not None]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return (
            f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials; "
            f"this study has {len(done)}."
        )
    varied = [n for n in param_names(done) if len({_fmt(t.params.get(n)) for t in done}) > 1]
    if not varied or len({t.value for t in done}) < 2:
        return "Parameter importances cannot be computed: no parameter or no val mIoU varies."
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except Exception as exc:  # optuna raises several types on degenerate studies
        return f"Parameter importances cannot be computed ({type(exc).__name__}: {exc})."
    imp = {k: float(v) for k, v in imp.items() if math.isfinite(float(v))}
    if not imp or sum(imp.values()) <= 0:
        return "Parameter importances cannot be computed: every importance came out zero."
    return imp


def plot_importances(imp: Mapping[str, float], path: Path) -> None:
    names = sorted(imp, key=lambda n: imp[n])
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [imp[n] for n in names], color="#1f77b4")
    for k, n in enumerate(names):
        ax.text(imp[n], k, f" {imp[n]:.2f}", va="center", fontsize=8)
    ax.set_xlabel("importance for val mIoU (sums to 1)")
    ax.set_xlim(0, max(imp.values()) * 1.2)
    ax.set_title("parameter importances")
    _save(fig, path)


def bn_names(names: Sequence[str]) -> list[str]:
    """The swept BN switches, in model order (encoder, fcn, decoder)."""
    by_short = {_short(n): n for n in names}
    return [by_short[s] for s in BN_SWITCHES if s in by_short]


def _combo(t: TrialInfo, switches: Sequence[str]) -> str:
    def mark(v: Any) -> str:
        return "on" if v is True else "off" if v is False else _fmt(v)

    return "\n".join(f"{_short(n).removesuffix('_bn')} {mark(t.params.get(n))}" for n in switches)


def plot_bn(infos: Sequence[TrialInfo], switches: Sequence[str], path: Path) -> bool:
    """Strip plot of val mIoU per BN combination (complete trials; flagged red, pruned hollow),
    with a box where a combination has 3 or more trials."""
    shown = [t for t in infos if t.value is not None and t.state in ("COMPLETE", "PRUNED")]
    if not switches or not shown:
        return False
    combos = sorted({_combo(t, switches) for t in shown})
    fig = Figure(figsize=(max(5, 1.3 * len(combos) + 2), 4))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # fixed jitter: the same study draws the same chart
    for k, combo in enumerate(combos):
        group = [t for t in shown if _combo(t, switches) == combo]
        complete = [float(t.value) for t in group if t.state == "COMPLETE" and t.value is not None]
        if len(complete) >= 3:
            ax.boxplot(
                [complete],
                positions=[k],
                widths=0.5,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for t in group:
            if t.value is None:
                continue
            x = k + rng.uniform(-0.15, 0.15)
            colour = _FLAG_RED if t.flags else "#1f77b4"
            face = colour if t.state == "COMPLETE" else "none"
            ax.scatter([x], [t.value], s=40, facecolors=face, edgecolors=colour, zorder=3)
            if t.flags:
                ax.annotate(
                    f"#{t.number}",
                    (x, t.value),
                    textcoords="offset points",
                    xytext=(5, 3),
                    color=_FLAG_RED,
                    fontsize=8,
                )
    ax.set_xticks(range(len(combos)))
    ax.set_xticklabels(combos, fontsize=8)
    ax.set_ylabel("val mIoU")
    ax.set_title("val mIoU by BatchNorm switches")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(
        handles=[
            Line2D([], [], marker="o", color="#1f77b4", ls="", label="complete"),
            Line2D([], [], marker="o", mfc="none", mec="#1f77b4", ls="", label="pruned"),
            Line2D([], [], marker="o", color=_FLAG_RED, ls="", label="flagged"),
        ],
        fontsize=8,
        loc="best",
    )
    _save(fig, path)
    return True


def plot_curves(
    curves: Mapping[int, Sequence[Mapping[str, Any]]],
    flags: Mapping[int, Sequence[str]],
    path: Path,
) -> bool:
    """val/mIoU per epoch of every trial: flagged trials red and labelled, the others grey."""
    drawn = {n: rows for n, rows in curves.items() if any("val/mIoU" in r for r in rows)}
    if not drawn:
        return False
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    # flagged ones last, so they lie on top of the grey crowd
    for number in sorted(drawn, key=lambda n: (bool(flags.get(n)), n)):
        rows = [r for r in drawn[number] if "val/mIoU" in r]
        xs = [int(r.get("epoch", k + 1)) for k, r in enumerate(rows)]
        ys = [float(r["val/mIoU"]) for r in rows]
        if flags.get(number):
            ax.plot(xs, ys, "-o", color=_FLAG_RED, lw=1.8, ms=3, zorder=3)
            ax.annotate(
                f"#{number} {flag_families(flags[number])}",
                (xs[-1], ys[-1]),
                textcoords="offset points",
                xytext=(4, 0),
                color=_FLAG_RED,
                fontsize=7,
            )
        else:
            ax.plot(xs, ys, "-", color="#9a9a9a", lw=1.2, alpha=0.8, zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mIoU")
    ax.set_title("learning curves (red: flagged, grey: the others)")
    ax.grid(alpha=0.3)
    ax.legend(
        handles=[
            Line2D([], [], color="#9a9a9a", label="unflagged trial"),
            Line2D([], [], color=_FLAG_RED, marker="o", ms=3, label="flagged trial"),
        ],
        fontsize=8,
        loc="best",
    )
    _save(fig, path)
    return True


def flag_families(flags: Sequence[str]) -> str:
    """``audit:missing:fcn, audit:missing:decoder, never-updated:fcn`` -> ``audit, never-updated``:
    a chart label stays short; the flag table has every flag in full."""
    families: list[str] = []
    for f in flags:
        family = f if f.startswith("outlier") else f.split(":", 1)[0]
        if family not in families:
            families.append(family)
    return ", ".join(families)


def plot_per_class(per_class: Mapping[str, float], path: Path, title: str) -> None:
    names = list(per_class)
    values = [float(per_class[n]) for n in names]
    fig = Figure(figsize=(6.5, 0.35 * len(names) + 1.4))
    ax = fig.add_subplot()
    shown = [0.0 if math.isnan(v) else v for v in values]
    ax.barh(range(len(names)), shown, color="#1f77b4")
    for k, v in enumerate(values):
        ax.text(
            0 if math.isnan(v) else v,
            k,
            " n/a" if math.isnan(v) else f" {v:.3f}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()  # class 0 (background) on top
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("IoU at the best epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


# --- predicted masks of the best trial ---------------------------------------------------------


@dataclass(frozen=True)
class MaskSet:
    images: np.ndarray  # [K,S,S,3] uint8
    truth: np.ndarray  # [K,S,S] class ids (255 ignore)
    pred: np.ndarray  # [K,S,S] class ids
    class_names: list[str]
    captions: list[str]


def predict_best_masks(info: TrialInfo) -> MaskSet | str:
    """Rebuild the best trial's model from its config, load its ``best.pt`` and predict the
    trainer's fixed val images (the W&B mask panel's). A sentence when a piece is missing."""
    if not info.config:
        return f"Trial {info.number} recorded no config: its masks cannot be predicted."
    if info.run_dir is None or not info.run_dir.is_dir():
        return (
            f"The run folder of trial {info.number} ({info.run_dir}) is missing: "
            "no predicted masks."
        )
    ckpt = info.run_dir / "best.pt"
    if not ckpt.is_file():
        return (
            f"Trial {info.number} has no best.pt in {info.run_dir} (checkpointing off, or "
            "the file was deleted): no predicted masks."
        )
    import torch

    from harness.config import config_from_dict
    from harness.models import build_model
    from harness.tracking import MaskPanel
    from harness.train import load_data

    try:
        cfg = config_from_dict(info.config)
        # the checkpoint holds every weight: no pretrained download or weights file needed
        model_cfg = dataclasses.replace(cfg.model, pretrained=False, weights_path=None)
        bundle = load_data(cfg)
        model = build_model(model_cfg, len(bundle.class_names), progress=False)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        # the trainer's panel size, so these are the very images W&B shows per epoch
        k = cfg.tracking.media_images if cfg.tracking.media_images > 0 else 4
        panel = MaskPanel.build(
            bundle.val, bundle.class_names, bundle.ignore_index, k, cfg.train.batch_size
        )
        if panel is None:
            return "The val split is empty: no predicted masks."
        pred = panel.predict(model, torch.device("cpu"))
    except (HarnessError, OSError, RuntimeError, KeyError, ValueError) as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return f"The masks of trial {info.number} cannot be predicted ({text})."
    epoch = state.get("epoch", "?")
    captions = [
        f"val #{i} (image id {d}), best.pt of epoch {epoch}"
        for i, d in zip(panel.indices, panel.image_ids, strict=True)
    ]
    return MaskSet(panel.images, panel.truth, pred, list(bundle.class_names), captions)


def plot_masks(masks: MaskSet, path: Path) -> None:
    """image | ground truth | prediction per row, coloured as the trainer's local mask panels,
    with a class legend (white: ignored pixels)."""
    from harness.tracking import mask_palette

    n = len(masks.class_names)
    colours = mask_palette(n)
    rows = len(masks.images)
    fig = Figure(figsize=(7.5, 2.3 * rows + 0.9))
    for r in range(rows):
        panels = (masks.images[r], colours[masks.truth[r]], colours[masks.pred[r]])
        for c, (img, title) in enumerate(
            zip(panels, ("image", "ground truth", "prediction"), strict=True)
        ):
            ax = fig.add_subplot(rows, 3, 3 * r + c + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=10)
            if c == 0:
                ax.set_ylabel(masks.captions[r].split(",")[0], fontsize=8)
    present = sorted({int(v) for v in np.unique(np.concatenate([masks.truth, masks.pred]))})
    handles = [
        Patch(
            facecolor=colours[k] / 255,
            edgecolor="black",
            lw=0.5,
            label=masks.class_names[k] if k < n else "ignore",
        )
        for k in (*range(n), *(v for v in present if v >= n))
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(4, len(handles)),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.subplots_adjust(bottom=0.9 / (2.3 * rows + 0.9) + 0.02, hspace=0.15, wspace=0.05)
    _save(fig, path)


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666} .note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} tr.flagged td{background:#fff0f0}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
.flag{color:#b00;font-weight:600}
"""

# Records errors and checks every image decoded; a headless browser reads body[data-render].
_RENDER_CHECK = """
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t.tagName
      ? "cannot load " + t.tagName.toLowerCase() + (t.alt ? " (" + t.alt + ")" : "")
      : String(e.message));
  }, true);
  window.addEventListener("load", function () {
    var imgs = document.images;
    for (var i = 0; i < imgs.length; i++) {
      if (!imgs[i].complete || imgs[i].naturalWidth === 0) {
        errors.push("image not decoded: " + (imgs[i].alt || i));
      }
    }
    document.body.setAttribute("data-render", errors.length ? "error: " + errors.join("; ") : "ok");
  });
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def _value(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _flag_table(infos: Sequence[TrialInfo]) -> str:
    flagged = [t for t in infos if t.flags]
    if not flagged:
        return (
            "<p>No trial is flagged: no check (audit, update monitor, learning check, "
            "study-level outliers) found anything.</p>"
        )
    rows = []
    for t in flagged:
        evidence = "<br>".join(
            f'<span class="flag">{_e(f)}</span>: {_e(t.evidence.get(f) or "(none recorded)")}'
            for f in t.flags
        )
        rows.append(
            f'<tr class="flagged"><td>{t.number}</td><td>{_e(t.state.lower())}</td>'
            f"<td>{_e(_params_text(t.params))}</td><td>{_value(t.value)}</td>"
            f"<td>{_e(', '.join(t.flags))}</td><td>{evidence}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("trial", "state", "params", "val mIoU", "flags", "evidence")
    )
    return f'<table id="flag-table"><tr>{head}</tr>{"".join(rows)}</table>'


def _trials_table(infos: Sequence[TrialInfo]) -> str:
    names = param_names(infos)
    head = "".join(f"<th>{_e(h)}</th>" for h in ("#", "state", *names, "val mIoU", "flags", "note"))
    rows = []
    for t in infos:
        cls = ' class="flagged"' if t.flags else ""
        cells = [
            str(t.number),
            t.state.lower(),
            *[_fmt(t.params.get(n)) for n in names],
            _value(t.value),
            ", ".join(t.flags),
            t.reason[:80],
        ]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _per_class_table(per_class: Mapping[str, float]) -> str:
    rows = "".join(
        f"<tr><td>{k}</td><td>{_e(n)}</td><td>{'n/a' if math.isnan(v) else f'{v:.4f}'}</td></tr>"
        for k, (n, v) in enumerate((n, float(v)) for n, v in per_class.items())
    )
    return f"<table><tr><th>id</th><th>class</th><th>IoU</th></tr>{rows}</table>"


def default_dest(study: str, out: Path) -> Path:
    return out / study / REPORT_DIR


def write_report(
    study: str,
    *,
    out: Path = Path("runs"),
    storage: str | None = None,
    dest: Path | None = None,
) -> Path:
    """Load the study, draw every chart into ``dest`` (default ``<out>/<study>/report``) and write
    ``report.html`` there; returns its path. Unknown study: HarnessError (exit 2 in the CLI)."""
    from harness.sweep import BEST_FILE, STUDY_DB, best_trial, counts, load_study, mask_url
    from harness.sweep import trials_of as _trials_of

    study_obj = load_study(study, out=str(out), storage=storage)
    trials = _trials_of(study_obj)
    dest = dest if dest is not None else default_dest(study, out)
    if dest.exists() and not dest.is_dir():
        raise ReportError(f"--dest {dest}: not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    paths = {k: dest / v for k, v in PNGS.items()}
    for stale in paths.values():  # a rerun may not draw every chart: drop the old ones
        stale.unlink(missing_ok=True)

    infos = trial_infos(trials, study=study, out=out)
    names = param_names(infos)
    best_raw = best_trial(trials)
    best = next((t for t in infos if best_raw is not None and t.number == best_raw.number), None)
    where = mask_url(storage) if storage else str(out / study / STUDY_DB)
    sections = [_header(study, where, infos, counts(trials), best, out / study / BEST_FILE)]

    if infos:
        plot_history(infos, paths["history"])
        body = _img(paths["history"], "optimisation history")
    else:
        body = _note("The study has no trials yet.")
    sections.append(_section("history", "Optimisation history", body))

    if plot_parallel(infos, names, paths["parallel"]):
        body = _img(paths["parallel"], "parallel coordinates")
    else:
        body = _note("No complete or pruned trial with a val mIoU yet: nothing to draw.")
    sections.append(_section("parallel", "Parallel coordinates", body))

    imp = param_importances(study_obj, infos)
    if isinstance(imp, str):
        body = _note(imp)
    else:
        plot_importances(imp, paths["importance"])
        body = _img(paths["importance"], "parameter importances")
    sections.append(_section("importance", "Parameter importances", body))

    switches = bn_names(names)
    if not switches:
        body = _note("No BatchNorm switch (encoder_bn, fcn_bn, decoder_bn) is swept in this study.")
    elif plot_bn(infos, switches, paths["bn"]):
        body = _img(paths["bn"], "val mIoU by BN switches")
    else:
        body = _note("No complete or pruned trial with a val mIoU yet: nothing to draw.")
    sections.append(_section("bn", "val mIoU by BatchNorm switches", body))

    sections.append(_section("curves", "Learning curves", _curves(infos, paths["curves"])))
    sections.append(
        _section(
            "flags",
            "Flagged trials and evidence",
            "<p>Flags of every layer: the param-group audit (<code>audit:*</code>), the update "
            "monitor (<code>never-updated:*</code>), the learning check (<code>no-learning</code>)"
            ", the mask pairing check (<code>masks-misaligned</code>) and the study-level "
            "detector (<code>outlier:low-miou</code>, recomputed from the "
            "study as it is now). The best config never comes from a flagged trial.</p>"
            + _flag_table(infos),
        )
    )
    sections.append(
        _section(
            "per-class", "Per-class IoU of the best trial", _per_class(best, paths["per_class"])
        )
    )
    sections.append(
        _section("masks", "Predicted masks of the best trial", _masks(best, paths["masks"]))
    )
    sections.append(_section("trials", "All trials", _trials_table(infos)))

    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>harness report: {_e(study)}</title><style>{_CSS}</style>"
        f"<script>{_RENDER_CHECK}</script></head><body data-render='pending'>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    path = dest / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _header(
    study: str,
    where: str,
    infos: Sequence[TrialInfo],
    state_counts: Mapping[str, int],
    best: TrialInfo | None,
    best_file: Path,
) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in state_counts.items() if n)
    n_flagged = sum(1 for t in infos if t.flags)
    parts = [
        f"<h1>harness report: {_e(study)}</h1>",
        f"<p class='sub'>storage <code>{_e(where)}</code></p>",
        f"<p id='counts'>{len(infos)} trials: {_e(states or 'none')}; {n_flagged} flagged.</p>",
    ]
    if best is None:
        parts.append(_note("No best trial yet: no complete trial that no check flagged."))
    else:
        parts.append(
            f"<p id='best'>Best trial: <b>#{best.number}</b>, val mIoU "
            f"<b>{_value(best.value)}</b>; {_e(_params_text(best.params))}.</p>"
        )
        if best_file.is_file():
            parts.append(f"<p>Reproduce: <code>harness trial --config {_e(best_file)}</code></p>")
        else:
            parts.append(_note(f"{best_file} is missing; run the sweep again to rewrite it."))
    return "<header>" + "".join(parts) + "</header>"


def _curves(infos: Sequence[TrialInfo], path: Path) -> str:
    curves: dict[int, list[dict[str, Any]]] = {}
    missing = []
    for t in infos:
        rows = read_metrics(t.run_dir)
        if rows is None:
            if t.state in ("COMPLETE", "PRUNED"):  # failed/running ones may have none yet
                missing.append(t.number)
            continue
        curves[t.number] = rows
    notes = ""
    if missing:
        notes = _note(
            "No metrics.jsonl (run folder deleted or moved) for trial(s) "
            + ", ".join(f"#{n}" for n in missing)
            + ": not drawn."
        )
    if plot_curves(curves, {t.number: t.flags for t in infos}, path):
        return _img(path, "learning curves") + notes
    return _note("No trial has recorded an epoch yet: no learning curves.") + notes


def _per_class(best: TrialInfo | None, path: Path) -> str:
    if best is None:
        return _note("No best trial yet: no per-class IoU.")
    summary = read_summary(best.run_dir)
    per_class = (summary or {}).get("per_class_iou")
    if not isinstance(per_class, dict) or not per_class:
        return _note(
            f"No summary.json with per-class IoU for trial {best.number} in {best.run_dir} "
            "(run folder deleted or moved?)."
        )
    per_class = {str(k): float(v) if v is not None else math.nan for k, v in per_class.items()}
    epoch = (summary or {}).get("best_epoch")
    plot_per_class(per_class, path, f"per-class IoU: trial #{best.number}, best epoch {epoch}")
    return _img(path, "per-class IoU") + _per_class_table(per_class)


def _masks(best: TrialInfo | None, path: Path) -> str:
    if best is None:
        return _note("No best trial yet: no predicted masks.")
    masks = predict_best_masks(best)
    if isinstance(masks, str):
        return _note(masks)
    plot_masks(masks, path)
    return (
        f"<p>Trial #{best.number}'s best.pt on the trainer's fixed val images (the same ones "
        "as its W&amp;B mask panel): image | ground truth | prediction.</p>"
        + _img(path, "predicted masks")
    )
