import random

from harness.outliers import OUTLIER_LOW, low_miou_outliers


def _study(n, seed=0, noise=0.02):
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        lr = 10 ** rng.uniform(-3.5, -2)
        bn = rng.random() < 0.5
        miou = 0.30 + 0.03 * bn + rng.gauss(0, noise)
        trials.append((i, {"lr": lr, "f_lr": lr / 10, "encoder_bn": bn}, miou))
    return trials


def test_planted_low_trial_is_flagged_with_evidence():
    trials = _study(12)
    key, params, _ = trials[5]
    trials[5] = (key, params, 0.03)
    found = low_miou_outliers(trials)
    assert set(found) == {5}
    text = found[5].evidence
    assert text.startswith("mIoU 0.03, neighbours predict 0.3") and "+-" in text
    assert OUTLIER_LOW == "outlier:low-miou"


def test_pure_noise_raises_no_flag():
    for seed in range(20):
        assert low_miou_outliers(_study(15, seed=seed, noise=0.02)) == {}


def test_works_from_five_trials_and_not_below():
    trials = _study(5, seed=3, noise=0.01)
    trials[0] = (0, trials[0][1], 0.02)
    assert set(low_miou_outliers(trials)) == {0}
    assert low_miou_outliers(trials[:4]) == {}


def test_small_absolute_drop_is_not_flagged_even_when_neighbours_agree():
    trials = [(i, {"lr": 1e-3 * (1 + i / 100)}, 0.30) for i in range(8)]
    trials[2] = (2, trials[2][1], 0.27)  # 3 scales below (floor 0.01) but only 0.03 absolute
    assert low_miou_outliers(trials) == {}


def test_sweep_table_and_best_use_the_study_level_flag():
    import optuna

    from harness.sweep import best_trial, study_outliers, trial_rows

    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    trials = []
    for i, (_, params, miou) in enumerate(_study(8, seed=1, noise=0.01)):
        value = 0.03 if i == 4 else miou
        attrs = {"config": {"name": f"s-{i}"} if i == 4 else None, "flags": []}
        trials.append(
            optuna.trial.create_trial(
                params={"lr": params["lr"]}, distributions=dist, value=value, user_attrs=attrs
            )
        )
        trials[-1].number = i
    assert set(study_outliers(trials)) == {4}
    rows = {r[0]: r for r in trial_rows(trials, ["lr"])}
    assert "outlier:low-miou" in rows[4][5] and rows[0][5] == ""
    assert best_trial(trials) is None  # the only trial with a config is the flagged one


def test_bug_demo_sweep_file_is_valid_and_injects_a_minority_of_trials():
    from pathlib import Path

    from harness.config import INJECTABLE_BUGS
    from harness.sweep import load_spec

    spec = load_spec(Path(__file__).parent.parent / "sweeps" / "bug-demo.yaml")
    (bug,) = [p for p in spec.space if p.path == "train.inject_bug"]
    assert set(bug.choices) == {None, *INJECTABLE_BUGS}
    assert bug.choices.count(None) > len(bug.choices) / 2
