"""The study report's charts, each drawn with matplotlib (Agg) into a PNG."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from harness.config.options import BN_SWITCHES, LOG_PARAMS, short_name
from harness.report.html import save_png
from harness.report.trials import TrialInfo, fmt_param, param_names

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


# --- charts ------------------------------------------------------------------------------------


def save_chart(fig: Figure, path: Path) -> None:
    save_png(fig, path, _DPI)


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
    save_chart(fig, path)


def _is_log(name: str, values: Sequence[float]) -> bool:
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
    cats = sorted({fmt_param(v) for v in values})
    where = {c: (k / (len(cats) - 1) if len(cats) > 1 else 0.5) for k, c in enumerate(cats)}
    return [where[fmt_param(v)] for v in values], [(where[c], c) for c in cats]


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
    save_chart(fig, path)
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
    varied = [n for n in param_names(done) if len({fmt_param(t.params.get(n)) for t in done}) > 1]
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
    save_chart(fig, path)


def bn_names(names: Sequence[str]) -> list[str]:
    """The swept BN switches, in model order (encoder, fcn, decoder)."""
    by_short = {short_name(n): n for n in names}
    return [by_short[s] for s in BN_SWITCHES if s in by_short]


def _combo(t: TrialInfo, switches: Sequence[str]) -> str:
    def mark(v: Any) -> str:
        return "on" if v is True else "off" if v is False else fmt_param(v)

    return "\n".join(
        f"{short_name(n).removesuffix('_bn')} {mark(t.params.get(n))}" for n in switches
    )


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
    save_chart(fig, path)
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
    save_chart(fig, path)
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
    save_chart(fig, path)
