"""The sweep's median pruner (Optuna's rule over the trials no check flagged) and the benchmark's
replay of it, both checked against Optuna's own ``MedianPruner``."""

import random

import optuna
import pytest

from harness.sweep.pruner import CheckedMedianPruner, median_replay

MAJORITY_ATTR = "majority_miou"  # the TrialAttrs field the floor reads

STUCK = 0.0905  # a broken trial sits at the majority-class mIoU from its first epoch


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _run(curves, pruner, majority=None):
    """The curves fed through a real study with ``pruner``; a flagged trial gets the
    ``flags`` user attribute that the sweep's objective records before the trial finishes, and
    every trial the ``majority_miou`` one the sweep sets from its first evaluation.
    Returns (best unflagged finished value, epochs trained, which trials were pruned)."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    best, epochs, pruned = float("-inf"), 0, []
    for curve, flagged in curves:
        trial = study.ask()
        if majority is not None:
            trial.set_user_attr(MAJORITY_ATTR, majority)
        so_far = float("-inf")
        for epoch, value in enumerate(curve, 1):
            so_far = max(so_far, value)
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                epochs += epoch
                pruned.append(True)
                break
        else:
            trial.set_user_attr("flags", ["no-learning"] if flagged else [])
            study.tell(trial, so_far)
            epochs += len(curve)
            pruned.append(False)
            if not flagged:
                best = max(best, so_far)
    return best, epochs, pruned


def _random_curves(seed):
    rng = random.Random(seed)
    n_epochs = rng.choice([3, 6, 10])
    curves = []
    for _ in range(rng.randint(4, 16)):
        if rng.random() < 0.3:  # stuck at the majority-class baseline: ties with its kind
            curves.append(([STUCK] * n_epochs, True))
        else:
            rate = rng.uniform(0.0, 0.02)
            curve = [round(0.08 + rate * e + rng.gauss(0, 0.01), 3) for e in range(n_epochs)]
            curves.append((curve, rng.random() < 0.1))
    return curves


SETTINGS = [(s, w) for s in (0, 1, 3) for w in (0, 1, 2)]


@pytest.mark.parametrize("seed", range(12))
def test_replay_without_skipping_matches_optunas_median_pruner(seed):
    curves = _random_curves(seed)
    for n_startup, n_warmup in SETTINGS:
        expected = _run(curves, optuna.pruners.MedianPruner(n_startup, n_warmup))[:2]
        got = median_replay(curves, n_startup, n_warmup, skip_flagged=False)
        assert got == pytest.approx(expected), (n_startup, n_warmup)


@pytest.mark.parametrize("seed", range(12))
def test_checked_pruner_is_optunas_median_pruner_when_nothing_is_flagged(seed):
    curves = [(curve, False) for curve, _ in _random_curves(seed)]
    for n_startup, n_warmup in SETTINGS:
        expected = _run(curves, optuna.pruners.MedianPruner(n_startup, n_warmup))
        assert _run(curves, CheckedMedianPruner(n_startup, n_warmup)) == expected


@pytest.mark.parametrize("seed", range(12))
def test_replay_predicts_the_checked_pruner(seed):
    curves = _random_curves(seed)
    for n_startup, n_warmup in SETTINGS:
        expected = _run(curves, CheckedMedianPruner(n_startup, n_warmup))[:2]
        assert median_replay(curves, n_startup, n_warmup) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(12))
def test_replay_predicts_the_checked_pruner_with_its_floor(seed):
    curves = _random_curves(seed)
    for n_startup, n_warmup in SETTINGS:
        pruner = CheckedMedianPruner(n_startup, n_warmup, majority_floor=True)
        expected = _run(curves, pruner, majority=STUCK)[:2]
        assert median_replay(curves, n_startup, n_warmup, floor=STUCK) == pytest.approx(expected)


def test_the_floor_prunes_a_trial_that_learned_nothing_without_any_finished_trial():
    pruner = CheckedMedianPruner(n_startup_trials=3, n_warmup_steps=2, majority_floor=True)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    trial.set_user_attr(MAJORITY_ATTR, 0.0854)
    trial.report(0.0854, 1)
    assert not trial.should_prune()  # still in the warm-up
    trial.report(0.0859, 2)  # above the majority level by less than the margin
    assert trial.should_prune()
    assert pruner.reasons[trial.number] == (
        "majority floor: best 0.0859 <= 0.0854 (majority-class mIoU) + 0.001"
    )


def test_the_floor_spares_a_learning_trial_and_can_be_switched_off():
    for floor_on, value, pruned in [(True, 0.0874, False), (False, 0.0854, False)]:
        pruner = CheckedMedianPruner(n_startup_trials=0, n_warmup_steps=1, majority_floor=floor_on)
        study = optuna.create_study(direction="maximize", pruner=pruner)
        trial = study.ask()
        trial.set_user_attr(MAJORITY_ATTR, 0.0854)
        trial.report(value, 1)
        assert trial.should_prune() is pruned, (floor_on, value)


def test_the_floor_needs_the_trials_majority_level():
    pruner = CheckedMedianPruner(n_startup_trials=0, n_warmup_steps=0, majority_floor=True)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()  # no majority_miou attribute: e.g. a metric other than val/mIoU
    trial.report(0.0, 1)
    assert not trial.should_prune()


def test_the_median_reason_names_the_reference():
    pruner = CheckedMedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in ([0.2, 0.3], [0.1]):
        trial = study.ask()
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
    study.tell(study.trials[0].number, 0.3)
    assert study.trials[1].number == 1
    second = optuna.trial.Trial(study, study.trials[1]._trial_id)
    assert second.should_prune()
    assert pruner.reasons[1] == (
        "median rule: best 0.1000 < 0.2000, the median of 1 unflagged trials"
    )


def test_flagged_trials_do_not_set_the_bar():
    # two stuck trials finish first (flagged no-learning), then a learning trial that starts
    # below their level: Optuna's rule prunes it at epoch 1, the checked rule has no sound
    # trial to judge it by and lets it learn; a later stuck trial is then judged by it
    learner = [0.05, 0.10, 0.14, 0.16]
    curves = [([STUCK] * 4, True), ([STUCK] * 4, True), (learner, False), ([STUCK] * 4, True)]
    plain = _run(curves, optuna.pruners.MedianPruner(1, 1))
    checked = _run(curves, CheckedMedianPruner(1, 1))
    assert plain[2] == [False, False, True, False]
    assert plain[0] == float("-inf")  # the study has no sound finished trial at all
    assert checked[2] == [False, False, False, True]
    assert checked[:2] == (0.16, 4 + 4 + 4 + 2)


def test_the_study_level_verdict_does_not_exclude_a_trial():
    study = optuna.create_study(direction="maximize", pruner=CheckedMedianPruner(1, 0))
    first = study.ask()
    first.report(0.2, 1)
    first.set_user_attr("flags", ["outlier:low-miou"])  # changes as the study grows: not used
    study.tell(first, 0.2)
    second = study.ask()
    second.report(0.1, 1)
    assert second.should_prune()


def test_a_tie_is_not_pruned():
    stuck = ([0.09] * 4, False)
    assert median_replay([stuck, stuck, stuck], 1, 1) == (0.09, 12)
    assert _run([stuck, stuck, stuck], CheckedMedianPruner(1, 1))[2] == [False] * 3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_startup_trials"):
        CheckedMedianPruner(-1, 0)
