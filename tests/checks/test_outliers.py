import math
import random

import numpy as np
import pytest

from harness.bench import outliers as bench
from harness.bench.outliers import low_miou_outliers
from harness.checks.flags import OUTLIER_LOW
from harness.checks.outliers import (
    TrialOutcome,
    _explained,
    _trimmed_centre_scale,
    _weighted_distances,
    find_outliers,
    outcome_of,
)
from harness.checks.traits import _chance, shared_traits


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
def test_a_bug_in_one_region_is_found_from_12_trials(name):
    for n, studies in ((12, 120), (24, 30)):
        cell = _measured(name, n, studies)
        assert cell.recall >= 0.8 and cell.false_flags <= 0.01, n


@pytest.mark.slow
def test_moderate_bugs_at_half_the_study_and_in_one_region_raise_no_false_flags():
    # neither has a recall target: a moderate bug on one region looks exactly like a healthy
    # stuck region (decoder BN off), so it is missed; the healthy trials must stay unflagged
    for name in ("moderate 50%", "moderate region enc+dec BN"):
        assert _measured(name, 24, 30).false_flags <= 0.01, name


@pytest.mark.slow
def test_the_bug_demo_draw_every_bug_kind_is_found_and_no_correct_trial():
    # sweeps/bug-demo.yaml's space and odds (4 in 9 trials carry one of the four bugs), where a
    # frozen decoder may share its values only with encoder-only trials (seed 13)
    for n, studies in ((12, 120), (24, 40)):
        cell = _measured("bug-demo draw (4 bugs, 4/9)", n, studies)
        assert cell.recall >= 0.85 and cell.false_flags <= 0.01, n


@pytest.mark.parametrize("name", ["severe 25%, current space", "moderate 25%, current space"])
@pytest.mark.slow
def test_the_default_study_s_current_space_meets_the_same_targets(name):
    target = 0.9 if name.startswith("severe") else 0.7
    cell = _measured(name, 24, 40)
    assert cell.recall >= target and cell.false_flags <= 0.01
    assert _measured("no bug, current space", 24, 30).false_flags <= 0.01


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
    rows = [{"val/loss": 1.1, "val/prior_loss": 0.93}, {"val/loss": 0.8, "val/prior_loss": 0.93}]
    t = outcome_of(3, {}, 0.1, rows)
    assert (t.val_loss, t.prior_loss, t.majority_miou) == ((1.1, 0.8), 0.93, None)
    # what the sweep recorded on the trial (its user attributes) takes precedence over rows
    t = outcome_of(3, {}, 0.1, rows, prior_loss=0.9, val_loss=[0.7], train_loss=(1.0,))
    assert (t.val_loss, t.prior_loss, t.train_loss) == ((0.7,), 0.9, (1.0,))


# --- a trial at the majority-class level, and the anchor with one learner ----------------------

MAJORITY = 0.0854


def _learning_study(n_stuck=4, n_learning=8, seed=0):
    """decoder_bn=False trials exactly at the majority level (healthy: the whole region is
    stuck), decoder_bn=True ones learning near 0.15 with a falling loss."""
    rng = random.Random(seed)
    trials = []
    for i in range(n_stuck + n_learning):
        learns = i >= n_stuck
        params = {"lr": 10 ** rng.uniform(-3, -2), "encoder_bn": i % 2 == 0, "decoder_bn": learns}
        value = 0.15 + rng.gauss(0, 0.01) if learns else MAJORITY
        loss = (1.75, 1.1, 0.8, 0.65) if learns else (1.75, 1.72, 1.70, 1.68)
        trials.append(TrialOutcome(i, params, value, MAJORITY, loss))
    return trials


def test_a_trial_at_the_majority_level_among_learners_is_flagged_a_stuck_region_is_not():
    trials = _learning_study()
    assert find_outliers(trials) == {}  # decoder_bn=False: every one of them at the level
    bugged = trials[7]  # a frozen decoder: at the level, its loss still halved
    trials[7] = TrialOutcome(7, bugged.params, MAJORITY + 3e-4, MAJORITY, (1.9, 1.4, 1.1, 1.0))
    found = find_outliers(trials)
    assert set(found) == {7}
    assert "at the majority-class level 0.085 that 7 of 12 trials beat" in found[7].evidence
    assert "no parameter explains it" in found[7].evidence
    # the same trial is explained once another trial of its kind (lr at or above it, same
    # decoder_bn...) sits there too: a whole region that does not learn is the parameter's doing
    top = max(range(4, 12), key=lambda i: trials[i].params["lr"])
    trials[7] = TrialOutcome(7, {**bugged.params, "lr": 0.02}, MAJORITY, MAJORITY)
    trials[top] = TrialOutcome(top, {**trials[top].params, "lr": 0.03}, MAJORITY, MAJORITY)
    assert 7 not in find_outliers(trials)


