"""Benchmarks that print ratios measured in one run (not timed tests: machines are noisy).

(a) masks: reading decoded masks from the cache vs decoding them with pycocotools every time.
(b) overhead: ``fit``'s training throughput vs a bare PyTorch loop (``bare.py``) over the same
    model, batches, device and settings. Runs alternate (bare, fit, bare, fit, ...) and the
    median epoch throughput of each is compared, so drift in machine load hits both sides alike.
(c) W&B: trial throughput (training images / trial wall time, which includes W&B's start, the
    mask panels and finish) with ``--tracking wandb`` (offline) vs ``--tracking none``, in
    rounds of one trial each, back to back (the order flips every round); the median of the
    rounds' ratios is reported, and beside it the time spent inside W&B's calls.
(d) pruning: the default study (``sweeps/default.yaml`` as shipped) run without pruning, then the
    same configurations, in the same order, with its median pruner; best val mIoU and epochs
    trained of each. Holding the sequence fixed makes pruning the only difference: two
    free-running TPE studies part ways after the first pruned trial, and their bests then differ
    by the sampler's luck (0.00 to 0.08 for sampler seeds 0-3 here), more than the target.
(eda) ``harness eda`` on a random competition-sized set (3,272 images of 512x512, about 25,000
    annotations): wall time of load + validate, analysis and report against the 120 s target.
(outliers) the study-level detector's recall and false flags on simulated studies, v1 vs v2
    (``harness/bench/outliers.py``; seconds, no training).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.bench import BENCHMARKS
from harness.bench.bare import bare_loop_throughput
from harness.bench.fixtures import bench_eda, bench_masks
from harness.bench.outliers import report_outliers
from harness.config import TrialConfig, with_overrides
from harness.config.sweep import load_spec, with_options
from harness.data.loaders import load_data
from harness.fit import fit
from harness.sweep.attrs import attrs_of
from harness.sweep.pruner import median_replay, replay_of
from harness.sweep.storage import storage_url
from harness.sweep.study import create_study
from harness.sweep.view import best_trial, trials_of
from harness.sweep.workers import run_sweep
from harness.tracking import Tracker, TrialStart, make_tracker


def bench_overhead(cfg: TrialConfig, rounds: int = 3, epochs: int = 2) -> dict[str, float]:
    bundle = load_data(cfg)
    bare: list[float] = []
    harness: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            bare += bare_loop_throughput(cfg, bundle, epochs)
            run_cfg = dataclasses.replace(cfg, name=f"bench-{r}", out_dir=tmp)
            result = fit(run_cfg, data=bundle)
            harness += [row["time/train_img_per_s"] for row in result.history]
    return {
        "bare_img_per_s": statistics.median(bare),
        "fit_img_per_s": statistics.median(harness),
        "ratio": statistics.median(harness) / statistics.median(bare),
    }


class _TimedTracker(Tracker):
    """Delegates to a tracker and adds up the wall time spent in its calls."""

    def __init__(self, inner: Tracker) -> None:
        self.inner = inner
        self.seconds = 0.0

    def _timed(self, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def start(self, trial: TrialStart) -> None:
        self._timed(self.inner.start, trial)

    def log_epoch(self, row: Mapping[str, Any], *, final: bool) -> None:
        self._timed(self.inner.log_epoch, row, final=final)

    def finish(self, summary: Mapping[str, Any]) -> None:
        self._timed(self.inner.finish, summary)

    def info(self) -> dict[str, Any]:
        return self.inner.info()


def bench_tracking(cfg: TrialConfig, rounds: int = 3) -> dict[str, Any]:
    """Trial throughput with W&B offline vs no tracking, and the time spent in W&B's own calls
    (a direct measure that machine-load noise between trials cannot swamp)."""
    bundle = load_data(cfg)
    rates: dict[str, list[float]] = {"none": [], "wandb": []}
    share: list[float] = []  # W&B call time / trial wall time
    calls: list[float] = []
    previous = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "offline"  # a benchmark never uploads, logged in or not
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds):
                for backend in ("none", "wandb") if r % 2 == 0 else ("wandb", "none"):
                    run_cfg = with_overrides(
                        cfg, {"name": f"{backend}-{r}", "out_dir": tmp, "tracking.backend": backend}
                    )
                    tracker = _TimedTracker(make_tracker(run_cfg))
                    result = fit(run_cfg, data=bundle, tracker=tracker)
                    images = sum(
                        row["time/train_img_per_s"] * row["time/epoch_s"] for row in result.history
                    )
                    rates[backend].append(images / result.wall_time_s)
                    if backend == "wandb":
                        calls.append(tracker.seconds)
                        share.append(tracker.seconds / result.wall_time_s)
    finally:
        if previous is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = previous
    none, wandb = statistics.median(rates["none"]), statistics.median(rates["wandb"])
    # each round's two trials ran back to back: their ratio is the least exposed to load drift
    per_round = [w / n for w, n in zip(rates["wandb"], rates["none"], strict=True)]
    return {
        "none_img_per_s": none,
        "wandb_img_per_s": wandb,
        "ratio": statistics.median(per_round),
        "round_ratios": per_round,
        "wandb_call_s": statistics.median(calls),
        "wandb_call_s_first": calls[0],
        "direct_ratio": 1.0 - statistics.median(share),
    }


def bench_pruning(sweep_file: Path, out: Path, quick: bool = False) -> dict[str, dict[str, float]]:
    """(d): the study as shipped (same sampler seed, same pruner settings) run with no pruning,
    then its trials' parameters, enqueued in the same order, run again with the median pruner.
    Best val mIoU of each (the best trial no check flagged, as ``harness best`` reports it), the
    epochs trained in all, trials pruned and wall time."""
    spec = with_options(
        load_spec(sweep_file), out=str(out), trial_overrides={"tracking.backend": "none"}
    )
    if quick:  # a smoke run: a few short trials
        spec = with_options(spec, n_trials=4, trial_overrides={"train.epochs": 3})
    results: dict[str, dict[str, float]] = {}
    sequence: list[dict[str, Any]] = []
    for pruner in ("none", "median"):
        run = dataclasses.replace(
            spec, study=f"bench-{pruner}", pruner=dataclasses.replace(spec.pruner, name=pruner)
        )
        start = time.perf_counter()
        if sequence:  # the median study evaluates exactly what the first one sampled
            study = create_study(run, storage_url(run))
            for params in sequence:
                study.enqueue_trial(params)
        trials = trials_of(run_sweep(run))
        if not sequence:
            sequence = [t.params for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            curves = replay_of(trials)
            floors = [attrs_of(t).majority_miou for t in trials]
            floor = next((f for f in floors if f is not None), None)
            for key, skip in (("replay", True), ("replay_optuna", False)):
                best_r, epochs_r = median_replay(
                    curves,
                    spec.pruner.n_startup_trials,
                    spec.pruner.n_warmup_epochs,
                    skip_flagged=skip,
                    # Optuna's plain rule has no floor; the harness's has it when switched on
                    floor=floor if skip and spec.pruner.majority_floor else None,
                )
                best_r = best_r if math.isfinite(best_r) else float("nan")  # none finished
                results[key] = {"best": best_r, "epochs": float(epochs_r)}
        best = best_trial(trials)
        results[pruner] = {
            "best": best.value if best is not None else float("nan"),
            "best_trial": float(best.number) if best is not None else float("nan"),
            "epochs": float(sum(attrs_of(t).epochs_run for t in trials)),
            "trials": float(len(trials)),
            "pruned": float(sum(t.state.name == "PRUNED" for t in trials)),
            "wall_s": time.perf_counter() - start,
        }
    return results


def pruning_setup(sweep_file: Path, quick: bool = False) -> str:
    """What (d) runs, in words: the study's size, sampler and pruner settings."""
    spec = load_spec(sweep_file)
    n_trials, epochs = (4, 3) if quick else (spec.n_trials, spec.base.train.epochs)
    s = spec.sampler
    sampler = f"{s.name} sampler (seed {s.seed}"
    sampler += f", {s.n_startup_trials} start-up trials)" if s.name == "tpe" else ")"
    return (
        f"{sweep_file.name}{' (quick)' if quick else ''}: {n_trials} trials of up to {epochs} "
        f"epochs, {sampler}, no pruning; then the same configurations in the same order with "
        f"the median pruner (n_startup_trials {spec.pruner.n_startup_trials}, n_warmup_epochs "
        f"{spec.pruner.n_warmup_epochs}, majority floor "
        f"{'on' if spec.pruner.majority_floor else 'off'}; flagged trials out of its median)"
    )


