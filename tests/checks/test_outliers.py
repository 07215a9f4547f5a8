import math
import random

import numpy as np
import pytest

from harness.bench import outliers as bench
from harness.checks.flags import OUTLIER_LOW
from harness.checks.outliers import (
    TrialOutcome,
    _trimmed_centre_scale,
    _weighted_distances,
    find_outliers,
    low_miou_outliers,
    outcome_of,
    shared_traits,
)


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


def _outcomes(trials):
    return [TrialOutcome(k, p, v) for k, p, v in trials]


def test_pure_noise_raises_no_flag():
    for seed in range(20):
        assert low_miou_outliers(_study(15, seed=seed, noise=0.02)) == {}
        assert find_outliers(_outcomes(_study(15, seed=seed, noise=0.02))) == {}


def test_v2_flags_the_planted_trial_with_plain_evidence_and_not_below_five():
    trials = _outcomes(_study(12))
    trials[5] = TrialOutcome(5, trials[5].params, 0.03)
    found = find_outliers(trials)
    assert set(found) == {5}
    assert found[5].evidence.startswith("mIoU 0.03, neighbours predict 0.3")
    assert find_outliers(trials[:4]) == {}


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


# --- v2 on simulated studies (harness/bench/outliers.py): the targets ---------------------


def _measured(name, n, studies, seed=7):
    (scenario,) = [s for s in bench.SCENARIOS if s.name == name]
    detectors = {"v2": bench.v2}
    return bench.measure(scenario, n, studies, seed, detectors)["v2"]


@pytest.mark.parametrize("name", ["no bug", "no bug, divergence x4"])
@pytest.mark.slow
def test_no_bug_studies_with_stuck_regions_and_divergence_raise_at_most_1pct_false_flags(name):
    for n, studies in ((12, 60), (24, 30)):
        assert _measured(name, n, studies).false_flags <= 0.01, n


@pytest.mark.parametrize("share, target", [("10%", 0.9), ("25%", 0.9), ("50%", 0.7)])
@pytest.mark.slow
def test_severe_bugs_are_found_at_any_share(share, target):
    cell = _measured(f"severe {share}", 24, 30)
    assert cell.recall >= target and cell.false_flags <= 0.01
    if share == "25%":  # 12 trials: >= 0.7
        cell = _measured("severe 25%", 12, 60)
        assert cell.recall >= 0.7 and cell.false_flags <= 0.01


@pytest.mark.parametrize("share", ["10%", "25%"])
@pytest.mark.slow
def test_moderate_bugs_are_found_at_10_and_25pct(share):
    cell = _measured(f"moderate {share}", 24, 40)
    assert cell.recall >= 0.7 and cell.false_flags <= 0.01


@pytest.mark.parametrize("name", ["severe region enc+dec BN", "severe region fcn BN"])
@pytest.mark.slow
def test_a_bug_in_one_region_is_found(name):
    cell = _measured(name, 24, 30)
    assert cell.recall >= 0.8 and cell.false_flags <= 0.01


@pytest.mark.slow
def test_v2_beats_v1_where_v1_falls_apart():
    (scenario,) = [s for s in bench.SCENARIOS if s.name == "severe 25%"]
    cells = bench.measure(scenario, 24, 20, 3, {"v1": bench.v1, "v2": bench.v2})
    assert cells["v1"].recall < 0.5 < 0.9 <= cells["v2"].recall


def test_a_diverged_trial_is_not_flagged_but_a_flat_loss_is():
    rng = np.random.default_rng(1)
    trials, _, _ = bench.simulate_study(24, bench.SCENARIOS[0], rng)
    learner = next(t for t in trials if t.params["decoder_bn"])
    rose = (1.7, 1.2, 1.0, 1.4, 1.9)  # fell, then rose back above its first epoch: diverged
    flat = (1.7, 1.69, 1.68, 1.68, 1.67)  # a decoder that never moves
    for curve, flagged in ((rose, False), (flat, True)):
        t = TrialOutcome(learner.number, learner.params, 0.04, learner.majority_miou, curve)
        judged = [t if x.number == t.number else x for x in trials]
        assert (t.number in find_outliers(judged)) is flagged
        if flagged:
            text = find_outliers(judged)[t.number].evidence
            assert "below the majority-class level 0.085 that" in text
            assert "its training loss ended at 1.67 while neighbours reached" in text


