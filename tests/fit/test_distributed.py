"""A trial on several processes (DistributedDataParallel), on the CPU with gloo and 2 ranks.

The slow tests start real processes: ``harness trial --nproc 2`` (the launcher, torchrun's agent
and two ranks) or two spawned ranks for the evaluation; on the 2-core box each takes 10-30 s.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import TrialConfig, with_overrides
from harness.data.loaders import load_data
from harness.errors import HarnessError
from harness.fit import evaluate, fit
from harness.fit.distributed import ShardSampler
from harness.fit.launch import (
    LaunchResult,
    RankFailure,
    check_nproc,
    exit_code,
    failure_reason,
    rank_environment,
)
from harness.fit.record import RECORD_FILES, NullRecord, amend_summary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rank_env(monkeypatch):
    """The ranks import this checkout of harness, and nothing leaks in from the environment."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{path}" if path else str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("HARNESS_RANK_FAULT", raising=False)
    return monkeypatch


def _trial_args(tiny_data: Path, tmp_path: Path, name: str, epochs: int = 2) -> list[str]:
    return [
        "trial",
        "--data", str(tiny_data),
        "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "runs"),
        "--name", name,
        "--image-size", "64",
        "--fc-channels", "32",
        "--fc-kernel", "2",
        "--epochs", str(epochs),
        "--batch-size", "4",
        "--tracking", "none",
        "--device", "cpu",
        "-q",
        "--nproc", "2",
    ]  # fmt: skip