def run_benchmarks(quick: bool = False, only: Collection[str] = BENCHMARKS) -> None:
    """Run the benchmarks named in ``only`` (all by default), in the order of ``BENCHMARKS``."""
    console = Console(highlight=False)
    if "a" in only:
        bench_mask_cache(console, quick=quick)
    if "b" in only or "c" in only:
        bench_fit_and_tracking(console, quick=quick, only=only)
    if "d" in only:
        report_pruning(console, quick=quick)
    if "eda" in only:
        bench_eda_speed(console, quick=quick)
    if "outliers" in only:
        report_outliers(console, quick=quick)


def bench_mask_cache(console: Console, quick: bool = False) -> None:
    n_images = 50 if quick else 200
    console.print(f"[bold](a) mask cache[/]: {n_images} images of 512x512, 10 polygons each")
    with tempfile.TemporaryDirectory() as tmp:
        m = bench_masks(n_images=n_images, size=512, anns_per_image=10, tmp_dir=Path(tmp))
    console.print(
        f"    pycocotools decode+paint {m['decode_s'] * 1e3 / n_images:.2f} ms/image, "
        f"cache read {m['cache_s'] * 1e3 / n_images:.3f} ms/image "
        f"(one-off build {m['build_s']:.2f}s)  ->  speed-up {m['speedup']:.1f}x (target >= 5x)"
    )


