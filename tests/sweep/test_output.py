"""What a sweep prints: one line per trial (state, result, params, flags, best so far), the audit
table only for a trial whose audit has findings, and each trial's full output with --verbose."""

from __future__ import annotations

import re

import pytest
import yaml

from harness.cli import main

pytestmark = pytest.mark.slow  # each test runs a small sweep


def _sweep_file(tiny_data, tmp_path, space, n_trials=3):
    doc = {
        "study": "out",
        "n_trials": n_trials,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "space": space,
        "trial": {
            "out_dir": str(tmp_path / "runs"),
            "data": {"root": str(tiny_data), "image_size": 64, "cache_dir": str(tmp_path / "c")},
            "model": {"width": 0.125, "fc_channels": 32, "fc_kernel": 2},
            "train": {"epochs": 2, "batch_size": 8},
            "tracking": {"backend": "none"},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


TRIAL_LINE = re.compile(
    r"^trial (\d+) (complete|pruned|fail)\b.*\| (best .*|no best yet) \| \d+/\d+ done$"
)


def _trial_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if TRIAL_LINE.match(line)]


@pytest.mark.slow
def test_a_sweep_prints_one_line_per_trial(tiny_data, tmp_path, capsys):
    path = _sweep_file(tiny_data, tmp_path, {"lr": {"low": 1e-3, "high": 3e-3, "log": True}})
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    lines = _trial_lines(out)
    assert [int(TRIAL_LINE.match(line).group(1)) for line in lines] == [0, 1, 2]
    for line in lines:
        assert "lr=" in line and "val/mIoU" in line and "after 2 epochs" in line
    # no per-epoch lines and no audit table for trials whose audit found nothing
    assert not re.search(r"^epoch +\d+/2", out, re.M)
    assert "param-group audit" not in out
    # the end table and the best config still come after the lines
    assert "reproduce: harness trial --config" in out


@pytest.mark.slow
def test_the_audit_table_and_flags_appear_for_a_trial_with_findings(tiny_data, tmp_path, capsys):
    space = {"inject_bug": {"choices": [None, "encoder-only-optimizer"]}}
    path = _sweep_file(tiny_data, tmp_path, space, n_trials=4)
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    lines = _trial_lines(out)
    assert len(lines) == 4
    buggy = [line for line in lines if "inject_bug=encoder-only-optimizer" in line]
    clean = [line for line in lines if "inject_bug=None" in line]
    assert buggy and clean, lines  # the random sampler with seed 0 draws both
    assert all("flags: " in line and "audit:missing:decoder" in line for line in buggy)
    # one audit table (and its warnings) per buggy trial, none for the correct ones
    assert out.count("WARNING param-group audit: decoder") == len(buggy)


@pytest.mark.slow
def test_verbose_brings_back_each_trials_full_output(tiny_data, tmp_path, capsys):
    path = _sweep_file(tiny_data, tmp_path, {"lr": {"low": 1e-3, "high": 3e-3}}, n_trials=2)
    assert main(["sweep", str(path), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert len(_trial_lines(out)) == 2
    assert len(re.findall(r"^epoch +\d+/2", out, re.M)) == 4  # 2 trials x 2 epochs
    assert out.count("param-group audit: ok") == 2