def test_500_trials_are_judged_in_one_call():
    trials, _, _ = bench.simulate_study(500, bench.SCENARIOS[2], np.random.default_rng(0))
    found = find_outliers(trials)
    assert found and all(isinstance(o.evidence, str) for o in found.values())


# --- brute-force references for the computations inside v2 --------------------------------------


def test_weighted_distances_match_a_plain_loop():
    rng = random.Random(4)
    trials = [
        TrialOutcome(
            i,
            {"lr": 10 ** rng.uniform(-3.5, -2), "bn": rng.random() < 0.5, "opt": rng.choice("ab")},
            0.0,
        )
        for i in range(9)
    ]
    values = np.array([0.3 if t.params["bn"] else 0.1 for t in trials]) + [
        rng.gauss(0, 0.01) for _ in trials
    ]
    dist = _weighted_distances(trials, values, 0.75, 4.0)
    spread = max(np.quantile(values, 0.9) - np.quantile(values, 0.1), 0.01)

    def weight(groups):
        levels = [np.quantile(values[g], 0.75) for g in groups if len(g) >= 2]
        return 1 + 4 * min(1, (max(levels) - min(levels)) / spread)

    logs = [math.log10(t.params["lr"]) for t in trials]
    order = sorted(range(9), key=lambda i: logs[i])
    w_lr = weight([order[0:3], order[3:6], order[6:9]])
    w_bn = weight([[i for i, t in enumerate(trials) if t.params["bn"] is b] for b in (False, True)])
    w_opt = weight([[i for i, t in enumerate(trials) if t.params["opt"] == c] for c in "ab"])
    for i, a in enumerate(trials):
        for j, b in enumerate(trials):
            if i == j:
                assert dist[i, j] == math.inf
                continue
            x = (logs[i] - logs[j]) / (max(logs) - min(logs))
            total = (w_lr * x) ** 2 + (w_bn * (a.params["bn"] - b.params["bn"])) ** 2
            total += (w_opt * (a.params["opt"] != b.params["opt"])) ** 2
            assert dist[i, j] == pytest.approx(math.sqrt(total))
    assert w_bn > 4 > w_opt  # the parameter that splits the study counts most


def test_trimmed_scale_matches_a_plain_loop():
    rng = random.Random(2)
    residuals = [rng.gauss(0, 0.01) for _ in range(40)] + [-0.1] * 12  # a mode of broken trials
    kept = residuals
    for _ in range(4):
        centre = float(np.median(kept))
        scale = 1.4826 * float(np.median([abs(r - centre) for r in kept]))
        kept = [r for r in residuals if r >= centre - 3.5 * scale]
    assert _trimmed_centre_scale(np.array(residuals), 3.5) == pytest.approx((centre, scale))
    assert min(kept) > -0.05 and scale < 0.015  # the broken mode does not inflate the scale
    assert _trimmed_centre_scale(np.array([0.1, math.nan]), 3.5) == (0.0, 0.0)


def test_outcome_of_reads_the_metrics_rows():
    rows = [
        {"train/loss": 1.7, "val/majority_mIoU": 0.0854},
        {"train/loss": float("nan")},
        {"train/loss": 1.2, "val/mIoU": 0.1},
    ]
    t = outcome_of(3, {"lr": 1e-3}, 0.12, rows)
    assert (t.majority_miou, t.train_loss) == (0.0854, (1.7, 1.2))
    assert outcome_of(3, {}, 0.1).train_loss == () and outcome_of(3, {}, 0.1).majority_miou is None


# --- which flagged trials look alike -----------------------------------------------------------


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
