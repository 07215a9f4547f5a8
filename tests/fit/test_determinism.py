"""Same seed, same result: a short ``harness trial`` on the built-in dataset, pinned to a file.

The reference in ``tests/fit/reference/pin64/`` was recorded with the code as it was before the
package refactor (harness 0.1.0, on the 2-core CPU box, ``--device auto`` resolving to the CPU):

    harness trial --epochs 2 --image-size 64 --fc-kernel 2 --tracking none -q

on the built-in dataset (synth-v1) with all other defaults, seed 0. ``metrics.jsonl`` there is
that run's metrics without the ``time/*`` keys; ``reference.json`` holds the resolved config
(minus name, out_dir, cache_dir and device) and the dataset's identity (content hash, sizes).

The test re-runs the same trial through the CLI (built-in dataset generated fresh under
tmp_path, ``--device cpu`` so the pin also holds on a machine with a GPU) and compares every
non-time metric within ``TOLERANCE``: re-running on the CPU reproduces the values bit for bit,
the tolerance only leaves room for float noise of another CPU or BLAS build.

A change to the built-in data generator (``harness/data/synth.py`` ``VERSION``), to a default
in ``harness/config`` or to what a trial logs legitimately changes these values: the config and
dataset asserts below say which, and then the reference must be re-recorded, deliberately:

    NO_ALBUMENTATIONS_UPDATE=1 harness trial --epochs 2 --image-size 64 --fc-kernel 2 \\
        --tracking none -q --device cpu --seed 0 --name pin64 --out /tmp/pinruns \\
        --cache-dir /tmp/pinruns/cache

then copy its metrics.jsonl without the ``time/*`` keys to ``reference/pin64/metrics.jsonl`` and
update ``reference/pin64/reference.json`` from its config.yaml and dataset.json.

``val/prior_loss`` (the val loss of predicting the class frequencies) was added to what a trial
logs on 2 December 2026: its value was copied into the reference from the re-recorded run, whose
every other value matched the reference bit for bit.

The thread count is part of the pin: torch splits a convolution's sums across its threads, so
1 and 2 threads give different float sums and, after two epochs, different metrics. The
reference was recorded with 2 threads (torch's default on the 2-core box), and the test runs
with 2 threads whatever ``OMP_NUM_THREADS`` says.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from harness.cli import main

REFERENCE = Path(__file__).parent / "reference" / "pin64"
# on the CPU a re-run is bit-identical; this only absorbs another CPU's float noise
TOLERANCE = {"rel": 1e-4, "abs": 1e-6}
RECORDED_THREADS = 2
RUN_FILES = {
    "config.yaml",
    "dataset.json",
    "audit.json",
    "metrics.jsonl",
    "summary.json",
    "best.pt",
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pinned_run(tmp_path: Path) -> Path:
    rc = main(
        [
            "trial",
            "--epochs", "2",
            "--image-size", "64",
            "--fc-kernel", "2",
            "--tracking", "none",
            "--device", "cpu",
            "--seed", "0",
            "--name", "pin64",
            "--out", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"),
            "-q",
        ]
    )  # fmt: skip
    assert rc == 0
    return tmp_path / "runs" / "pin64"


@pytest.mark.slow
def test_seed0_trial_reproduces_the_recorded_metrics(tmp_path, two_threads):
    assert torch.get_num_threads() == RECORDED_THREADS
    run = _pinned_run(tmp_path)
    assert {p.name for p in run.iterdir()} == RUN_FILES

    ref = json.loads((REFERENCE / "reference.json").read_text())
    # a changed default or data generator changes the values legitimately: say so first
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key in ("name", "out_dir"):
        cfg.pop(key)
    cfg["data"].pop("cache_dir")
    cfg["train"].pop("device")
    assert cfg == ref["config"], "a default changed: re-record the reference (module docstring)"
    dataset = json.loads((run / "dataset.json").read_text())["dataset"]
    assert {k: dataset[k] for k in ref["dataset"]} == ref["dataset"], (
        "the built-in dataset changed (synth VERSION?): re-record the reference"
    )

    got = _rows(run / "metrics.jsonl")
    want = _rows(REFERENCE / "metrics.jsonl")
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want, strict=True):
        g = {k: v for k, v in g.items() if not k.startswith("time/")}
        assert set(g) == set(w), f"epoch {w['epoch']}: keys differ: {set(g) ^ set(w)}"
        differ = {k: (g[k], w[k]) for k in w if g[k] != pytest.approx(w[k], **TOLERANCE)}
        assert not differ, f"epoch {w['epoch']}: (got, recorded) differ: {differ}"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["best_val_mIoU"] == pytest.approx(max(r["val/mIoU"] for r in want), **TOLERANCE)
