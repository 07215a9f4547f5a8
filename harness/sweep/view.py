"""The study as the harness shows it: counts, flags (the trial's own plus the study-level verdict as
the study stands now), the best unflagged trial, the trial table and one line per finished trial.
All pure functions of the study's trials."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.checks.flags import OUTLIER_LOW, trial_level
from harness.checks.outliers import TrialOutcome, find_outliers
from harness.checks.traits import shared_traits
from harness.config.sweep import SweepSpec
from harness.sweep.attrs import attrs_of
from harness.sweep.objective import fmt_value, judged_params, outcome


def trials_of(study: Any) -> list[Any]:
    return list(study.get_trials(deepcopy=False))


def counts(trials: Sequence[Any]) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def done_count(trials: Sequence[Any]) -> int:
    """What counts towards ``n_trials``: finished and pruned trials (failed ones are redone)."""
    c = counts(trials)
    return c["COMPLETE"] + c["PRUNED"]


def study_outliers(trials: Sequence[Any]) -> dict[int, str]:
    """``outlier:low-miou`` evidence by trial number, from the study's finished trials as they
    are now (a pure function of them: recomputed, never stale, as the study grows)."""
    done = [outcome(t) for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return {key: o.evidence for key, o in find_outliers(done).items()}


def trial_flags(trial: Any, outliers: Mapping[int, str]) -> list[str]:
    """The trial's own flags (audit, monitor, learning check) plus the study-level one as the
    study stands now: the ``outlier:low-miou`` a trial recorded when it finished is replaced by
    the current verdict (``outliers``), since the flag is recomputed as the study grows."""
    flags = trial_level(attrs_of(trial).flags)
    if trial.number in outliers:
        flags.append(OUTLIER_LOW)
    return flags


def trial_evidence(trial: Any, outliers: Mapping[int, str]) -> dict[str, str]:
    """Flag -> evidence in plain words, for every flag ``trial_flags`` returns."""
    recorded = attrs_of(trial).evidence
    out: dict[str, str] = {}
    for flag in trial_flags(trial, outliers):
        if flag == OUTLIER_LOW:
            out[flag] = outliers[trial.number]
        else:
            out[flag] = str(recorded.get(flag, ""))
    return out


def best_trial(trials: Sequence[Any]) -> Any | None:
    """The best finished trial that no check flagged (study-level outliers included)."""
    outliers = study_outliers(trials)
    ok = [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and t.value is not None
        and not trial_flags(t, outliers)
        and attrs_of(t).config
    ]
    return max(ok, key=lambda t: (t.value, -t.number), default=None)


def record_outliers(study: Any, trials: Sequence[Any]) -> None:
    """The study-level flags as a study user attribute (a finished trial's own attributes can no
    longer be changed in Optuna): ``{"<number>": "mIoU 0.03, neighbours predict ..."}``."""
    outliers = study_outliers(trials)
    study.set_user_attr("outliers", {str(n): ev for n, ev in sorted(outliers.items())})


def flagged_traits(trials: Sequence[Any]) -> list[str]:
    """What the flagged finished trials share that few unflagged ones do, in sentences
    (``all 4 flagged trials have encoder_bn=True (2 of 20 unflagged do)``): how a bug that hits
    one code path shows itself. Empty below two flagged trials."""
    outliers = study_outliers(trials)
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    flagged = {t.number for t in done if trial_flags(t, outliers)}
    records = [TrialOutcome(t.number, judged_params(t.params), float(t.value)) for t in done]
    return shared_traits(flagged, records)


def used_cuda(trials: Sequence[Any]) -> bool:
    """Some trial trained on a GPU: the trial table then has a ``device`` column."""
    return any(attrs_of(t).device.startswith("cuda") for t in trials)


def trial_rows(
    trials: Sequence[Any], param_names: Sequence[str], *, device: bool = False
) -> list[list[Any]]:
    """One row per trial; ``device`` adds its device (after the epochs) for CUDA studies."""
    outliers = study_outliers(trials)
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = attrs_of(t)
        value = t.value if t.state.name == "COMPLETE" else ua.best_miou
        note = ua.reason or t.system_attrs.get("fail_reason") or ""
        retry = t.system_attrs.get("failed_trial")
        if retry is not None:
            note = f"retry of {retry}" + (f"; {note}" if note else "")
        rows.append(
            [
                t.number,
                t.state.name.lower(),
                *[fmt_value(t.params.get(n, "")) for n in param_names],
                "" if value is None else f"{value:.4f}",
                ua.epochs_run if "epochs_run" in t.user_attrs else "",
                *([ua.device] if device else []),
                ",".join(trial_flags(t, outliers)),
                ua.wandb,
                str(note)[:80],
            ]
        )
    return rows


def trial_table(trials: Sequence[Any], title: str = "trials") -> Any:
    from rich.table import Table

    names: list[str] = []
    for t in trials:
        for n in t.params:
            if n not in names:
                names.append(n)
    table = Table(title=title)
    device = used_cuda(trials)
    columns = ["#", "state", *names, "val/mIoU", "epochs", *(["device"] if device else [])]
    for col in [*columns, "flags", "W&B run", "note"]:
        table.add_column(col, overflow="fold")
    for row in trial_rows(trials, names, device=device):
        table.add_row(*[str(c) for c in row])
    return table


def evidence_lines(trials: Sequence[Any]) -> list[str]:
    """One line per flag of every trial, with its evidence: what the table's flags column means."""
    outliers = study_outliers(trials)
    return [
        f"trial {t.number}: {flag}: {text}" if text else f"trial {t.number}: {flag}"
        for t in sorted(trials, key=lambda t: t.number)
        for flag, text in trial_evidence(t, outliers).items()
    ]


def progress_line(spec: SweepSpec, trials: Sequence[Any], trial: Any) -> str:
    """The sweep's one line per trial: how it ended, its parameters, its flags, the best so far.

    ``trial 3 complete val/mIoU 0.1811 after 8 epochs | lr=0.0019 f_lr=0.00015 ... |
    flags: no-learning | best 0.1923 (trial 1) | 4/12 done``
    """
    best = best_trial(trials)
    ua = attrs_of(trial)
    state = trial.state.name.lower()
    value = trial.value if state == "complete" else ua.best_miou
    what = f"trial {trial.number} {state}"
    if value is not None:
        what += f" {spec.metric} {value:.4f}"
    if ua.epochs_run:
        what += f" after {ua.epochs_run} epochs"
    why = ua.reason or trial.system_attrs.get("fail_reason")
    if state != "complete" and why:
        what += f" ({why})"
    parts = [what]
    if trial.params:
        parts.append(" ".join(f"{k}={fmt_value(v)}" for k, v in trial.params.items()))
    flags = trial_flags(trial, study_outliers(trials))
    if flags:
        parts.append("flags: " + ",".join(flags))
    parts.append(f"best {best.value:.4f} (trial {best.number})" if best else "no best yet")
    parts.append(f"{done_count(trials)}/{spec.n_trials} done")
    return " | ".join(parts)
