"""harness.tracking.panels: a mask panel that fails goes off for the trial, said and recorded."""

from __future__ import annotations

import json

import pytest

from harness.config import with_overrides
from harness.fit import fit
from harness.tracking.panels import MaskPanel


def _local(tiny_cfg):
    return with_overrides(
        tiny_cfg, {"tracking.backend": "local", "tracking.media_images": 2, "train.epochs": 2}
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["build", "predict"])
def test_a_failing_mask_panel_is_kept_in_summary_json(tiny_cfg, monkeypatch, capsys, where):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MaskPanel, where, fail)
    cfg = _local(tiny_cfg)
    result = fit(cfg)
    assert result.status == "finished"  # a panel is never worth the trial
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["tracking"] == {"backend": "local", "panel_error": "OSError: disk full"}
    # said once: the panel is off for the rest of the trial
    assert capsys.readouterr().err.count("mask panel off for this trial (OSError: disk full)") == 1
    assert not list((cfg.run_dir / "media").glob("*.png"))


@pytest.mark.slow
def test_a_working_panel_records_no_error(tiny_cfg):
    cfg = _local(tiny_cfg)
    fit(cfg)
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["tracking"] == {"backend": "local"}
    assert len(list((cfg.run_dir / "media").glob("masks-epoch-*.png"))) >= 1
