import random

from harness.checks.flags import OUTLIER_LOW
from harness.checks.outliers import low_miou_outliers


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
    from harness.config.sweep import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "sweeps" / "bug-demo.yaml")
    (bug,) = [p for p in spec.space if p.path == "train.inject_bug"]
    assert set(bug.choices) == {None, *INJECTABLE_BUGS}
    assert bug.choices.count(None) > len(bug.choices) / 2


# --- in a sweep: the verdict at a trial's end, the current verdict, W&B tags ---------------------


class _Trial:
    def __init__(self, number, params, value, flags=(), wandb="", state="COMPLETE"):
        self.number, self.params, self.value = number, params, value
        self.state = type("State", (), {"name": state})()
        self.user_attrs = {"flags": list(flags), "evidence": {}, "wandb": wandb}
        self.system_attrs: dict = {}


def _study_of(trials):
    class Study:
        def get_trials(self, deepcopy=False, states=None):
            return list(trials)

    return Study()


def test_a_trial_ending_far_below_its_neighbours_gets_the_flag_in_its_own_record():
    from harness.sweep.objective import StudyOutlierCheck

    others = [_Trial(i, {"lr": 1e-3 * (1 + i / 10), "inject_bug": None}, 0.3) for i in range(6)]
    live = _Trial(6, {"lr": 1.25e-3, "inject_bug": "encoder-only-optimizer"}, None, state="RUNNING")
    live.study = _study_of(others)
    check = StudyOutlierCheck(live)
    for epoch, miou in enumerate([0.02, 0.04, 0.03], start=1):
        check.on_epoch_end(epoch, {"val/mIoU": miou})
    check.on_fit_end("pruned")
    assert check.flags() == {}  # a pruned trial's mIoU says nothing about its parameters
    check.on_fit_end("finished")
    assert check.flags() == {OUTLIER_LOW: "mIoU 0.04, neighbours predict 0.30 +- 0.01"}
    # a correct trial among them: nothing
    fine = _Trial(7, {"lr": 1.1e-3}, None, state="RUNNING")
    fine.study = _study_of(others)
    check = StudyOutlierCheck(fine)
    check.on_epoch_end(1, {"val/mIoU": 0.31})
    check.on_fit_end("finished")
    assert check.flags() == {}


def test_current_verdict_replaces_the_recorded_one_with_evidence():
    from harness.sweep import trial_evidence, trial_flags

    t = _Trial(3, {"lr": 1e-3}, 0.2, flags=["no-learning", OUTLIER_LOW])
    t.user_attrs["evidence"] = {"no-learning": "loss flat", OUTLIER_LOW: "old"}
    assert trial_flags(t, {}) == ["no-learning"]  # no longer an outlier as the study stands
    assert trial_evidence(t, {3: "mIoU 0.20, neighbours predict 0.33 +- 0.02"}) == {
        "no-learning": "loss flat",
        OUTLIER_LOW: "mIoU 0.20, neighbours predict 0.33 +- 0.02",
    }


def test_online_runs_are_retagged_with_the_current_verdict_offline_ones_left():
    from harness.sweep.wandb_run import retag_online_runs

    class Run:
        def __init__(self, tags):
            self.tags, self.updates = list(tags), 0

        def update(self):
            self.updates += 1

    runs = {"me/harness/a": Run(["study:s"]), "me/harness/b": Run(["study:s", OUTLIER_LOW])}

    class Api:
        def run(self, path):
            return runs[path]

    trials = [
        _Trial(0, {}, 0.1, wandb="https://wandb.ai/me/harness/runs/a"),
        _Trial(1, {}, 0.3, wandb="https://wandb.ai/me/harness/runs/b"),
        _Trial(2, {}, 0.1, wandb="xyz (offline)"),
    ]
    assert retag_online_runs(trials, {0: "low", 2: "low"}, Api()) == 2
    assert runs["me/harness/a"].tags == ["study:s", OUTLIER_LOW]
    assert runs["me/harness/b"].tags == ["study:s"]
    assert retag_online_runs(trials, {0: "low"}, Api()) == 0  # nothing left to change