def test_a_trial_at_the_majority_level_is_left_when_fewer_than_two_trials_learn():
    trials = _learning_study(n_stuck=10, n_learning=2)[:11]  # 11 trials, 1 learner
    t = trials[0]
    trials[0] = TrialOutcome(0, {**t.params, "decoder_bn": True}, MAJORITY, MAJORITY)
    assert find_outliers(trials) == {}


def _explained_by_loops(trials, idle, least=2):
    """The same rule as ``_explained``, written as plain loops over trials and regions."""
    names = sorted(trials[0].params)
    numeric = [n for n in names if not isinstance(trials[0].params[n], bool)]
    cats = [n for n in names if n not in numeric]

    def none_learns(i, members):
        return len(members) >= least and all(idle[j] for j in members)

    by_value = [
        any(
            none_learns(i, [j for j, u in enumerate(trials) if u.params[c] == t.params[c]])
            for c in cats
        )
        for i, t in enumerate(trials)
    ]
    out = []
    for i, t in enumerate(trials):
        pool = [j for j in range(len(trials)) if not by_value[j]]
        regions = []
        for a in range(len(cats)):
            for b in range(a + 1, len(cats)):
                ca, cb = cats[a], cats[b]
                regions.append(
                    [
                        j
                        for j in pool
                        if trials[j].params[ca] == t.params[ca]
                        and trials[j].params[cb] == t.params[cb]
                    ]
                )
        for x in numeric:
            regions.append([j for j in pool if trials[j].params[x] <= t.params[x]])
            regions.append([j for j in pool if trials[j].params[x] >= t.params[x]])
        out.append(by_value[i] or any(none_learns(i, r) for r in regions))
    return out


def test_explained_matches_a_plain_loop():
    for seed in range(30):
        rng = random.Random(seed)
        n = rng.randint(5, 14)
        trials = [
            TrialOutcome(
                i,
                {
                    "lr": rng.choice([1, 2, 3, 4, 5]) * 1e-3,
                    "a": rng.random() < 0.5,
                    "b": rng.random() < 0.3,
                    "c": rng.random() < 0.6,
                },
                0.1,
            )
            for i in range(n)
        ]
        idle = np.array([rng.random() < 0.5 for _ in range(n)])
        for least in (2, 3):
            got = _explained(trials, idle, least).tolist()
            assert got == _explained_by_loops(trials, idle, least), (seed, least)


def test_one_learner_is_witness_enough_when_the_trial_s_own_loss_stayed_flat():
    trials = _learning_study(n_stuck=10, n_learning=2)[:11]  # 11 trials, 1 learner
    flat = TrialOutcome(
        0, {**trials[0].params, "decoder_bn": True}, 0.03, MAJORITY, (2.2, 2.19, 2.18, 2.17)
    )
    found = find_outliers([flat, *trials[1:]])
    assert set(found) == {0}
    assert "below the majority-class level 0.085 that 1 of 11 trials beat" in found[0].evidence
    assert "its training loss ended at 2.17 while neighbours reached" in found[0].evidence
    # with no other trial's loss to compare with, the note names its own flat curve
    alone = [TrialOutcome(t.number, t.params, t.value, t.majority_miou) for t in trials[1:]]
    found = find_outliers([flat, *alone])
    assert "its training loss stayed at 2.17 (from 2.20)" in found[0].evidence
    # the same mIoU with a loss that fell (a slow start, not a broken model): one learner is
    # not enough to call it a bug
    falling = TrialOutcome(0, flat.params, 0.03, MAJORITY, (2.2, 1.6, 1.3, 1.1))
    assert find_outliers([falling, *trials[1:]]) == {}


# --- the seed-30 bug demo as recorded (runs/bug-demo-blind, 1 December 2026, full size) ---------

