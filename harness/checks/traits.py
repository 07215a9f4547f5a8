"""Which flagged trials look alike: what the trials a study flagged share that few unflagged
ones do (a parameter value, a pair of values, a numeric range), said only when chance would
rarely give it. A bug in one code path hits every trial that takes it, so this is where a user
looks first. Shown in the sweep's end table, ``harness best --all``, the report and the study's
W&B run."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from harness.checks.outliers import TrialOutcome, is_numeric


def _number(x: float, up: bool) -> str:
    """2 significant digits, learning-rate style (7.1e-3, 0.25, 12), rounded up or down so that a
    printed bound still holds the value it was rounded from."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    exponent = math.floor(math.log10(abs(x))) - 1
    step = 10.0**exponent
    rounded = (math.ceil(x / step - 1e-9) if up else math.floor(x / step + 1e-9)) * step
    if abs(rounded) < 1e-2 or abs(rounded) >= 1e4:
        mantissa, power = f"{rounded:.1e}".split("e")
        return f"{mantissa}e{int(power)}"
    return f"{rounded:.{max(0, -exponent)}f}"


def shared_traits(
    flagged: Collection[Any],
    trials: Sequence[TrialOutcome],
    *,
    max_share: float = 0.25,
    alpha: float = 0.05,
) -> list[str]:
    """What the flagged trials have in common that few unflagged trials have: a parameter value
    (or pair of values) or a numeric range all of them share, held by at most ``max_share`` of
    the unflagged trials, best separating first. A bug in one code path hits every trial that
    takes it, so this is where to look. Nothing below 2 flagged trials or without unflagged ones.

    A trait is also said only when chance would rarely produce it: were the flagged trials
    drawn at random from the study, the odds that all of them fall among the trials holding it
    (``_chance``), times the number of traits looked at (``_family``), must be at most
    ``alpha``. Two flagged trials of 14 that share ``lr <= 2.4e-3`` with 2 unflagged ones is
    what 1 random pair in 15 does, so it is not said; 6 of 12 that are the only ones with
    ``f_lr <= 1e-4`` is 1 in 924.

    e.g. ``["all 4 flagged trials have encoder_bn=True (2 of 20 unflagged do)"]``"""
    bad = [t for t in trials if t.number in flagged]
    good = [t for t in trials if t.number not in flagged]
    if len(bad) < 2 or not good:
        return []
    found: list[tuple[float, str]] = []
    family = _family(trials)

    def add(text: str, holds: Callable[[Mapping[str, Any]], bool], fitted: bool = False) -> bool:
        share = sum(holds(t.params) for t in good)
        k, n = len(bad), len(trials)
        odds = _chance(k, n, k + share, fitted)
        rare = odds * family <= alpha
        if all(holds(t.params) for t in bad) and share <= max_share * len(good) and rare:
            found.append((share / len(good), f"{text} ({share} of {len(good)} unflagged do)"))
            return True
        return False

    names = sorted({name for t in trials for name in t.params})
    singles: list[tuple[str, Any]] = []
    for name in names:
        raw = [t.params.get(name) for t in bad]
        if is_numeric(raw) and None not in raw:
            nums = [float(v) for v in raw if v is not None]
            # the printed bounds, rounded outwards: they hold every flagged trial
            lo_txt, hi_txt = _number(min(nums), up=False), _number(max(nums), up=True)
            lo, hi = float(lo_txt), float(hi_txt)
            one_sided = add(f"{name} >= {lo_txt}", _within(name, lo, math.inf))
            one_sided |= add(f"{name} <= {hi_txt}", _within(name, -math.inf, hi))
            if not one_sided:  # a range only when no open bound does it
                add(f"{lo_txt} <= {name} <= {hi_txt}", _within(name, lo, hi), fitted=True)
        elif len({str(v) for v in raw}) == 1:
            singles.append((name, raw[0]))
            add(f"{name}={raw[0]}", _equal(((name, raw[0]),)))
    if not found:  # a region: two values that only together set the flagged trials apart
        for i, (a, va) in enumerate(singles):
            for b, vb in singles[i + 1 :]:
                add(f"{a}={va} and {b}={vb}", _equal(((a, va), (b, vb))))
    found.sort(key=lambda f: f[0])
    return [f"all {len(bad)} flagged trials have {text}" for _, text in found]


def _family(trials: Sequence[TrialOutcome]) -> int:
    """How many traits ``shared_traits`` may look at in this study: three per number (at least,
    at most, between) and one per other parameter and per pair of those."""
    names = sorted({name for t in trials for name in t.params})
    numeric = sum(is_numeric([t.params.get(name) for t in trials]) for name in names)
    other = len(names) - numeric
    return max(1, 3 * numeric + other + other * (other - 1) // 2)


def _chance(k: int, n: int, m: int, fitted: bool = False) -> float:
    """The odds that ``k`` trials drawn at random from ``n`` all fall among the ``m`` that hold
    a trait: C(m, k) / C(n, k) for a value, or for a bound that ends at the flagged trials'
    extreme (all k among the m lowest). ``fitted``: a range fitted at both ends, i.e. the k
    trials span at most m consecutive ranks (sum over spans s of (n - s + 1) C(s - 2, k - 2))."""
    if m < k:
        return 0.0
    if not fitted or k < 2:
        return math.comb(m, k) / math.comb(n, k)
    within = sum((n - s + 1) * math.comb(s - 2, k - 2) for s in range(k, min(m, n) + 1))
    return within / math.comb(n, k)


def _within(name: str, lo: float, hi: float) -> Callable[[Mapping[str, Any]], bool]:
    def holds(params: Mapping[str, Any]) -> bool:
        x = params.get(name)
        return isinstance(x, int | float) and not isinstance(x, bool) and lo <= x <= hi

    return holds


def _equal(pairs: tuple[tuple[str, Any], ...]) -> Callable[[Mapping[str, Any]], bool]:
    def holds(params: Mapping[str, Any]) -> bool:
        return all(str(params.get(name)) == str(value) for name, value in pairs)

    return holds
