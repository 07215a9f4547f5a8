"""W&B tracking, read back offline with ``wandb leet inspect`` (the reader wandb 0.31 ships)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness import __version__
from harness.cli import main
from harness.config import FLAT_KEYS, with_overrides
from harness.data.dataset import fixed_val_indices
from harness.data.loaders import load_data
from harness.fit import Callback, StopTrial, fit
from harness.fit.record import read_metrics
from harness.models import build_model
from harness.tracking import MaskPanel, TrialStart, WandbTracker
from harness.tracking import base as tracking_base
from harness.tracking import wandb as tracking_wandb
from harness.tracking.wandb import AUDIT_TABLE_KEY, MEDIA_KEY

SECRET = "local-" + "s3cr3t" * 8  # a well-formed API key that must never be written anywhere


@pytest.fixture(autouse=True)
def _fresh_tracking_state(monkeypatch):
    """Each test starts like a new process: no message said yet, online not known to fail."""
    monkeypatch.setattr(tracking_base, "_said", set())
    monkeypatch.setattr(tracking_wandb, "_online_broken", [])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _leet(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def read_wandb_run(run_dir: Path) -> dict:
    """The offline W&B run of a trial: identity, history and artifacts from the records of its
    .wandb transaction log; state, tags, config and summary from leet's own ``--summary`` view
    (which folds summary updates as W&B does)."""
    (sync_dir,) = (Path(run_dir) / "wandb").glob("offline-run-*")
    records = [json.loads(line) for line in _leet("--json", str(sync_dir)).splitlines() if line]
    view = json.loads(_leet("--summary", "--json", str(sync_dir)))
    return {
        "run": next(r["run"] for r in records if r["type"] == "run"),  # as wandb.init set it
        "history": [r["history"]["item"] for r in records if r["type"] == "history"],
        "artifacts": [r["artifact"] for r in records if r["type"] == "artifact"],
        "config_updates": [r["config"]["update"] for r in records if r["type"] == "config"],
        "state": view["state"],
        "exit_code": view["exit_code"],
        "tags": view["tags"],
        "config": view["config"],
        "summary": view["summary"],
        "dir": sync_dir,
    }


def _norm(value):
    """NaN is null in the local record, "NaN" or null in W&B's JSON: compare them as one. W&B
    drops empty mappings (``model.args: {}``) from a run's config."""
    if value is None or value == "NaN" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if v != {}}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value


def _metrics(item: dict) -> dict:
    return {k: v for k, v in item.items() if not k.startswith(("_", MEDIA_KEY))}


