"""Study-level outliers: a trial that ended far below what the study says it should reach.

Two detectors, both pure functions of the finished trials.

``find_outliers`` (v2, what the sweep uses) takes one ``TrialOutcome`` per finished trial: its
parameters and val mIoU, and where known its majority-class level (``val/majority_mIoU``) and its
training-loss curve. Bugs only ever make a trial worse, so it is built to see a bug that hits many
trials, not just a rare one:

- the healthy level of a trial is the upper quartile of its k nearest neighbours' mIoU (not their
  median): neighbours that share the bug sit below it and cannot pull it down until they are the
  majority of the neighbourhood;
- the distance weighs each yes/no or categorical parameter by how much it splits the study's
  mIoU (``decoder_bn`` that separates stuck trials from learning ones counts several times a
  parameter that changes nothing), so a stuck region is judged by its own trials;
- the noise scale is the MAD of the residuals of the trials that are not themselves suspect
  (iterated trimming), so a second mode of broken trials cannot inflate it;
- anchor: a trial that ends below the no-learning level (predicting the majority class
  everywhere) while several trials of the study learn is suspect whatever its neighbours do
  (while one does, when its own training loss stayed flat too);
- a trial that ends *at* the no-learning level while several trials learn is suspect when no
  parameter explains it: every simple region of the parameters around it (its value of a
  switch, two such values, the lr at or beyond its own) holds a trial that learns. A DeconvNet
  without decoder BN is stuck, but so is every trial with ``decoder_bn=False``; a frozen decoder
  is stuck among trials like it that learn (the seed-30 bug demo: 5 such trials at 0.0854-0.0861
  while 7 correct ones reached 0.13-0.17). When the only trials that share its values are
  broken in another way (far below the level: seed 13's encoder-only trials shared a frozen
  decoder's encoder_bn value), its val loss decides: a model that learned anything from its
  images ends below the val loss of predicting the class frequencies everywhere
  (``val/prior_loss``), even while it still predicts the majority class; a decoder that never
  trained ends above it;
- training loss: a model whose decoder never moves cannot fit its own training set, whatever the
  lr. A trial whose last training loss sits far above its neighbours' is flagged on a smaller
  mIoU drop than one with the mIoU alone;
- a trial whose training loss rose back up (gave back half of what it had gained) diverged: its
  lr is too high, a hyperparameter's fault that the curve explains, so it is never flagged.

The previous detector, ``low_miou_outliers`` (v1: leave-one-out, the median of the k=5 nearest
neighbours), lives on in ``harness.bench.outliers`` as the yardstick of ``harness bench --only
outliers``.

Distances (v2, and v1 through ``encode_params``): each numeric parameter scaled to [0, 1] over
the study, log-scaled first when it is in ``LOG_PARAMS`` or spans more than a factor 20 with
positive values; booleans 0/1; other categoricals 0 when equal, 1 when not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.config.options import LOG_PARAMS


@dataclass(frozen=True)
class Outlier:
    key: Any  # the trial's id (the Optuna trial number in a sweep)
    miou: float
    predicted: float
    scale: float
    notes: tuple[str, ...] = ()  # further evidence in plain words (v2: anchor, training loss)

    @property
    def evidence(self) -> str:
        text = f"mIoU {self.miou:.2f}, neighbours predict {self.predicted:.2f} +- {self.scale:.2f}"
        return "; ".join((text, *self.notes))


def encode_params(
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


# --- v2 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    """One finished trial as ``find_outliers`` sees it. Only number, params and value are needed;
    the rest sharpens the verdict when the sweep knows it."""

    number: Any  # the trial's id (the Optuna trial number in a sweep)
    params: Mapping[str, Any]  # the sampled hyperparameters (no injected bug)
    value: float  # the objective: the trial's best val mIoU
    majority_miou: float | None = None  # val/majority_mIoU: predicting the majority class
    train_loss: tuple[float, ...] = ()  # train/loss of each epoch, in order
    val_loss: tuple[float, ...] = ()  # val/loss of each epoch, in order
    prior_loss: float | None = None  # val/prior_loss: predicting the class frequencies


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[float, ...]:
    return tuple(
        float(r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    )


def outcome_of(
    number: Any,
    params: Mapping[str, Any],
    value: float,
    rows: Sequence[Mapping[str, Any]] = (),
    *,
    majority_miou: float | None = None,
    prior_loss: float | None = None,
    train_loss: Sequence[float] | None = None,
    val_loss: Sequence[float] | None = None,
) -> TrialOutcome:
    """Adapter for the sweep: a ``TrialOutcome`` from a trial's metrics rows (``metrics.jsonl``,
    ``fit``'s history or what a callback saw; each row may hold ``train/loss``, ``val/loss``,
    ``val/majority_mIoU`` and ``val/prior_loss``), or from the same recorded elsewhere (the
    trial's user attributes), which take precedence."""
    levels = _series(rows, "val/majority_mIoU")
    priors = _series(rows, "val/prior_loss")
    if majority_miou is None and levels:
        majority_miou = levels[-1]
    if prior_loss is None and priors:
        prior_loss = priors[-1]
    return TrialOutcome(
        number,
        dict(params),
        float(value),
        majority_miou,
        _series(rows, "train/loss") if train_loss is None else tuple(map(float, train_loss)),
        _series(rows, "val/loss") if val_loss is None else tuple(map(float, val_loss)),
        prior_loss,
    )


def _columns(trials: Sequence[TrialOutcome]) -> list[tuple[str, list[Any], np.ndarray]]:
    """Per parameter: its name, raw values and encoded columns (n x c, as in ``encode_params``;
    a categorical that is not yes/no becomes one column per choice, scaled so that two different
    choices are at distance 1)."""
    names = sorted({name for t in trials for name in t.params})
    per_trial = encode_params([(t.number, t.params, t.value) for t in trials])
    out = []
    for j, name in enumerate(names):
        coded = [row[j][1] for row in per_trial]
        if per_trial[0][j][0] == "num":
            cols = np.array([[float(v)] for v in coded])
        else:
            choices = sorted({str(v) for v in coded})
            cols = np.array([[float(str(v) == c) for c in choices] for v in coded])
            cols /= math.sqrt(2)
        out.append((name, [t.params.get(name) for t in trials], cols))
    return out


def is_numeric(raw: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw if v is not None)


def _groups(raw: Sequence[Any]) -> list[np.ndarray]:
    """Index sets of a parameter's groups: each choice of a yes/no or categorical parameter; for
    a number, the lower, middle and upper third of its (log-scaled) values."""
    if not is_numeric(raw):
        keys = [str(v) for v in raw]
        return [np.flatnonzero([k == g for k in keys]) for g in sorted(set(keys))]
    order = np.argsort([math.inf if v is None else float(v) for v in raw], kind="stable")
    return [chunk for chunk in np.array_split(order, 3) if chunk.size]


def _weighted_distances(
    trials: Sequence[TrialOutcome], values: np.ndarray, upper: float, relevance: float
) -> np.ndarray:
    """n x n distances, the diagonal infinite (leave-one-out). A parameter counts
    ``1 + relevance * min(1, effect / spread)`` times, where effect is how far the upper quartiles
    of its groups' mIoU (see ``_groups``) lie apart and spread the study's 10-90% range: a
    parameter that splits the study into stuck and learning trials dominates the distance, one
    that changes nothing counts once."""
    spread = max(float(np.quantile(values, 0.9) - np.quantile(values, 0.1)), 0.01)
    blocks = []
    for _, raw, cols in _columns(trials):
        levels = [float(np.quantile(values[g], upper)) for g in _groups(raw) if g.size >= 2]
        effect = max(levels) - min(levels) if len(levels) >= 2 else 0.0
        blocks.append(cols * (1.0 + relevance * min(1.0, effect / spread)))
    x = np.hstack(blocks) if blocks else np.zeros((len(trials), 1))
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(dist, np.inf)
    return dist


def _stuck(values: np.ndarray, majority: np.ndarray, tol: float = 2e-3) -> np.ndarray:
    """Trials at a no-learning level: within ``tol`` of the known majority-class level (a model
    predicting the majority class almost everywhere: the zero-lr, frozen-decoder and
    shuffled-masks trials of the seed-30 bug demo ended 0.0001-0.0007 above it), or else a value
    that 2 or more trials hit exactly (a model predicting one class everywhere scores the same to
    the last digit). Being stuck is usually a parameter's doing (a DeconvNet without decoder BN),
    so these trials are not judged against learning neighbours: by the anchor, and by whether a
    parameter explains them (``_explained``)."""
    if np.isfinite(majority).any():
        return np.abs(values - majority) <= tol
    rounded, counts = np.unique(np.round(values, 6), return_counts=True)
    tied = rounded[counts >= 2]
    return np.isin(np.round(values, 6), tied)


def _regions(trials: Sequence[TrialOutcome]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The simple regions of the parameter space around each trial, as n x n masks (row i: the
    trials in trial i's region). First the values: for each yes/no or categorical parameter the
    trials with the same value. Then the regions fitted to the trial: for each pair of such
    parameters the trials with both values, and for each number the trials at or below it and
    those at or above it (a range open on one side that ends at the trial)."""
    same, fitted = [], []
    for name in sorted({name for t in trials for name in t.params}):
        raw = [t.params.get(name) for t in trials]
        if is_numeric(raw):
            x = np.array([math.nan if v is None else float(v) for v in raw])
            fitted += [x[None, :] <= x[:, None], x[None, :] >= x[:, None]]
        else:
            keys = np.array([str(v) for v in raw])
            same.append(keys[None, :] == keys[:, None])
    fitted += [a & b for i, a in enumerate(same) for b in same[i + 1 :]]
    return same, fitted


def _explained(
    trials: Sequence[TrialOutcome], idle: np.ndarray, least: int, among: np.ndarray | None = None
) -> np.ndarray:
    """Per trial: a parameter can explain why it did not learn (``idle``): some simple region
    around it (``_regions``) holds at least ``least`` trials and none of them learns. A value
    first (``decoder_bn=False``: every trial with it stuck); then a pair of values or a range,
    among the trials no value explains: a range that ends at the trial, or a pair that splits
    the study four ways, is small, and in a study where half the trials are stuck for one
    reason it would often hold nothing but stuck trials by chance. A trial whose every region
    holds a trial that learns is not explained by its parameters: a bug is. ``among``: only
    these trials make up the regions (default: all)."""
    same, fitted = _regions(trials)
    among = np.ones(len(trials), dtype=bool) if among is None else among

    def found(regions: list[np.ndarray], among: np.ndarray) -> np.ndarray:
        out = np.zeros(len(trials), dtype=bool)
        for region in regions:
            region = region & among[None, :]
            out |= (region.sum(axis=1) >= least) & ~(region & ~idle[None, :]).any(axis=1)
        return out

    by_value = found(same, among)
    return by_value | found(fitted, among & ~by_value)


def _trimmed_centre_scale(
    residuals: np.ndarray, z: float, rounds: int = 4, least: int = 3
) -> tuple[float, float]:
    """Median and MAD (x 1.4826) of the finite residuals, recomputed without the ones more than
    ``z`` scales below the centre (the suspects), a few times: a mode of broken trials cannot
    inflate the noise scale that is meant to judge them. Residuals below the centre are bad.
    Fewer than ``least`` residuals left: (0, 0), no shift and the caller's floor as the scale."""
    keep = np.isfinite(residuals)
    centre, scale = 0.0, 0.0
    for _ in range(rounds):
        kept = residuals[keep]
        if kept.size < least:
            return 0.0, 0.0
        centre = float(np.median(kept))
        scale = 1.4826 * float(np.median(np.abs(kept - centre)))
        keep = np.isfinite(residuals) & (residuals >= centre - z * max(scale, 1e-12))
    return centre, scale


def _blank(trials: Sequence[TrialOutcome], margin: float) -> np.ndarray:
    """Per trial: its last val loss is known and more than ``margin`` (relative) above its
    ``prior_loss``, the val loss of predicting the class frequencies everywhere: it did worse
    than a model that ignores its images. One that learned anything ends below that, even while
    it still predicts the majority class: DeconvNets without decoder BN on the built-in data
    (8 epochs, lr 1e-3..6e-3) ended at 0.70-0.90 against 0.93, while the seed-30 bug demo's
    frozen and zero-lr decoders ended at 1.01-1.15 (its shuffled masks at 0.915, at the
    level)."""
    out = np.zeros(len(trials), dtype=bool)
    for i, t in enumerate(trials):
        if t.val_loss and t.prior_loss is not None and math.isfinite(t.prior_loss):
            out[i] = t.val_loss[-1] > (1 + margin) * t.prior_loss
    return out


def _diverged(loss: Sequence[float]) -> bool:
    """The training loss gave back more than half of what it had gained, and ended at least 20%
    above its lowest: the lr is too high (divergence), not a silent bug."""
    if len(loss) < 3:
        return False
    first, low, last = loss[0], min(loss), loss[-1]
    return last - low > max(0.5 * (first - low), 0.2 * low)


@dataclass(frozen=True)
class _LossWitness:
    """What the training-loss curves say, per trial (arrays over the judged trials)."""

    bad: np.ndarray  # it could not fit its training set as its neighbours did
    last: np.ndarray  # its last training loss (nan: unknown)
    expected: np.ndarray  # the last loss its neighbours predict
    flat: np.ndarray  # it fell less than 15% from its first epoch: it learned nothing
    diverged: np.ndarray  # it rose back up (``_diverged``): the lr's fault


def _loss_witness(
    done: Sequence[TrialOutcome],
    nbrs: np.ndarray,
    upper: float,
    z: float,
    z_loss: float,
    least: int,
) -> _LossWitness:
    """A trial's last training loss against its neighbours' lower quartile (what a healthy trial
    like it reaches): ``bad`` when it is more than ``z_loss`` noise scales and 20% above it and
    fell less than half as far from its first epoch as its neighbours typically did (a slow
    healthy trial, at a low lr, still gets a good part of the way). Fewer than ``least`` trials
    with a loss curve: nothing is ``bad``."""
    n = len(done)
    last = np.array([t.train_loss[-1] if t.train_loss else math.nan for t in done])
    first = np.array([t.train_loss[0] if t.train_loss else math.nan for t in done])
    diverged = np.array([_diverged(t.train_loss) for t in done])
    flat = np.nan_to_num(last > 0.85 * first).astype(bool)
    bad = np.zeros(n, dtype=bool)
    expected = np.full(n, math.nan)
    if np.isfinite(last).sum() < least:
        return _LossWitness(bad, last, expected, flat, diverged)
    near = last[nbrs]
    has = np.isfinite(near).any(axis=1)
    expected[has] = np.nanquantile(near[has], 1 - upper, axis=1)
    centre, scale = _trimmed_centre_scale(expected - last, z)
    scale = max(scale, 0.02 * float(np.nanmedian(last)), 1e-6)
    expected = expected - centre
    fell = first - last
    near_fell = np.where(np.isfinite(fell[nbrs]), fell[nbrs], -np.inf)
    typical = np.quantile(near_fell, upper, axis=1)
    bad = (
        np.nan_to_num(last - expected > z_loss * scale)
        & np.nan_to_num(last > 1.2 * expected)
        & np.nan_to_num(fell < 0.5 * typical)
    )
    return _LossWitness(bad.astype(bool), last, expected, flat, diverged)


# long: thirteen tunable thresholds and a docstring of the four rules; the rules share the
# neighbour and noise arrays computed at the top
def find_outliers(
    trials: Sequence[TrialOutcome],
    *,
    k: int = 6,
    upper: float = 0.75,
    relevance: float = 4.0,
    z: float = 4.0,
    min_drop: float = 0.05,
    z_loss: float = 3.5,
    loss_z_miou: float = 2.0,
    loss_min_drop: float = 0.025,
    anchor_margin: float = 0.01,
    learn_margin: float = 0.02,
    min_scale: float = 0.01,
    min_trials: int = 5,
    min_region: int = 2,
    prior_margin: float = 0.02,
) -> dict[Any, Outlier]:
    """The flagged trials by number (``outlier:low-miou``), each with its evidence. A trial is
    flagged, unless its training loss shows it diverged, when

    - neighbours: its mIoU is more than ``z`` noise scales (the study's, widened by its own
      uncertainty, and the spread of its unsuspected neighbours) and ``min_drop`` below the
      level its neighbours predict, or
    - training loss: more than ``loss_z_miou`` scales and ``loss_min_drop`` below it while its
      last training loss is more than ``z_loss`` scales and 20% above its neighbours' and fell
      less than half as far from the first epoch as theirs typically did, or
    - anchor: it ended more than ``anchor_margin`` below the majority-class level while at least
      2 trials (and a tenth of the study) beat that level by ``learn_margin``, or one does and
      its own training loss stayed flat (two witnesses), or
    - unexplained no-learning: it ended at the majority-class level (``_stuck``) while as many
      trials beat it, ``min_drop`` below the level its neighbours predict, and no parameter
      explains it: every simple region of the parameters around it (``_explained``;
      ``min_region`` trials at least) holds a trial that learns; or the only regions that
      explain it hold, besides it, trials below the level, and its last val loss ended more
      than ``prior_margin`` above the loss of predicting the class frequencies (``_blank``).

    Trials stuck at the no-learning level are judged by the last two rules only.

    Fewer than ``min_trials`` finished trials: nothing is judged (too few to say what is normal).
    """
    done = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    n = len(done)
    if n < min_trials:
        return {}
    values = np.array([t.value for t in done], dtype=float)
    majority = np.array([math.nan if t.majority_miou is None else t.majority_miou for t in done])
    if np.isfinite(majority).any():  # the trials share a val set: fill in the missing levels
        majority[np.isnan(majority)] = float(np.nanmedian(majority))
    stuck = _stuck(values, majority)
    dist = _weighted_distances(done, values, upper, relevance)
    nbrs = np.argsort(dist, axis=1, kind="stable")[:, : max(1, min(k, n - 1))]
    loss = _loss_witness(done, nbrs, upper, z, z_loss, min_trials)

    # anchor: the no-learning level, when the trials report it
    learner = values > majority + learn_margin
    learners = int(learner.sum())
    many = learners >= max(2, math.ceil(0.1 * n))
    below = values < majority - anchor_margin
    anchored = below & (many | ((learners >= 1) & loss.flat))
    suspect = stuck | loss.bad | anchored

    # healthy level: the neighbours' upper quartile, shifted by where healthy trials typically
    # sit relative to it (the centre of the residuals of the trials that are not suspect: stuck
    # trials' residuals are exact ties that say nothing about the noise, and a trial below the
    # no-learning level or that could not fit its training set must not set the scale judging it)
    predicted = np.quantile(values[nbrs], upper, axis=1)
    centre, scale = _trimmed_centre_scale(np.where(suspect, np.nan, values - predicted), z)
    scale = max(scale, min_scale)
    expected = predicted + centre
    drop = expected - values
    # at the no-learning level, unexplained, and as far below what learning neighbours reach as
    # the neighbour rule asks: a slow healthy trial that ends just above the level next to
    # trials that learned little (test-size studies) is not a bug
    explained = _explained(done, ~learner, min_region)
    # ... or explained only by trials broken in another way (seed 13 of the bug demo: a frozen
    # decoder whose encoder_bn value only encoder-only trials far below the level shared) while
    # its val loss says it learned nothing from its images (``_blank``). Its neighbours are
    # those broken trials, so the drop is measured from the learners' median instead
    by_peers = _explained(done, ~learner, min_region, among=~anchored)
    blank = _blank(done, prior_margin)
    learned = float(np.median(values[learner])) if learners else -math.inf
    idle = (
        stuck
        & many
        & ((~explained & (drop > min_drop)) | (~by_peers & blank & (learned - values > min_drop)))
    )

    # the mIoU alone must also be far below the spread of the trial's own unsuspected neighbours
    # (v1's local scale): a study-wide MAD from a dozen trials can come out low by chance
    clean = np.where(suspect[nbrs], np.nan, values[nbrs])
    enough = np.isfinite(clean).sum(axis=1) >= 3
    local = np.zeros(n)
    if enough.any():
        med = np.nanmedian(clean[enough], axis=1)
        local[enough] = 1.4826 * np.nanmedian(np.abs(clean[enough] - med[:, None]), axis=1)
    # and a MAD from m residuals is itself uncertain (about +-1.2/sqrt(m) relative): with no
    # second witness, the mIoU alone is judged on the scale widened by that much
    kept = int((~suspect).sum())
    wide = scale * (1 + 1.2 / math.sqrt(max(kept, 1)))
    by_neighbours = (drop > z * np.maximum(wide, local)) & (drop > min_drop) & ~stuck
    by_loss = loss.bad & (drop > loss_z_miou * scale) & (drop > loss_min_drop) & ~stuck
    out: dict[Any, Outlier] = {}
    for i in np.flatnonzero((by_neighbours | by_loss | anchored | idle) & ~loss.diverged):
        notes = []
        if anchored[i] or idle[i]:
            where = "below" if anchored[i] else "at"
            notes.append(
                f"{where} the majority-class level {majority[i]:.3f} that {learners} of {n} "
                "trials beat"
            )
        if idle[i] and not explained[i]:
            notes.append("no parameter explains it (trials that share its values learn)")
        elif idle[i]:
            notes.append(
                "only trials below the level share its values, so its neighbours say nothing "
                f"of it; the learning trials' median is {learned:.2f}"
            )
        if loss.bad[i]:
            notes.append(
                f"its training loss ended at {loss.last[i]:.2f} while neighbours reached "
                f"{loss.expected[i]:.2f}"
            )
        elif anchored[i] and not many:
            first = done[i].train_loss[0]
            notes.append(f"its training loss stayed at {loss.last[i]:.2f} (from {first:.2f})")
        t = done[i]
        if (idle[i] or anchored[i]) and blank[i]:
            notes.append(
                f"its val loss ended at {t.val_loss[-1]:.2f}, above the {t.prior_loss:.2f} of "
                "predicting the class frequencies everywhere: it learned nothing from its images"
            )
        out[t.number] = Outlier(t.number, t.value, float(expected[i]), scale, tuple(notes))
    return out
