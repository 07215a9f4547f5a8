"""Which GPU each sweep worker gets, tested with fake GPU counts: no GPU needed."""

import itertools
import os

import pytest

from harness.errors import HarnessError
from harness.sweep import workers as workers_mod
from harness.sweep.devices import WorkerSlot, assign_devices, describe, parse_gpus


def test_cpu_nothing_changes():
    assert assign_devices(None, None, 0, None, cpu_count=8) == [WorkerSlot(0, None, 8)]
    assert assign_devices(1, None, 0, None, cpu_count=8) == [WorkerSlot(0, None, 8)]
    assert assign_devices(2, None, 0, None, cpu_count=8) == [
        WorkerSlot(0, None, 4),
        WorkerSlot(1, None, 4),
    ]
    assert describe(assign_devices(2, None, 0, None)) == "2 worker(s)"


def test_default_one_worker_per_visible_gpu():
    slots = assign_devices(None, None, 4, None, cpu_count=16)
    assert [s.cuda_visible_devices for s in slots] == ["0", "1", "2", "3"]
    assert [s.threads for s in slots] == [4, 4, 4, 4]
    assert describe(slots) == "4 worker(s) on GPUs 0,1,2,3"


def test_one_gpu_one_worker_inherits_the_environment():
    # runs in-process, as on the CPU: nothing to restrict
    assert assign_devices(None, None, 1, None) == [WorkerSlot(0, None, 1)]
    assert assign_devices(1, None, 4, None) == [WorkerSlot(0, None, 1)]


def test_gpus_pick_and_translate_through_the_parents_visible_list():
    slots = assign_devices(None, "1,3", 4, None)
    assert [s.cuda_visible_devices for s in slots] == ["1", "3"]
    # numbered as this process sees them: its own CUDA_VISIBLE_DEVICES is translated
    slots = assign_devices(None, "1", 2, "4,5")
    assert [s.cuda_visible_devices for s in slots] == ["5"]
    slots = assign_devices(None, "0,1", 2, "GPU-aaa,GPU-bbb")
    assert [s.cuda_visible_devices for s in slots] == ["GPU-aaa", "GPU-bbb"]


def test_more_workers_than_gpus_round_robin():
    slots = assign_devices(3, "0,1", 4, None, cpu_count=6)
    assert [(s.index, s.cuda_visible_devices, s.threads) for s in slots] == [
        (0, "0", 2),
        (1, "1", 2),
        (2, "0", 2),
    ]
    assert [s.cuda_visible_devices for s in assign_devices(2, None, 1, None)] == ["0", "0"]


@pytest.mark.parametrize(
    ("workers", "gpus", "visible", "message"),
    [
        (None, "0,7", 4, "--gpus 0,7: GPU 7 is not visible (4 visible)"),
        (None, "0", 0, "--gpus 0: no CUDA GPU is visible (the trials run on the CPU)"),
        (None, "0,0", 4, "--gpus 0,0: GPU 0 is given twice"),
        (None, "a,1", 4, "--gpus a,1: must be GPU numbers separated by commas, e.g. 0,1,2,3"),
        (None, "", 4, "--gpus : must be GPU numbers separated by commas, e.g. 0,1,2,3"),
        (0, None, 4, "--workers 0: must be >= 1"),
    ],
)
def test_errors_are_one_line(workers, gpus, visible, message):
    with pytest.raises(HarnessError) as exc:
        assign_devices(workers, gpus, visible, None)
    assert str(exc.value) == message