def bench_fit_and_tracking(
    console: Console, quick: bool = False, only: Collection[str] = BENCHMARKS
) -> None:
    """(b) and (c), whichever ``only`` names: both use the default CPU trial."""
    cfg = with_overrides(
        TrialConfig(),
        # (b) measures the harness alone; (c) turns W&B on, offline, round by round
        {"train.checkpoint": False, "train.epochs": 1 if quick else 2, "tracking.backend": "none"},
    )
    rounds = 1 if quick else 3
    if "b" in only:
        console.print(
            f"[bold](b) fit overhead[/]: built-in dataset, default CPU model, batch "
            f"{cfg.train.batch_size}, {rounds} alternating rounds of {cfg.train.epochs} epochs"
        )
        o = bench_overhead(cfg, rounds=rounds, epochs=cfg.train.epochs)
        console.print(
            f"    bare loop {o['bare_img_per_s']:.1f} img/s, fit {o['fit_img_per_s']:.1f} img/s"
            f"  ->  ratio {o['ratio']:.3f} (target >= 0.9)"
        )
    if "c" not in only:
        return
    console.print(
        f"[bold](c) W&B overhead[/]: trial throughput, --tracking wandb (offline) vs none, "
        f"{rounds} alternating rounds of {cfg.train.epochs} epochs"
    )
    t = bench_tracking(cfg, rounds=rounds)
    console.print(
        f"    none {t['none_img_per_s']:.1f} img/s, wandb offline {t['wandb_img_per_s']:.1f} img/s"
        f"  ->  ratio {t['ratio']:.3f} (target >= 0.95; median of the rounds' ratios "
        + ", ".join(f"{r:.3f}" for r in t["round_ratios"])
        + ")"
    )
    console.print(
        f"    time inside W&B calls: {t['wandb_call_s']:.2f}s per trial (median; the first in a "
        f"process {t['wandb_call_s_first']:.2f}s)  ->  direct ratio {t['direct_ratio']:.3f}"
    )


def report_pruning(console: Console, quick: bool = False) -> dict[str, dict[str, float]]:
    """(d), printed: both studies' results, then the gap and the epoch share against the targets."""
    sweep_file = Path(__file__).resolve().parents[1] / "sweeps" / "default.yaml"
    console.print(f"[bold](d) pruning[/]: {pruning_setup(sweep_file, quick)}", soft_wrap=True)
    with tempfile.TemporaryDirectory() as tmp:
        p = bench_pruning(sweep_file, Path(tmp), quick=quick)
    none, median = p["none"], p["median"]
    for name, r in (("none", none), ("median", median)):
        console.print(
            f"    {name:<6}: best val/mIoU {r['best']:.4f} (trial {r['best_trial']:.0f}), "
            f"{r['epochs']:.0f} epochs, {r['pruned']:.0f} of {r['trials']:.0f} trials pruned, "
            f"{r['wall_s']:.0f}s",
            soft_wrap=True,
        )
    replay = p["replay"]
    agrees = replay["epochs"] == median["epochs"] and abs(replay["best"] - median["best"]) < 1e-9
    console.print(
        f"    (the median rule replayed on the no-pruning curves predicts best "
        f"{replay['best']:.4f}, {replay['epochs']:.0f} epochs: "
        f"{'as measured' if agrees else 'NOT as measured'})",
        soft_wrap=True,
    )
    plain = p["replay_optuna"]
    console.print(
        f"    (Optuna's plain MedianPruner, no floor and flagged trials in its median, replayed "
        f"the same way: "
        f"best {plain['best']:.4f}, {plain['epochs']:.0f} epochs, "
        f"{plain['epochs'] / max(none['epochs'], 1):.0%})",
        soft_wrap=True,
    )
    gap = none["best"] - median["best"]
    share = median["epochs"] / max(none["epochs"], 1)
    met = gap <= 0.01 and share <= 0.6
    console.print(
        f"    ->  mIoU gap {gap:+.4f} (target <= 0.01), epochs {share:.0%} of no pruning's "
        f"(target <= 60%): {'met' if met else 'NOT met'}",
        soft_wrap=True,
    )
    return p


def bench_eda_speed(console: Console, quick: bool = False) -> dict[str, float]:
    """(eda): time ``harness eda`` end to end on a competition-sized random set."""
    n_train, n_val = (262, 66) if quick else (2617, 655)
    console.print(
        f"[bold](eda) harness eda[/]: {n_train + n_val} images of 512x512, random polygons"
    )
    e = bench_eda(n_train=n_train, n_val=n_val, size=512)
    console.print(
        f"    {e['annotations']:,.0f} annotations: load {e['load_s']:.1f}s, analyse "
        f"{e['analyze_s']:.1f}s, report {e['samples_s'] + e['report_s']:.1f}s  ->  "
        f"{e['total_s']:.1f}s (target <= 120s)",
        soft_wrap=True,
    )
    return e
