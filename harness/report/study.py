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

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.report.html import esc, inline_png, note, section
from harness.report.masks import plot_masks, predict_best_masks
from harness.report.plots import (
    bn_names,
    param_importances,
    plot_bn,
    plot_curves,
    plot_history,
    plot_importances,
    plot_parallel,
    plot_per_class,
)
from harness.report.trials import (
    TrialInfo,
    fmt_param,
    param_names,
    params_text,
    read_metrics,
    read_summary,
    trial_infos,
)
from harness.secrets import mask_url
from harness.sweep.best import BEST_FILE
from harness.sweep.storage import STUDY_DB
from harness.sweep.study import load_study
from harness.sweep.view import (
    best_trial,
    counts,
    flagged_traits,
    trials_of,
)

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


class ReportError(HarnessError):
    """The report cannot be written at all (e.g. the destination is not a folder)."""


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
            f'<span class="flag">{esc(f)}</span>: {esc(t.evidence.get(f) or "(none recorded)")}'
            for f in t.flags
        )
        rows.append(
            f'<tr class="flagged"><td>{t.number}</td><td>{esc(t.state.lower())}</td>'
            f"<td>{esc(params_text(t.params))}</td><td>{_value(t.value)}</td>"
            f"<td>{esc(', '.join(t.flags))}</td><td>{evidence}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("trial", "state", "params", "val mIoU", "flags", "evidence")
    )
    return f'<table id="flag-table"><tr>{head}</tr>{"".join(rows)}</table>'


def _traits(traits: Sequence[str]) -> str:
    """What the flagged trials share: where a bug that hits one code path shows itself."""
    if not traits:
        return ""
    items = "".join(f"<li>{esc(t)}</li>" for t in traits)
    return f'<p>What the flagged trials share:</p><ul id="flag-traits">{items}</ul>'


def _trials_table(infos: Sequence[TrialInfo]) -> str:
    names = param_names(infos)
    head = "".join(
        f"<th>{esc(h)}</th>" for h in ("#", "state", *names, "val mIoU", "flags", "note")
    )
    rows = []
    for t in infos:
        cls = ' class="flagged"' if t.flags else ""
        cells = [
            str(t.number),
            t.state.lower(),
            *[fmt_param(t.params.get(n)) for n in names],
            _value(t.value),
            ", ".join(t.flags),
            t.reason[:80],
        ]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _per_class_table(per_class: Mapping[str, float]) -> str:
    rows = "".join(
        f"<tr><td>{k}</td><td>{esc(n)}</td><td>{'n/a' if math.isnan(v) else f'{v:.4f}'}</td></tr>"
        for k, (n, v) in enumerate((n, float(v)) for n, v in per_class.items())
    )
    return f"<table><tr><th>id</th><th>class</th><th>IoU</th></tr>{rows}</table>"


def default_dest(study: str, out: Path) -> Path:
    return out / study / REPORT_DIR