def _processes_naming(text: str) -> list[int]:
    """Every live process whose command line contains ``text`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


# --- the pure pieces ------------------------------------------------------------------------------


def test_shard_sampler_takes_every_index_once_without_padding():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(ShardSampler(11, r, 3)) for r in range(3)] == [4, 4, 3]


@pytest.mark.parametrize(
    ("nproc", "device", "cuda", "message"),
    [
        (0, "cpu", 0, "--nproc=0: must be >= 1"),
        (-2, "auto", 0, "--nproc=-2: must be >= 1"),
        (2, "cuda:1", 2, "--nproc=2 with train.device=cuda:1: each rank runs on cuda:LOCAL_RANK"),
        (2, "cuda", 0, "--nproc=2 with train.device=cuda: CUDA is not available"),
        (4, "auto", 2, "--nproc=4: only 2 CUDA GPU(s) visible"),
        (2, "mps", 0, "--nproc=2 with train.device=mps"),
    ],
)
def test_nproc_that_cannot_run_is_refused(nproc, device, cuda, message):
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_nproc(nproc, device, cuda)


def test_nproc_that_fits_is_accepted():
    check_nproc(1, "cuda:3", 0)  # one process: the plain trial
    check_nproc(2, "cpu", 0)
    check_nproc(4, "auto", 4)
    check_nproc(3, "auto", 0)  # no CUDA: gloo on the CPU


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc", "0"], "error: --nproc=0: must be >= 1"),
        (["--nproc", "-1"], "error: --nproc=-1: must be >= 1"),
        (["--nproc", "2", "--device", "cuda:1"], "error: --nproc=2 with train.device=cuda:1"),
    ],
)
def test_cli_nproc_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
    rc = main(["trial", "--out", str(tmp_path / "runs"), "--name", "x", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(message) and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_the_cause_of_a_failed_trial_is_the_rank_that_crashed():
    died = [RankFailure(0, -15), RankFailure(1, 3)]  # rank 0 stopped by torchrun after rank 1
    assert failure_reason(died, "RuntimeError: peer gone") == (
        "rank 1 exited with code 3; rank 0: RuntimeError: peer gone"
    )
    assert failure_reason([RankFailure(1, -9)], None) == "rank 1 was killed by SIGKILL"
    # every rank ended with a recorded failure (exit 1): rank 0's own record says why
    assert failure_reason([RankFailure(0, 1), RankFailure(1, 1)], "epoch 1: nan") is None
    assert failure_reason([RankFailure(1, 1)], None) == "rank 1 exited with code 1"


def test_ranks_share_this_process_threads_unless_the_user_set_them():
    assert rank_environment(2, {"PATH": "/bin"}, 8) == {"PATH": "/bin", "OMP_NUM_THREADS": "4"}
    assert rank_environment(4, {}, 2)["OMP_NUM_THREADS"] == "1"  # never 0
    assert rank_environment(2, {"OMP_NUM_THREADS": "3"}, 8)["OMP_NUM_THREADS"] == "3"


def test_exit_code_of_the_launcher():
    assert exit_code(LaunchResult(0, ()), "finished") == 0
    assert exit_code(LaunchResult(0, ()), "pruned") == 0
    assert exit_code(LaunchResult(1, (RankFailure(1, 3),)), "failed") == 1
    assert exit_code(LaunchResult(1, (RankFailure(0, 2), RankFailure(1, 2))), None) == 2


def test_null_record_writes_nothing_and_amend_changes_only_given_fields(tmp_path):
    record = NullRecord(tmp_path / "run")
    record.write_config(TrialConfig(), {"x": 1})
    record.write_audit({})
    record.append_metrics({"epoch": 1})
    record.write_summary({"status": "finished"})
    assert not (tmp_path / "run").exists()
    assert amend_summary(tmp_path / "run", reason="x") is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "failed", "a": 1}))
    amend_summary(tmp_path / "run", reason="rank 1 exited with code 3")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == {"status": "failed", "a": 1, "reason": "rank 1 exited with code 3"}


# --- two ranks ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


N_VAL = 11  # odd: the two ranks hold 6 and 5 images, so any padding would show


def _eval_rank(rank: int, port: int, cfg_dict: dict, weights: str, out: str) -> None:
    """One of two spawned ranks: evaluate the saved model on this rank's val shard, summed."""
    from functools import partial

    from torch.utils.data import DataLoader, Subset

    from harness.config import config_from_dict
    from harness.fit import distributed as ddp
    from harness.models import build_model

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    cfg = config_from_dict(cfg_dict)
    ctx = ddp.from_env("cpu", timeout_s=60)
    assert ctx is not None
    bundle = load_data(cfg)
    model = build_model(cfg.model, num_classes=len(bundle.class_names))
    model.load_state_dict(torch.load(weights, weights_only=True))
    val = Subset(bundle.val, range(N_VAL))
    loader = DataLoader(val, batch_size=4, sampler=ShardSampler(N_VAL, rank, 2))
    criterion = torch.nn.CrossEntropyLoss(ignore_index=bundle.ignore_index)
    n = len(bundle.class_names)
    ev = evaluate(model, criterion, loader, torch.device("cpu"), n, bundle.ignore_index,
                  sync=partial(ddp.reduce_metrics, ctx))  # fmt: skip
    if rank == 0:
        keep = ("mIoU", "pixel_acc", "iou", "per_image_mIoU", "loss", "class_pixels")
        Path(out).write_text(json.dumps({k: ev[k] for k in keep}))
    ddp.teardown(ctx)


