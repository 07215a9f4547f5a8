import dataclasses
import json
import math

import pytest
import torch
import yaml

from harness.config import with_overrides
from harness.data.loaders import load_data
from harness.files import load_checkpoint
from harness.fit import AuditFailed, Callback, StopTrial, fit
from harness.fit.record import read_metrics
from harness.models import build_model


@pytest.mark.slow
def test_fit_writes_the_run_record(tiny_cfg):
    cfg = with_overrides(tiny_cfg, {"train.epochs": 2})
    result = fit(cfg)
    run = cfg.run_dir
    assert result.status == "finished" and result.epochs_run == 2
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "audit.json",
        "summary.json",
        "best.pt",
    }
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train/loss", "val/loss", "val/mIoU", "val/pixel_acc", "lr/encoder", "lr/decoder"):
        assert key in rows[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_mIoU"] == max(r["val/mIoU"] for r in rows)
    assert summary["best_epoch"] == result.best_epoch
    assert set(summary["per_class_iou"]) == set(result.per_class_iou)
    assert json.loads((run / "audit.json").read_text())["ok"] is True


@pytest.mark.slow
def test_best_checkpoint_loads_weights_only_and_reproduces_the_model(tiny_cfg):
    result = fit(tiny_cfg)
    ckpt = load_checkpoint(tiny_cfg.run_dir / "best.pt")
    assert ckpt["epoch"] == result.best_epoch
    assert ckpt["val_mIoU"] == pytest.approx(result.best_miou)
    model = build_model(tiny_cfg.model, num_classes=len(ckpt["class_names"]))
    model.load_state_dict(ckpt["model"])
    assert not list(tiny_cfg.run_dir.glob(".*.tmp"))  # atomic write left no temp file


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_cfg):
    a = fit(tiny_cfg)
    b = fit(dataclasses.replace(tiny_cfg, name="t2"))
    assert a.history[0]["train/loss"] == b.history[0]["train/loss"]
    assert a.history[0]["val/mIoU"] == b.history[0]["val/mIoU"]
    c = fit(with_overrides(tiny_cfg, {"name": "t3", "train.seed": 1}))
    assert c.history[0]["train/loss"] != a.history[0]["train/loss"]


@pytest.mark.slow
def test_augmented_trials_on_a_shared_dataset_repeat_a_fresh_run(tiny_cfg):
    """A sweep worker reuses one dataset for its trials, and the mask-pairing check draws
    augmented samples before training: neither may shift the augmentations a trial trains on."""
    cfg = with_overrides(tiny_cfg, {"data.augment": True})
    fresh = fit(cfg)
    shared = load_data(cfg)
    first = fit(dataclasses.replace(cfg, name="t2"), data=shared)
    second = fit(dataclasses.replace(cfg, name="t3"), data=shared)  # after the first's draws
    unchecked = fit(with_overrides(cfg, {"name": "t4", "train.monitor": False}))
    losses = [r.history[0]["train/loss"] for r in (fresh, first, second, unchecked)]
    assert losses == [fresh.history[0]["train/loss"]] * 4


@pytest.mark.slow
def test_nan_loss_ends_the_trial_with_the_reason(tiny_cfg):
    cfg = with_overrides(tiny_cfg, {"optim.lr": 1e30, "optim.f_lr": 1e30, "train.epochs": 3})
    result = fit(cfg)
    assert result.status == "failed"
    assert "loss is nan" in result.reason or "loss is inf" in result.reason
    assert "nan-loss" in result.flags
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == result.reason


@pytest.mark.slow
def test_story_bug_is_recorded_and_strict_aborts(tiny_cfg):
    cfg = with_overrides(tiny_cfg, {"train.inject_bug": "encoder-only-optimizer"})
    result = fit(cfg)
    assert {"audit:missing:fcn", "audit:missing:decoder", "audit:missing:head"} <= set(result.flags)
    audit = json.loads((cfg.run_dir / "audit.json").read_text())
    assert audit["ok"] is False and any(m.startswith("decoder.") for m in audit["missing"])
    strict = with_overrides(cfg, {"name": "strict", "train.strict": True})
    with pytest.raises(AuditFailed, match="decoder: 0 of"):
        fit(strict)
    summary = json.loads((strict.run_dir / "summary.json").read_text())
    assert summary["status"] == "aborted" and not (strict.run_dir / "metrics.jsonl").exists()


@pytest.mark.slow
def test_buggy_optimizer_leaves_decoder_untouched(tiny_cfg):
    cfg = with_overrides(tiny_cfg, {"train.inject_bug": "encoder-only-optimizer"})
    torch.manual_seed(cfg.train.seed)
    init = build_model(cfg.model, num_classes=9).state_dict()
    fit(cfg)
    trained = load_checkpoint(cfg.run_dir / "best.pt")["model"]
    assert torch.equal(trained["head.weight"], init["head.weight"])
    enc = next(k for k in init if k.startswith("encoder.") and k.endswith("weight"))
    assert not torch.equal(trained[enc], init[enc])


@pytest.mark.slow
def test_callback_can_stop_the_trial(tiny_cfg):
    class Prune(Callback):
        def on_epoch_end(self, epoch, row):
            raise StopTrial("below the median")

    result = fit(with_overrides(tiny_cfg, {"train.epochs": 3}), callbacks=[Prune()])
    assert result.status == "pruned" and result.epochs_run == 1
    assert result.reason == "epoch 1: below the median"


@pytest.mark.slow
def test_run_folder_is_never_overwritten(tiny_cfg):
    fit(tiny_cfg)
    before = (tiny_cfg.run_dir / "summary.json").read_bytes()
    with pytest.raises(Exception, match="already holds a run"):
        fit(tiny_cfg)
    assert (tiny_cfg.run_dir / "summary.json").read_bytes() == before


@pytest.mark.slow
def test_correct_optimizer_beats_the_story_bug(tiny_cfg):
    cfg = with_overrides(
        tiny_cfg, {"train.epochs": 6, "train.batch_size": 4, "train.checkpoint": False}
    )
    good = fit(dataclasses.replace(cfg, name="good"))
    bad = fit(with_overrides(cfg, {"name": "bad", "train.inject_bug": "encoder-only-optimizer"}))
    assert not math.isnan(good.best_miou)
    assert good.best_miou > bad.best_miou + 0.02, (good.best_miou, bad.best_miou)