def test_exhaustive_with_fake_gpu_counts():
    for visible, workers in itertools.product(range(5), [None, 1, 2, 3, 5]):
        subsets = [None] + [
            ",".join(map(str, c))
            for k in range(1, visible + 1)
            for c in itertools.combinations(range(visible), k)
        ]
        for gpus in subsets:
            slots = assign_devices(workers, gpus, visible, None, cpu_count=8)
            chosen = parse_gpus(gpus) if gpus else list(range(visible))
            n = workers or (len(chosen) if chosen else 1)
            assert [s.index for s in slots] == list(range(n))
            assert all(s.threads == max(1, 8 // n) for s in slots)
            got = [s.cuda_visible_devices for s in slots]
            if not chosen or (n == 1 and gpus is None):
                assert got == [None] * n
            else:
                assert got == [str(chosen[i % len(chosen)]) for i in range(n)]
                # every chosen GPU is used when there are enough workers
                assert set(got) == {str(g) for g in chosen[:n]}


class _FakeProcess:
    def __init__(self, target, args, name):
        self.target, self.args, self.name = target, args, name


class _FakeContext:
    Process = _FakeProcess


def test_each_worker_process_is_started_with_its_gpu():
    slots = assign_devices(None, "0,2", 4, "3,4,5,6", cpu_count=8)
    procs = workers_mod.worker_processes(_FakeContext(), "SPEC", "sqlite:///x.db", slots)
    assert [p.name for p in procs] == ["worker-0", "worker-1"]
    assert all(p.target is workers_mod._worker_main for p in procs)
    assert [p.args for p in procs] == [
        ("SPEC", "sqlite:///x.db", 0, 4, "3", 1),  # 1: each trial on one process
        ("SPEC", "sqlite:///x.db", 1, 4, "5", 1),
    ]


def test_worker_main_sets_cuda_visible_devices_before_running(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # restored after the test
    seen = {}

    def fake_run_worker(spec, url, *, worker, nproc):
        seen.update(env=os.environ["CUDA_VISIBLE_DEVICES"], worker=worker, nproc=nproc)

    monkeypatch.setattr(workers_mod, "run_worker", fake_run_worker)
    monkeypatch.setattr("torch.set_num_threads", lambda n: seen.update(threads=n))
    workers_mod._worker_main("SPEC", "url", 1, 3, "2")
    assert seen == {"env": "2", "worker": 1, "threads": 3, "nproc": 1}


def test_worker_slots_on_a_fake_four_gpu_machine(monkeypatch):
    import torch

    from harness.config import TrialConfig
    from harness.config.sweep import SweepSpec

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = SweepSpec(study="s", n_trials=1, base=TrialConfig(), space=())
    assert len(workers_mod.worker_slots(spec, None, None)) == 4
    cpu = _with_device(spec, "cpu")  # trials on the CPU: the GPUs are not used
    assert workers_mod.worker_slots(cpu, None, None) == [WorkerSlot(0, None, os.cpu_count() or 1)]
    with pytest.raises(HarnessError, match=r"train.device=cuda:1: each sweep worker sees only"):
        workers_mod.worker_slots(_with_device(spec, "cuda:1"), None, "0,1")


def _with_device(spec, device):
    import dataclasses

    from harness.config import with_overrides

    return dataclasses.replace(spec, base=with_overrides(spec.base, {"train.device": device}))


def test_trial_table_has_a_device_column_only_when_a_trial_used_cuda():
    import optuna

    from harness.sweep.view import trial_rows, trial_table, used_cuda

    def trial(number, device):
        t = optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            user_attrs={"device": device, "epochs_run": 1, "status": "failed"},
        )
        t.number = number
        return t

    cpu = [trial(0, "cpu"), trial(1, "")]
    assert not used_cuda(cpu)
    assert [c.header for c in trial_table(cpu).columns][-4:] == [
        "epochs",
        "flags",
        "W&B run",
        "note",
    ]
    gpu = [trial(0, "cuda:2"), trial(1, "cuda:3")]
    assert used_cuda(gpu)
    headers = [c.header for c in trial_table(gpu).columns]
    assert headers[headers.index("epochs") + 1] == "device"
    rows = trial_rows(gpu, [], device=True)
    assert [r[headers.index("device")] for r in rows] == ["cuda:2", "cuda:3"]