def _media(item: dict) -> dict:
    """The mask panel of a history row (leet flattens it to "val/masks.<field>" keys)."""
    prefix = MEDIA_KEY + "."
    return {k.removeprefix(prefix): v for k, v in item.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_offline_run_holds_identity_config_history_masks_and_summary(tiny_cfg):
    cfg = with_overrides(
        tiny_cfg, {"train.epochs": 2, "tracking.media_every": 5, "tracking.log_model": True}
    )
    result = fit(cfg)
    assert result.status == "finished"
    wb = read_wandb_run(cfg.run_dir)

    assert wb["run"]["run_group"] == "manual" and wb["run"]["job_type"] == "trial"
    assert wb["run"]["display_name"] == "t" and wb["run"]["project"] == "harness"
    assert wb["state"] == "finished" and wb["exit_code"] == 0

    config = wb["config"]
    assert set(FLAT_KEYS) <= set(config)
    assert config["lr"] == cfg.optim.lr and config["f_lr"] == cfg.optim.f_lr
    assert (config["encoder_bn"], config["fcn_bn"], config["decoder_bn"]) == (True, True, True)
    assert _norm(config["trial_config"]) == _norm(cfg.to_dict())  # the full resolved config
    dataset = json.loads((cfg.run_dir / "dataset.json").read_text())["dataset"]
    assert config["dataset"]["content_hash"] == dataset["content_hash"]
    assert config["dataset"]["root"] == dataset["root"]
    assert config["harness_version"] == __version__

    # per-epoch history: exactly the metrics.jsonl rows, step = epoch
    rows = read_metrics(cfg.run_dir)
    assert [h["_step"] for h in wb["history"]] == [1, 2]
    assert [_norm(_metrics(h)) for h in wb["history"]] == [_norm(r) for r in rows]

    # masks on the final epoch only (media_every=5 > 2 epochs), for a fixed set of val images
    assert not _media(wb["history"][0])
    panel = _media(wb["history"][1])
    assert panel["_type"] == "images/separated" and panel["count"] == 8
    assert all({"prediction", "ground_truth"} <= set(m) for m in panel["all_masks"])
    labels = wb["config_updates"][-1]["_wandb"]["mask/class_labels"]
    gt = next(v["value"] for k, v in labels.items() if k.endswith("ground_truth"))
    assert gt["0"] == "background" and gt["255"] == "ignore"
    assert len(list((wb["dir"] / "files" / "media" / "images" / "mask").rglob("*.png"))) == 16

    # summary: the same values as summary.json, the final metrics, the audit
    local = json.loads((cfg.run_dir / "summary.json").read_text())
    for key in ("status", "reason", "best_val_mIoU", "best_epoch", "per_class_iou", "flags"):
        assert _norm(wb["summary"].get(key)) == _norm(local[key]), key  # W&B drops None
    assert wb["summary"]["wall_time_s"] == local["wall_time_s"]
    assert {k: _norm(wb["summary"][k]) for k in rows[-1]} == _norm(rows[-1])
    assert wb["summary"]["audit/ok"] is True and wb["summary"]["audit/n_findings"] == 0
    assert wb["summary"][AUDIT_TABLE_KEY]["_type"] == "table-file"
    assert wb["tags"] == []

    (artifact,) = (a for a in wb["artifacts"] if a["type"] == "model")
    assert artifact["name"] == "model-t" and "best" in artifact["aliases"]
    assert [c["path"] for c in artifact["manifest"]["contents"]] == ["best.pt"]
    assert local["tracking"]["mode"] == "offline" and local["tracking"]["group"] == "manual"


@pytest.mark.slow
def test_story_bug_is_tagged_and_a_pruned_trial_is_not_a_crash(tiny_cfg):
    class Prune(Callback):
        def on_epoch_end(self, epoch, row):
            raise StopTrial("below the median")

    cfg = with_overrides(
        tiny_cfg, {"train.epochs": 3, "train.inject_bug": "encoder-only-optimizer"}
    )
    tracker = WandbTracker(group="study-a", tags=["sweep"], extra_config={"trial_number": 7})
    result = fit(cfg, callbacks=[Prune()], tracker=tracker)
    assert result.status == "pruned"
    wb = read_wandb_run(cfg.run_dir)
    assert wb["run"]["run_group"] == "study-a" and wb["config"]["trial_number"] == 7
    assert wb["state"] == "finished" and wb["exit_code"] == 0  # not shown as a crash
    assert wb["summary"]["status"] == "pruned"
    assert wb["summary"]["reason"] == "epoch 1: below the median"
    assert {"sweep", "pruned", "inject:encoder-only-optimizer"} <= set(wb["tags"])
    assert {"audit:missing:fcn", "audit:missing:decoder", "audit:missing:head"} <= set(wb["tags"])
    assert wb["summary"]["audit/ok"] is False and wb["summary"]["audit/n_findings"] == 3
    assert wb["summary"]["audit/missing:decoder"].startswith("decoder: 0 of")
    assert wb["config"]["inject_bug"] == "encoder-only-optimizer"
    (last,) = wb["history"]  # pruned at epoch 1: that is its end, so it gets the mask panel
    assert _media(last)["count"] == 8


@pytest.mark.slow
def test_failed_trials_end_failed_and_later_trials_still_log(tiny_cfg):
    class Boom(Callback):
        def on_epoch_end(self, epoch, row):
            raise RuntimeError("monitor crashed")

    crashed = with_overrides(tiny_cfg, {"name": "crashed", "train.epochs": 2})
    with pytest.raises(RuntimeError, match="monitor crashed"):
        fit(crashed, callbacks=[Boom()])
    wb = read_wandb_run(crashed.run_dir)
    assert wb["state"] == "failed" and wb["exit_code"] != 0
    assert (
        wb["summary"]["reason"]
        == "check-failed:Boom: on_epoch_end raised RuntimeError: monitor crashed"
    )
    assert [h["epoch"] for h in wb["history"]] == [1]  # the epoch the record holds, too

    nan = with_overrides(tiny_cfg, {"name": "nan", "optim.lr": 1e30, "optim.f_lr": 1e30})
    assert fit(nan).status == "failed"
    wb = read_wandb_run(nan.run_dir)
    assert wb["state"] == "failed" and "nan-loss" in wb["tags"] and "failed" in wb["tags"]
    assert "loss is" in wb["summary"]["reason"]

    later = with_overrides(tiny_cfg, {"name": "later"})
    assert fit(later).status == "finished"
    wb = read_wandb_run(later.run_dir)
    assert wb["state"] == "finished" and wb["run"]["display_name"] == "later"
    assert [_norm(_metrics(h)) for h in wb["history"]] == _norm(read_metrics(later.run_dir))


@pytest.mark.slow
def test_none_local_and_disabled_write_no_wandb_files(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    common = ["trial", "--data", str(tiny_data), "--out", str(runs), "--image-size", "64",
              "--fc-channels", "32", "--fc-kernel", "2", "--epochs", "1", "-q"]  # fmt: skip
    assert main([*common, "--name", "none", "--tracking", "none"]) == 0
    assert main([*common, "--name", "local", "--tracking", "local"]) == 0
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main([*common, "--name", "disabled"]) == 0  # the default backend: wandb
    assert not list(runs.rglob("wandb")) and not list(runs.rglob("*.wandb"))
    assert yaml.safe_load((runs / "none" / "config.yaml").read_text())["tracking"]["backend"] == (
        "none"
    )
    summary = json.loads((runs / "disabled" / "summary.json").read_text())
    assert summary["tracking"] == {
        "backend": "wandb",
        "mode": "disabled",
        "why": "WANDB_MODE=disabled",
    }
    assert [p.name for p in (runs / "local" / "media").iterdir()] == ["masks-epoch-001.png"]
    assert not (runs / "none" / "media").exists()


@pytest.mark.slow
def test_mask_panel_is_fixed_and_leaves_model_and_rng_untouched(tiny_cfg):
    bundle = load_data(tiny_cfg)
    panel = MaskPanel.build(bundle.val, bundle.class_names, bundle.ignore_index, k=5, batch_size=2)
    assert panel is not None and panel.indices == fixed_val_indices(len(bundle.val), 5)
    assert panel.images.shape == (5, 64, 64, 3) and panel.images.dtype == np.uint8
    assert panel.truth.shape == (5, 64, 64) and panel.class_labels[255] == "ignore"
    model = build_model(tiny_cfg.model, num_classes=bundle.num_classes).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats included
    rng = torch.get_rng_state()
    pred = panel.predict(model, torch.device("cpu"))
    assert pred.shape == (5, 64, 64) and pred.max() < bundle.num_classes
    assert model.training  # restored: the next epoch trains as it would have
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.slow
def test_start_failures_fall_back_to_offline_then_to_the_local_record(
    tiny_cfg, monkeypatch, capsys
):
    import wandb

    real_init = wandb.init
    modes = []

    def flaky_init(*args, **kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError(f"connection refused for key {SECRET}")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky_init)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # "logged in": W&B tries online first
    first = fit(with_overrides(tiny_cfg, {"name": "first"}))
    second = fit(with_overrides(tiny_cfg, {"name": "second"}))
    err = capsys.readouterr().err
    assert first.status == second.status == "finished"
    assert modes == ["online", "offline", "offline"]  # online is not retried in this process
    assert "W&B could not start online" in err and "falling back to offline" in err
    assert err.count("Upload later with: wandb sync") == 1  # said once
    assert SECRET not in err
    assert first.summary["tracking"]["mode"] == "offline"
    assert read_wandb_run(first.run_dir)["state"] == "finished"

    def broken_init(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(wandb, "init", broken_init)
    third = fit(with_overrides(tiny_cfg, {"name": "third"}))
    err = capsys.readouterr().err
    assert third.status == "finished" and third.summary["tracking"]["mode"] == "local-only"
    assert "W&B could not start (OSError: disk full): this trial is recorded locally only" in err
    assert not list((third.run_dir / "wandb").glob("offline-run-*"))
    assert read_metrics(third.run_dir)


def test_a_run_that_fails_to_close_after_a_failed_start_is_said_too(tiny_cfg, monkeypatch):
    class Unclosable:
        def finish(self, exit_code):
            raise OSError("socket closed")

    def half_started(self, trial, mode, why):
        self.run = Unclosable()
        raise RuntimeError("init timed out")

    monkeypatch.setattr(WandbTracker, "_start", half_started)
    said = []
    tracker = WandbTracker(say=said.append)
    trial = TrialStart(cfg=tiny_cfg, model=torch.nn.Linear(1, 1), device=torch.device("cpu"),
                       bundle=None, audit=None)  # fmt: skip
    tracker.start(trial)
    error = tracker.info()["error"]
    assert tracker.info()["mode"] == "local-only"
    assert "RuntimeError: init timed out" in error
    assert "closing the W&B run failed too: socket closed" in error
    assert said == [f"W&B could not start ({error}): this trial is recorded locally only"]


@pytest.mark.slow
def test_a_failure_while_finishing_the_run_reaches_summary_json(tiny_cfg, monkeypatch, capsys):
    """The summary is written before the W&B run is finished (so a hung upload cannot cost the
    record), and again when finishing changed what the tracker says: the failure is kept."""

    def fail(self, summary):
        raise OSError("artifact upload failed")

    monkeypatch.setattr(WandbTracker, "_finish", fail)
    result = fit(tiny_cfg)
    assert result.status == "finished"
    on_disk = json.loads((tiny_cfg.run_dir / "summary.json").read_text())
    assert "OSError: artifact upload failed" in on_disk["tracking"]["error"]
    assert result.summary["tracking"] == on_disk["tracking"]
    assert capsys.readouterr().err.count("W&B logging failed (OSError") == 1


def _raising(exc: Exception):
    """A stand-in method that fails with ``exc``."""

    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.slow
def test_a_failing_mask_panel_turns_the_panel_off_not_the_w_and_b_run(
    tiny_cfg, monkeypatch, capsys
):
    monkeypatch.setattr(MaskPanel, "predict", _raising(RuntimeError("panel predict failed")))
    cfg = with_overrides(tiny_cfg, {"train.epochs": 2, "tracking.media_every": 1})
    result = fit(cfg)
    info = result.summary["tracking"]
    assert info["panel_error"] == "RuntimeError: panel predict failed" and "error" not in info
    run = read_wandb_run(cfg.run_dir)
    assert [row["epoch"] for row in run["history"]] == [1, 2]  # both epochs still logged
    assert run["state"] == "finished"
    assert capsys.readouterr().err.count("mask panel off for this trial") == 1


@pytest.mark.slow
def test_a_storage_password_on_the_command_line_never_reaches_the_wandb_files(
    tiny_cfg, monkeypatch
):
    """W&B records the process's command line as run metadata: a sweep's --storage URL would
    carry its password into every run file (and, synced, to the server)."""
    secret = "hunter2XYZ"
    argv = ["harness", "sweep", "s.yaml", "--storage", f"postgresql://me:{secret}@db:5432/h"]
    monkeypatch.setattr(sys, "argv", argv)
    fit(tiny_cfg)
    files = [p for p in (tiny_cfg.run_dir / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert any(b"postgresql://me:***@db:5432/h" in p.read_bytes() for p in files)
    assert sys.argv == argv  # the process's own argv is left as it was


@pytest.mark.slow
def test_wandb_error_mid_trial_leaves_the_trial_and_its_record_intact(
    tiny_cfg, monkeypatch, capsys
):
    def fail(self, row, final):
        raise ValueError("history write failed")

    monkeypatch.setattr(WandbTracker, "_log_epoch", fail)
    result = fit(tiny_cfg)
    assert result.status == "finished" and len(read_metrics(tiny_cfg.run_dir)) == 1
    assert capsys.readouterr().err.count("W&B logging failed (ValueError") == 1
    assert "history write failed" in result.summary["tracking"]["error"]
    assert read_wandb_run(tiny_cfg.run_dir)["state"] == "failed"


@pytest.mark.slow
def test_cli_run_falls_back_offline_writes_nothing_to_home_and_no_key(tiny_data, tmp_path):
    """A real online attempt against a closed local port (no network needed), in a fresh
    process whose home folder is empty."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "WANDB_"))}
    env.pop("MPLCONFIGDIR", None)
    env.update(
        HOME=str(home),
        WANDB_API_KEY=SECRET,  # "logged in", so W&B tries online first
        WANDB_BASE_URL="http://127.0.0.1:9",  # nothing listens there: refused at once
        WANDB_INIT_TIMEOUT="3",
    )
    args = ["trial", "--data", str(tiny_data), "--out", "runs", "--name", "h", "--image-size",
            "64", "--fc-channels", "32", "--fc-kernel", "2", "--epochs", "1", "--log-model",
            "--wandb-project", "p1", "--wandb-entity", "me", "-q"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "W&B could not start online (CommError" in proc.stderr
    assert "W&B offline, online failed to start. Upload later with: wandb sync" in proc.stderr
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == []
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "artifacts").exists()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    wb = read_wandb_run(tmp_path / "runs" / "h")
    assert wb["run"]["project"] == "p1" and wb["run"]["entity"] == "me"
    assert wb["state"] == "finished"
    assert any(a["type"] == "model" for a in wb["artifacts"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tracking", "mlflow"], "error: tracking.backend='mlflow': must be one of wandb, local"),
        (["--wandb-project", "a/b"], "error: tracking.project='a/b': must be 1-128 characters"),
    ],
)
def test_bad_tracking_options_exit_2(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["trial", *args]) == 2
    assert capsys.readouterr().err.startswith(message)
