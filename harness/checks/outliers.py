"""Study-level outliers: a trial whose val mIoU is far below what its neighbours predict.

A pure function over finished trials. For each trial, leave-one-out: take the k nearest other
trials in normalised parameter space (each numeric parameter scaled to [0, 1] over the study,
log-scaled first when it is a learning rate or spans more than a factor 20 with positive values;
booleans 0/1; other categoricals 0 when equal, 1 when not), predict its mIoU as the median of the
neighbours' mIoUs, and measure the neighbours' own spread as the MAD of their residuals around
that median (x 1.4826); the scale is the larger of that and the study-wide MAD of all
leave-one-out residuals, floored at ``min_scale``. A trial is flagged ``outlier:low-miou`` when it
falls below the prediction by more than ``z`` robust scales AND by more than ``min_drop`` in
absolute mIoU, so study noise does not raise flags. Median and MAD keep one broken neighbour from
dragging the prediction down: a planted low trial does not hide its twin.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.config.options import LOG_PARAMS


@dataclass(frozen=True)
class Outlier:
    key: Any  # the trial's id (the Optuna trial number in a sweep)
    miou: float
    predicted: float
    scale: float

    @property
    def evidence(self) -> str:
        return f"mIoU {self.miou:.2f}, neighbours predict {self.predicted:.2f} +- {self.scale:.2f}"


def _encode(
    trials: Sequence[tuple[Any, Mapping[str, Any], float]],
) -> list[list[tuple[str, float | str]]]:
    names = sorted({n for _, params, _ in trials for n in params})
    columns: dict[str, list[Any]] = {n: [p.get(n) for _, p, _ in trials] for n in names}
    encoded: list[list[tuple[str, float | str]]] = [[] for _ in trials]
    for name, values in columns.items():
        numeric = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values if v is not None
        )
        if all(isinstance(v, bool) for v in values if v is not None):
            col: list[float | str] = [float(v) if v is not None else 0.5 for v in values]
            kinds = "num"
        elif numeric:
            xs = [float(v) if v is not None else math.nan for v in values]
            finite = [x for x in xs if math.isfinite(x)]
            positive = finite and min(finite) > 0
            if positive and (name in LOG_PARAMS or max(finite) / min(finite) > 20):
                xs = [math.log10(x) if x > 0 else math.nan for x in xs]
                finite = [x for x in xs if math.isfinite(x)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            span = hi - lo or 1.0
            col = [(x - lo) / span if math.isfinite(x) else 0.5 for x in xs]
            kinds = "num"
        else:
            col = [str(v) for v in values]
            kinds = "cat"
        for i, v in enumerate(col):
            encoded[i].append((kinds, v))
    return encoded


def _distance(a: list[tuple[str, float | str]], b: list[tuple[str, float | str]]) -> float:
    total = 0.0
    for (kind, x), (_, y) in zip(a, b, strict=True):
        if kind == "num":
            total += (float(x) - float(y)) ** 2
        else:
            total += 0.0 if x == y else 1.0
    return math.sqrt(total)


def low_miou_outliers(
    trials: Sequence[tuple[Any, Mapping[str, Any], float]],
    *,
    k: int = 5,
    z: float = 3.5,
    min_drop: float = 0.05,
    min_scale: float = 0.01,
    min_trials: int = 5,
) -> dict[Any, Outlier]:
    """``trials``: (key, params, val mIoU) of finished trials. Returns the flagged ones by key.

    Fewer than ``min_trials`` trials: nothing is judged (too few to say what is normal).
    """
    trials = [t for t in trials if t[2] is not None and math.isfinite(t[2])]
    if len(trials) < min_trials:
        return {}
    encoded = _encode(trials)
    preds: list[tuple[float, float]] = []
    for i in range(len(trials)):
        others = sorted(
            (j for j in range(len(trials)) if j != i),
            key=lambda j: (_distance(encoded[i], encoded[j]), j),
        )[: max(1, min(k, len(trials) - 1))]
        values = [trials[j][2] for j in others]
        predicted = statistics.median(values)
        mad = statistics.median(abs(v - predicted) for v in values)
        preds.append((predicted, 1.4826 * mad))
    # the study's own noise: the MAD of all leave-one-out residuals (a few outliers cannot move it)
    residuals = [t[2] - p for t, (p, _) in zip(trials, preds, strict=True)]
    centre = statistics.median(residuals)
    study_scale = 1.4826 * statistics.median(abs(r - centre) for r in residuals)
    out: dict[Any, Outlier] = {}
    for (key, _, miou), (predicted, local) in zip(trials, preds, strict=True):
        scale = max(local, study_scale, min_scale)
        drop = predicted - miou
        if drop > z * scale and drop > min_drop:
            out[key] = Outlier(key, miou, predicted, scale)
    return out
