"""``harness sweep --nproc-per-trial N``: each trial on N processes, rank 0 reporting to the study
itself, so the pruner still stops trials (on the CPU with gloo; the GPU split is tested without
a GPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import yaml

from harness.cli import main
from harness.errors import HarnessError
from harness.sweep.devices import assign_devices

REPO = Path(__file__).resolve().parents[2]


def test_each_worker_gets_nproc_consecutive_gpus():
    slots = assign_devices(None, "0,1,2,3", 4, None, cpu_count=8, per_worker=2)
    assert [s.cuda_visible_devices for s in slots] == ["0,1", "2,3"]
    # through the parent's own CUDA_VISIBLE_DEVICES
    slots = assign_devices(None, None, 4, "4,5,6,7", per_worker=2)
    assert [s.cuda_visible_devices for s in slots] == ["4,5", "6,7"]
    # the CPU: nothing to split, as before
    assert [s.cuda_visible_devices for s in assign_devices(None, None, 0, None, per_worker=2)] == [
        None
    ]


def test_gpus_that_do_not_split_into_ranks_are_refused():
    with pytest.raises(HarnessError, match=r"--nproc-per-trial 2: the 3 GPU\(s\) 0,1,2 do not"):
        assign_devices(None, "0,1,2", 4, None, per_worker=2)


def test_nproc_per_trial_errors_are_one_line_exit_2(tmp_path, capsys):
    rc = main(["sweep", str(REPO / "sweeps" / "default.yaml"), "--out", str(tmp_path),
               "--nproc-per-trial", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: --nproc-per-trial=0: must be >= 1"
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_two_process_trial_is_pruned_by_the_study(tiny_data, tmp_path, monkeypatch):
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{path}" if path else str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the majority floor stops a tiny 1-epoch model at once: a pruning decision taken in rank 0
    doc = {
        "study": "s",
        "n_trials": 1,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_epochs": 0,
                   "majority_floor": True},
        "space": {"lr": {"low": 1e-4, "high": 1e-3, "log": True}},
        "trial": {
            "out_dir": str(tmp_path / "runs"),
            "data": {"root": str(tiny_data), "image_size": 64, "cache_dir": str(tmp_path / "c")},
            "model": {"width": 0.125, "fc_channels": 32, "fc_kernel": 2},
            "train": {"epochs": 3, "batch_size": 4, "device": "cpu"},
            "tracking": {"backend": "none"},
        },
    }  # fmt: skip
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(doc))
    rc = main(["sweep", str(sweep_file), "--nproc-per-trial", "2", "-q"])
    assert rc == 0
    storage = f"sqlite:///{tmp_path / 'runs' / 's' / 'study.db'}"
    (trial,) = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # rank 0 reported epoch 1, then both stopped
    assert "majority floor" in trial.user_attrs["reason"]
    assert isinstance(trial.user_attrs["majority_miou"], float)  # set by rank 0's callback
    summary = json.loads((tmp_path / "runs" / "s" / "trials" / "s-0" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] == 1
    assert summary["runtime"]["world_size"] == 2


def test_the_cli_names_the_link_variable_of_the_sweep():
    from harness import cli
    from harness.sweep.ranks import LINK_ENV

    assert cli.SWEEP_LINK_ENV == LINK_ENV
