"""The pruning benchmark's replay of the median rule, checked against Optuna's own pruner."""

import random

import optuna
import pytest

from harness.bench import median_replay


def _optuna_median(curves, n_startup, n_warmup):
    """Reference: the same curves fed through a real study with optuna's MedianPruner."""
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup, n_warmup_steps=n_warmup),
    )
    best, epochs = float("-inf"), 0
    for curve, flagged in curves:
        trial = study.ask()
        so_far = float("-inf")
        for epoch, value in enumerate(curve, 1):
            so_far = max(so_far, value)
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                epochs += epoch
                break
        else:
            study.tell(trial, so_far)
            epochs += len(curve)
            if not flagged:
                best = max(best, so_far)
    return best, epochs


@pytest.mark.parametrize("seed", range(12))
def test_median_replay_matches_optunas_pruner(seed):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = random.Random(seed)
    n_epochs = rng.choice([3, 6, 10])
    curves = []
    for _ in range(rng.randint(4, 16)):
        if rng.random() < 0.3:  # stuck at the majority-class baseline: ties with its kind
            curve, flagged = [0.0905] * n_epochs, True
        else:
            rate = rng.uniform(0.0, 0.02)
            curve = [round(0.08 + rate * e + rng.gauss(0, 0.01), 3) for e in range(n_epochs)]
            flagged = rng.random() < 0.1
        curves.append((curve, flagged))
    for n_startup in (0, 1, 3):
        for n_warmup in (0, 1, 2):
            assert median_replay(curves, n_startup, n_warmup) == pytest.approx(
                _optuna_median(curves, n_startup, n_warmup)
            ), (n_startup, n_warmup)


def test_median_replay_never_prunes_a_tie():
    stuck = ([0.09] * 4, False)
    best, epochs = median_replay([stuck, stuck, stuck], 1, 1)
    assert (best, epochs) == (0.09, 12)
