"""The study view: what flagged trials share, shown where the flags are shown."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from harness.cli import _console, _print_trials
from harness.sweep.view import flagged_traits

DIST = {
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
    "encoder_bn": CategoricalDistribution([True, False]),
}


def _study(n_bad: int, n_good: int) -> optuna.Study:
    """``n_bad`` trials with encoder_bn=True whose audit flagged them, ``n_good`` correct ones
    with encoder_bn=False; learning rates spread over the range in both."""
    study = optuna.create_study(direction="maximize")
    for i in range(n_bad + n_good):
        bad = i < n_bad
        lr = 10 ** (-4 + 2 * (i % 5) / 4)
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "encoder_bn": bad},
                distributions=DIST,
                value=0.03 if bad else 0.2 + 0.01 * (i % 3),
                user_attrs={"flags": ["audit:missing:decoder"] if bad else []},
            )
        )
    return study


def test_flagged_trials_share_the_code_path_their_bug_lives_in():
    trials = _study(4, 8).get_trials()
    traits = flagged_traits(trials)
    assert traits == ["all 4 flagged trials have encoder_bn=True (0 of 8 unflagged do)"]


def test_one_flagged_trial_shares_nothing():
    assert flagged_traits(_study(1, 8).get_trials()) == []


def test_the_table_printout_says_what_flagged_trials_share(capsys):
    _print_trials(_console(), _study(3, 6).get_trials(), "study s")
    out = capsys.readouterr().out
    assert "what the flagged trials share:" in out
    assert "all 3 flagged trials have encoder_bn=True (0 of 6 unflagged do)" in out