@pytest.mark.slow
def test_two_rank_evaluate_gives_the_single_process_miou(tiny_cfg, tmp_path, rank_env):
    from harness.models import build_model

    cfg = with_overrides(tiny_cfg, {"tracking.backend": "none"})
    result = fit(cfg)  # a trained model: its predictions are not all one class
    weights = tmp_path / "weights.pt"
    ckpt = torch.load(result.run_dir / "best.pt", weights_only=True)
    torch.save(ckpt["model"], weights)
    bundle = load_data(cfg)
    model = build_model(cfg.model, num_classes=len(bundle.class_names))
    model.load_state_dict(ckpt["model"])
    val = torch.utils.data.Subset(bundle.val, range(N_VAL))
    loader = torch.utils.data.DataLoader(val, batch_size=4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=bundle.ignore_index)
    n = len(bundle.class_names)
    one = evaluate(model, criterion, loader, torch.device("cpu"), n, bundle.ignore_index)

    out = tmp_path / "two.json"
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    args = (port, cfg.to_dict(), str(weights), str(out))
    procs = [ctx.Process(target=_eval_rank, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    two = json.loads(out.read_text())
    assert two["class_pixels"] == one["class_pixels"]  # every labelled pixel once
    assert two["mIoU"] == pytest.approx(one["mIoU"], abs=1e-6)
    assert two["pixel_acc"] == pytest.approx(one["pixel_acc"], abs=1e-9)
    assert two["iou"] == pytest.approx(one["iou"], abs=1e-9, nan_ok=True)
    assert two["per_image_mIoU"] == pytest.approx(one["per_image_mIoU"], abs=1e-9)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)


@pytest.mark.slow
def test_nproc_2_trial_writes_one_record_from_rank_0(tiny_data, tmp_path, rank_env, capsys):
    rc = main(_trial_args(tiny_data, tmp_path, "two"))
    out = capsys.readouterr().out
    assert rc == 0
    assert "starting 2 processes (on the CPU, gloo): torchrun --standalone" in out
    run = tmp_path / "runs" / "two"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two"]
    assert set(RECORD_FILES) <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer: a second would double the rows
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["flags"] == []
    assert 0.0 < summary["best_val_mIoU"] <= 1.0
    assert summary["best_val_mIoU"] == max(r["val/mIoU"] for r in rows)
    assert all(r["train/loss"] > 0 and 0 <= r["val/pixel_acc"] <= 1 for r in rows)
    runtime = summary["runtime"]
    assert runtime["world_size"] == 2 and runtime["backend"] == "gloo"
    assert runtime["rank_devices"] == ["cpu", "cpu"]
    assert (runtime["batch_size_per_rank"], runtime["global_batch_size"]) == (4, 8)
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert not _processes_naming(str(tmp_path / "runs"))  # every rank's --out


@pytest.mark.slow
def test_a_dying_rank_fails_the_trial_with_its_reason_and_nothing_is_left(
    tiny_data, tmp_path, rank_env, capsys
):
    rank_env.setenv("HARNESS_RANK_FAULT", "exit:1:1:3")  # rank 1 dies as epoch 1 starts
    rc = main(_trial_args(tiny_data, tmp_path, "dies"))
    err = capsys.readouterr().err
    assert rc == 1
    summary = json.loads((tmp_path / "runs" / "dies" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["reason"].startswith("rank 1 exited with code 3; rank 0: ")
    assert "failed: rank 1 exited with code 3" in err
    assert summary["epochs_run"] == 0
    assert not _processes_naming(str(tmp_path / "runs"))  # the agent's and every rank's --out


@pytest.mark.slow
def test_a_rank_whose_optimiser_differs_is_a_finding(tiny_data, tmp_path, rank_env):
    rank_env.setenv("HARNESS_RANK_FAULT", "optimizer:1")  # rank 1: head at 10x lr
    rc = main(_trial_args(tiny_data, tmp_path, "skew", epochs=1))
    assert rc == 0
    summary = json.loads((tmp_path / "runs" / "skew" / "summary.json").read_text())
    assert "ranks-differ:optimizer" in summary["flags"]
    evidence = summary["evidence"]["ranks-differ:optimizer"]
    assert "rank 1: 4 group(s)" in evidence and "head (81 elements, lr 0.03)" in evidence
    ranks = summary["ranks"]
    assert ranks[0]["optimizer"] != ranks[1]["optimizer"]


def test_the_rank_fault_is_read_only_from_its_variable(monkeypatch):
    from harness.faults import skew_optimizer_for_rank

    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=0.1)
    monkeypatch.delenv("HARNESS_RANK_FAULT", raising=False)
    skew_optimizer_for_rank(opt, 1)
    assert opt.param_groups[0]["lr"] == 0.1
    monkeypatch.setenv("HARNESS_RANK_FAULT", "optimizer:1")
    skew_optimizer_for_rank(opt, 0)
    assert opt.param_groups[0]["lr"] == 0.1
    skew_optimizer_for_rank(opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
