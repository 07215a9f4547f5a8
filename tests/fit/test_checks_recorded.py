"""Checks are never silent: a check that breaks is a flag, a crash is a recorded failure, and a
trial refused before training leaves nothing that blocks the same command once fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.callbacks import Callback
from harness.cli import main
from harness.config import with_overrides
from harness.fit import RECORD_FILES, fit
from harness.fit.verdicts import CheckFailed


def _cfg(tiny_cfg):
    return with_overrides(tiny_cfg, {"tracking.backend": "none"})


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


class BrokenFlags(Callback):
    name = "broken-flags"

    def flags(self) -> dict[str, str]:
        raise RuntimeError("boom")


class Nameless(Callback):  # no name: the flag uses the class name
    def flags(self) -> dict[str, str]:
        raise RuntimeError("boom")


class BrokenFitEnd(Callback):
    name = "broken-end"

    def on_fit_end(self, status: str) -> None:
        raise RuntimeError("boom")


class BrokenEpoch(Callback):
    name = "broken-epoch"

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        raise ValueError("bad row")


def _assert_check_failed(result, run_dir: Path, flag: str) -> None:
    assert result.status == "finished"
    assert flag in result.flags
    assert "RuntimeError: boom" in result.evidence[flag]
    summary = _summary(run_dir)
    assert flag in summary["flags"]
    assert "RuntimeError: boom" in summary["evidence"][flag]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("callback", "flag"),
    [
        (BrokenFlags(), "check-failed:broken-flags"),
        (Nameless(), "check-failed:Nameless"),
        (BrokenFitEnd(), "check-failed:broken-end"),
    ],
    ids=["flags-raises", "flags-raises-nameless", "on_fit_end-raises"],
)
def test_a_check_that_raises_is_recorded_as_check_failed(tiny_cfg, callback, flag):
    cfg = _cfg(tiny_cfg)
    result = fit(cfg, callbacks=[callback])
    _assert_check_failed(result, cfg.run_dir, flag)


class BrokenStep(Callback):
    name = "broken-step"

    def on_step_end(self, step: int, loss: float) -> None:
        if step == 2:
            raise KeyError("loss/ema")


class BrokenStart(Callback):
    name = "broken-start"

    def on_fit_start(self, model, optimizer) -> None:
        raise AttributeError("no attribute 'encoder'")


class FoundThenBroke(Callback):
    name = "found-then-broke"

    def on_fit_end(self, status: str) -> None:
        raise RuntimeError("boom")

    def flags(self) -> dict[str, str]:
        return {"never-updated:decoder": "decoder: relative update 0 after 5 steps"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        (BrokenEpoch(), "check-failed:broken-epoch: on_epoch_end raised ValueError: bad row"),
        (BrokenStep(), "check-failed:broken-step: on_step_end raised KeyError: 'loss/ema'"),
        (
            BrokenStart(),
            "check-failed:broken-start: on_fit_start raised AttributeError: no attribute 'encoder'",
        ),
    ],
    ids=["on_epoch_end", "on_step_end", "on_fit_start"],
)
def test_a_callback_crash_mid_training_fails_the_trial_naming_the_check(tiny_cfg, callback, reason):
    """A training hook that raises ends the trial at once, failed, and the record names the
    broken check (its flag and the trial's reason), not only the error."""
    cfg = _cfg(tiny_cfg)
    with pytest.raises(CheckFailed, match="check-failed:") as raised:
        fit(cfg, callbacks=[callback])
    assert raised.value.__cause__ is not None  # the check's own error, with its traceback
    summary = _summary(cfg.run_dir)
    assert summary["status"] == "failed"
    assert summary["reason"] == reason
    flag = f"check-failed:{callback.name}"
    assert flag in summary["flags"] and summary["evidence"][flag] == reason.split(": ", 1)[1]


@pytest.mark.slow
def test_flags_a_check_found_count_when_its_on_fit_end_fails(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    result = fit(cfg, callbacks=[FoundThenBroke()])
    assert "never-updated:decoder" in result.flags
    assert result.evidence["check-failed:found-then-broke"] == "on_fit_end: RuntimeError: boom"


def _trial_args(tiny_data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "trial",
        "--data", str(tiny_data),
        "--image-size", "64",
        "--width", "0.125",
        "--fc-channels", "32",
        "--fc-kernel", "2",
        "--epochs", "1",
        "--batch-size", "8",
        "--tracking", "none",
        "--device", "cpu",
        "--name", "again",
        "--out", str(tmp_path / "runs"),
        "--cache-dir", str(tmp_path / "cache"),
        "-q",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_refused_trial_leaves_nothing_that_blocks_the_fixed_command(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "again"
    rc = main(_trial_args(tiny_data, tmp_path, "--weights", "/nonexistent.pt"))
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "nonexistent.pt" in err
    left = {f for f in (*RECORD_FILES, "dataset.json") if (run_dir / f).exists()}
    assert not left, f"a refused trial left {left} in its run folder"

    # the same --name, error fixed: it runs
    assert main(_trial_args(tiny_data, tmp_path)) == 0
    assert _summary(run_dir)["status"] == "finished"


# "no batch that fits" (fit's ConfigError when the train loader is empty) has no CLI variant:
# harness/data/loaders.py sets drop_last only when len(train) > batch_size, so any non-empty
# training set gives at least one batch, whatever --batch-size says. The nearest case, one
# training image (a single batch of one, which BatchNorm cannot train on), is refused before
# anything is written.


@pytest.mark.slow
def test_a_one_image_training_set_is_refused_before_anything_is_written(
    tiny_data, tmp_path, capsys
):
    from harness.data.synth import generate

    one = generate(tmp_path / "one", seed=0, n_train=1, n_val=2, n_test=1, size=64)
    run_dir = tmp_path / "runs" / "again"
    args = _trial_args(tiny_data, tmp_path)
    args[args.index("--data") + 1] = str(one)
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    left = {f for f in (*RECORD_FILES, "dataset.json") if (run_dir / f).exists()}
    assert not left, f"a refused trial left {left} in its run folder"
    assert main(_trial_args(tiny_data, tmp_path)) == 0
