import itertools
import random

import pytest

from harness.checks.outliers import TrialOutcome
from harness.checks.traits import _chance, shared_traits


def _grid(n=24):
    """encoder_bn x decoder_bn balanced (6 trials each), fcn_bn only on trials 0-4."""
    rng = random.Random(0)
    return [
        TrialOutcome(
            i,
            {
                "lr": 10 ** rng.uniform(-3.5, -2),
                "encoder_bn": i % 2 == 0,
                "decoder_bn": (i // 2) % 2 == 0,
                "fcn_bn": i < 5,
            },
            0.1,
        )
        for i in range(n)
    ]


def test_shared_traits_name_the_value_all_flagged_trials_have():
    assert shared_traits({0, 1, 2, 3}, _grid()) == [
        "all 4 flagged trials have fcn_bn=True (1 of 20 unflagged do)"
    ]


def test_shared_traits_name_a_region_of_two_values_when_no_single_one_separates():
    trials = _grid()
    region = {t.number for t in trials if t.params["encoder_bn"] and t.params["decoder_bn"]}
    assert shared_traits(region, trials) == [
        "all 6 flagged trials have decoder_bn=True and encoder_bn=True (0 of 18 unflagged do)"
    ]


def test_shared_traits_find_a_numeric_range_rounded_to_hold_every_flagged_trial():
    trials = _grid()
    top = sorted(trials, key=lambda t: t.params["lr"])[-3:]
    (text,) = shared_traits({t.number for t in top}, trials)
    assert text.startswith("all 3 flagged trials have lr >= ") and "e-3" in text
    assert text.endswith("(0 of 21 unflagged do)")
    assert float(text.split(">= ")[1].split(" ")[0]) <= min(t.params["lr"] for t in top)


def test_shared_traits_need_two_flagged_trials_and_a_trait_that_separates():
    trials = _grid()
    assert shared_traits({5}, trials) == []
    assert shared_traits({5, 6}, trials) == []  # they share nothing that few others have
    assert shared_traits(set(range(24)), trials) == []  # nobody unflagged to compare with


def test_chance_matches_counting_every_draw():
    for n, k, m in ((8, 2, 3), (8, 3, 5), (10, 4, 6), (9, 2, 9), (7, 3, 2)):
        draws = list(itertools.combinations(range(n), k))
        among = sum(all(i < m for i in d) for d in draws) / len(draws)
        span = sum(max(d) - min(d) + 1 <= m for d in draws) / len(draws)
        assert _chance(k, n, m) == pytest.approx(among)
        assert _chance(k, n, m, fitted=True) == pytest.approx(span)


def test_shared_traits_still_name_a_trait_chance_rarely_gives():
    # the story's blind sweep: 6 of 12 trials, the only ones with f_lr 1e-4 (1 in 924)
    rng = random.Random(1)
    trials = [
        TrialOutcome(i, {"lr": 10 ** rng.uniform(-2.7, -2.3), "f_lr": 1e-4 if i < 6 else 5e-3}, 0.1)
        for i in range(12)
    ]
    assert shared_traits(set(range(6)), trials) == [
        "all 6 flagged trials have f_lr <= 1.0e-4 (0 of 6 unflagged do)"
    ]