# long: the page, section by section, in reading order
def write_report(
    study: str,
    *,
    out: Path = Path("runs"),
    storage: str | None = None,
    dest: Path | None = None,
    model: str | None = None,
) -> Path:
    """Load the study, draw every chart into ``dest`` (default ``<out>/<study>/report``) and write
    ``report.html`` there; returns its path. Unknown study: HarnessError (exit 2 in the CLI).
    ``model``: the user model factory the best trial trained, named by the user, so that its
    masks can be predicted (``harness.report.masks.predict_best_masks``)."""
    study_obj = load_study(study, out=str(out), storage=storage)
    trials = trials_of(study_obj)
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
        body = inline_png(paths["history"], "optimisation history")
    else:
        body = note("The study has no trials yet.")
    sections.append(section("history", "Optimisation history", body))

    if plot_parallel(infos, names, paths["parallel"]):
        body = inline_png(paths["parallel"], "parallel coordinates")
    else:
        body = note("No complete or pruned trial with a val mIoU yet: nothing to draw.")
    sections.append(section("parallel", "Parallel coordinates", body))

    imp = param_importances(study_obj, infos)
    if isinstance(imp, str):
        body = note(imp)
    else:
        plot_importances(imp, paths["importance"])
        body = inline_png(paths["importance"], "parameter importances")
    sections.append(section("importance", "Parameter importances", body))

    switches = bn_names(names)
    if not switches:
        body = note("No BatchNorm switch (encoder_bn, fcn_bn, decoder_bn) is swept in this study.")
    elif plot_bn(infos, switches, paths["bn"]):
        body = inline_png(paths["bn"], "val mIoU by BN switches")
    else:
        body = note("No complete or pruned trial with a val mIoU yet: nothing to draw.")
    sections.append(section("bn", "val mIoU by BatchNorm switches", body))

    sections.append(section("curves", "Learning curves", _curves(infos, paths["curves"])))
    sections.append(
        section(
            "flags",
            "Flagged trials and evidence",
            "<p>Flags of every layer: the param-group audit (<code>audit:*</code>), the update "
            "monitor (<code>never-updated:*</code>), the learning check (<code>no-learning</code>)"
            ", the mask pairing check (<code>masks-misaligned</code>) and the study-level "
            "detector (<code>outlier:low-miou</code>, recomputed from the "
            "study as it is now). The best config never comes from a flagged trial.</p>"
            + _flag_table(infos)
            + _traits(flagged_traits(trials)),
        )
    )
    sections.append(
        section(
            "per-class", "Per-class IoU of the best trial", _per_class(best, paths["per_class"])
        )
    )
    sections.append(
        section("masks", "Predicted masks of the best trial", _masks(best, paths["masks"], model))
    )
    sections.append(section("trials", "All trials", _trials_table(infos)))

    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>harness report: {esc(study)}</title><style>{_CSS}</style>"
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
        f"<h1>harness report: {esc(study)}</h1>",
        f"<p class='sub'>storage <code>{esc(where)}</code></p>",
        f"<p id='counts'>{len(infos)} trials: {esc(states or 'none')}; {n_flagged} flagged.</p>",
    ]
    if best is None:
        parts.append(note("No best trial yet: no complete trial that no check flagged."))
    else:
        parts.append(
            f"<p id='best'>Best trial: <b>#{best.number}</b>, val mIoU "
            f"<b>{_value(best.value)}</b>; {esc(params_text(best.params))}.</p>"
        )
        if best_file.is_file():
            parts.append(f"<p>Reproduce: <code>harness trial --config {esc(best_file)}</code></p>")
        else:
            parts.append(note(f"{best_file} is missing; run the sweep again to rewrite it."))
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
        notes = note(
            "No metrics.jsonl (run folder deleted or moved) for trial(s) "
            + ", ".join(f"#{n}" for n in missing)
            + ": not drawn."
        )
    if plot_curves(curves, {t.number: t.flags for t in infos}, path):
        return inline_png(path, "learning curves") + notes
    return note("No trial has recorded an epoch yet: no learning curves.") + notes


def _per_class(best: TrialInfo | None, path: Path) -> str:
    if best is None:
        return note("No best trial yet: no per-class IoU.")
    summary = read_summary(best.run_dir)
    per_class = (summary or {}).get("per_class_iou")
    if not isinstance(per_class, dict) or not per_class:
        return note(
            f"No summary.json with per-class IoU for trial {best.number} in {best.run_dir} "
            "(run folder deleted or moved?)."
        )
    per_class = {str(k): float(v) if v is not None else math.nan for k, v in per_class.items()}
    epoch = (summary or {}).get("best_epoch")
    plot_per_class(per_class, path, f"per-class IoU: trial #{best.number}, best epoch {epoch}")
    return inline_png(path, "per-class IoU") + _per_class_table(per_class)


def _masks(best: TrialInfo | None, path: Path, model: str | None) -> str:
    if best is None:
        return note("No best trial yet: no predicted masks.")
    masks = predict_best_masks(best, model)
    if isinstance(masks, str):
        return note(masks)
    plot_masks(masks, path)
    return (
        f"<p>Trial #{best.number}'s best.pt on the trainer's fixed val images (the same ones "
        "as its W&amp;B mask panel): image | ground truth | prediction.</p>"
        + inline_png(path, "predicted masks")
    )