# lr, encoder_bn, injected bug, best val mIoU, train/loss per epoch
SEED30 = (
    (0.00361, False, None, 0.13848, (1.721, 1.134, 0.852, 0.757, 0.744, 0.709, 0.693, 0.664)),
    (0.00322, False, None, 0.13224, (1.758, 1.211, 0.902, 0.812, 0.755, 0.717, 0.699, 0.678)),
    (0.00457, False, None, 0.14397, (1.640, 1.028, 0.812, 0.757, 0.706, 0.683, 0.669, 0.655)),
    (0.00272, True, "zero-lr", 0.08607, (2.014, 1.694, 1.480, 1.339, 1.251, 1.191, 1.143, 1.110)),
    (0.00232, False, "enc-only", 0.02892, (2.208, 2.198, 2.191, 2.183, 2.180, 2.184, 2.179, 2.169)),
    (0.00306, True, None, 0.17226, (1.770, 1.188, 0.872, 0.752, 0.692, 0.665, 0.641, 0.616)),
    (0.00314, True, "shuffled", 0.08546, (1.771, 1.245, 1.000, 0.925, 0.901, 0.886, 0.877, 0.869)),
    (0.00495, True, "frozen", 0.08563, (1.888, 1.450, 1.245, 1.144, 1.091, 1.060, 1.031, 1.014)),
    (0.00214, True, None, 0.15872, (1.861, 1.384, 1.043, 0.869, 0.770, 0.715, 0.673, 0.650)),
    (0.00203, True, "frozen", 0.08544, (2.049, 1.788, 1.589, 1.447, 1.344, 1.275, 1.213, 1.171)),
    (0.00234, False, "enc-only", 0.02892, (2.208, 2.198, 2.191, 2.183, 2.180, 2.184, 2.179, 2.169)),
    (0.00296, False, None, 0.15117, (1.783, 1.270, 1.003, 0.883, 0.798, 0.744, 0.731, 0.687)),
    (0.00388, True, "frozen", 0.08568, (1.954, 1.560, 1.340, 1.225, 1.156, 1.109, 1.078, 1.055)),
    (0.00289, False, None, 0.15206, (1.783, 1.264, 0.969, 0.794, 0.723, 0.711, 0.674, 0.657)),
)


def _seed30():
    return [
        TrialOutcome(i, {"lr": lr, "encoder_bn": bn}, value, 0.0853843, loss)
        for i, (lr, bn, _, value, loss) in enumerate(SEED30)
    ]


def test_seed30_bug_demo_every_injected_trial_flagged_and_no_correct_one():
    found = find_outliers(_seed30())
    bugged = {i for i, row in enumerate(SEED30) if row[2] is not None}
    assert set(found) == bugged
    for i in bugged:  # the two below the level, the five at it
        where = "below" if SEED30[i][2] == "enc-only" else "at"
        text = f"{where} the majority-class level 0.085 that 7 of 14 trials beat"
        assert text in found[i].evidence


def test_seed30_two_flagged_trials_sharing_a_low_lr_is_chance_not_a_trait():
    # v2 as it was flagged only the two encoder-only trials and printed "all 2 flagged trials
    # have lr <= 2.4e-3 (2 of 12 unflagged do)": 1 random pair in 15 does that
    assert shared_traits({4, 10}, _seed30()) == []
    assert _chance(2, 14, 4) == pytest.approx(6 / 91)


# the last val/loss of each SEED30 trial, and the val loss of predicting the class frequencies
SEED30_VAL = (0.747, 0.690, 0.707, 1.086, 2.132, 0.628, 0.915, 1.007, 0.685, 1.152, 2.132, 0.729)
SEED30_VAL += (1.038, 0.698)
PRIOR = 0.929615


def _seed13_like(frozen_val_loss):
    """Seed 13's blind bug demo as it drew its trials (5 encoder-only trials, 3 of them with
    encoder_bn=True like the frozen decoder; every correct trial with encoder_bn=False), built
    from the seed-30 trials' recorded curves: SEED30 rows (correct 0, 1, 2, 11, 13, 8; zero-lr
    3; shuffled 6; frozen 9; encoder-only 4, 10) with encoder_bn as seed 13 drew it."""
    rows = [(0, False), (1, False), (2, False), (11, False), (13, False), (8, False)]
    rows += [(3, False), (6, False), (9, True)]
    rows += [(4, True), (10, True), (4, True), (10, False), (4, False)]
    trials = []
    for n, (i, bn) in enumerate(rows):
        lr, _, bug, value, loss = SEED30[i]
        val = frozen_val_loss if bug == "frozen" else SEED30_VAL[i]
        params = {"lr": lr * (1 + 0.01 * n), "encoder_bn": bn}
        trials.append(TrialOutcome(n, params, value, 0.0853843, loss, (val,), PRIOR))
    return trials


def test_seed13_a_frozen_decoder_that_only_encoder_only_trials_resemble_is_flagged():
    # before: "encoder_bn=True does not learn" explained the frozen decoder (trial 8) as well as
    # a bug does, since the only other trials with it were encoder-only ones far below the level
    found = find_outliers(_seed13_like(SEED30_VAL[9]))
    assert set(found) == set(range(6, 14))  # every bug, no correct trial
    assert "its val loss ended at 1.15, above the 0.93 of predicting" in found[8].evidence
    assert (
        "only trials below the level share its values, so its neighbours say nothing of it; "
        "the learning trials' median is 0.15" in found[8].evidence
    )
    assert "no parameter explains it" in found[7].evidence  # shuffled: encoder_bn=False learns
    # without the val loss, or with one that says the model learned from its images (DeconvNets
    # without decoder BN ended at 0.70-0.90), the encoder_bn=True region explains it as before
    assert 8 not in find_outliers(_seed13_like(0.77))
    assert 8 not in find_outliers(_seed13_like(0.895))
    no_val = [
        TrialOutcome(t.number, t.params, t.value, t.majority_miou, t.train_loss)
        for t in _seed13_like(SEED30_VAL[9])
    ]
    assert 8 not in find_outliers(no_val)


def test_a_stuck_trial_explained_by_trials_like_it_is_not_judged_by_its_val_loss():
    # two frozen-looking trials with encoder_bn=True and no learner among them: the region holds
    # a trial stuck at the level besides the first, so it explains both, whatever their loss
    trials = _seed13_like(SEED30_VAL[9])
    twin = trials[8]
    trials[10] = TrialOutcome(
        10,
        {**twin.params, "lr": twin.params["lr"] * 1.1},
        twin.value,
        twin.majority_miou,
        twin.train_loss,
        twin.val_loss,
        PRIOR,
    )
    found = find_outliers(trials)
    assert 8 not in found and 10 not in found


# the test-size blind bug demo (tests/sweep/test_bugdemo.py, seed 51: 64 px, 6 epochs), as it ran
# on 2 December 2026: lr, injected bug, best val mIoU, train/loss per epoch
TEST_SIZE = (
    (0.00469, None, 0.08045, (2.093, 1.760, 1.422, 1.186, 1.095, 1.044)),
    (0.00393, None, 0.08130, (2.130, 1.822, 1.559, 1.286, 1.147, 1.046)),
    (0.00349, None, 0.11480, (2.190, 1.792, 1.469, 1.175, 1.026, 0.927)),
    (0.00310, None, 0.09868, (2.189, 1.911, 1.648, 1.397, 1.185, 1.089)),
    (0.00313, "enc-only", 0.02765, (2.490, 2.472, 2.465, 2.454, 2.460, 2.452)),
    (0.00492, None, 0.10852, (2.105, 1.717, 1.334, 1.099, 1.011, 0.939)),
    (0.00548, "enc-only", 0.02765, (2.490, 2.472, 2.465, 2.454, 2.460, 2.452)),
)


def test_slow_correct_trials_just_above_the_level_next_to_weak_learners_are_not_flagged():
    # trials 0 and 1 end 0.001-0.002 above the level 0.0794 with a falling loss while the
    # learners reach only 0.10-0.115: 0.04 below what their neighbours predict, not the 0.05 the
    # neighbour rule asks, so not a bug; the encoder-only trials are
    trials = [
        TrialOutcome(i, {"lr": lr}, value, 0.0794406, loss)
        for i, (lr, _, value, loss) in enumerate(TEST_SIZE)
    ]
    assert set(find_outliers(trials)) == {4, 6}
    # the same two trials with learners that reach 0.15 are as far below them as a bug
    better = [
        TrialOutcome(t.number, t.params, t.value + 0.04, t.majority_miou, t.train_loss)
        if t.number in (2, 3, 5)
        else t
        for t in trials
    ]
    assert set(find_outliers(better)) == {0, 1, 4, 6}
