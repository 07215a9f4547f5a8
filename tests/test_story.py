"""The story's own code as a user plugin (examples/story): every trial of its study is flagged,
by the audit (fcn and decoder left out of the optimiser) and by the update monitor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config.sweep import load_spec
from harness.sweep import load_study, trial_flags, trials_of

STORY = Path(__file__).resolve().parents[1] / "examples" / "story"

pytestmark = pytest.mark.slow  # a small sweep


@pytest.fixture
def story_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(STORY))
    yield
    for name in [m for m in sys.modules if m == "story" or m.startswith("story.")]:
        del sys.modules[name]


def test_the_shipped_story_sweep_files_load(story_importable):
    for name in ("story.yaml", "story-blind.yaml"):
        spec = load_spec(STORY / name)
        assert ":" in spec.base.model.name and spec.base.optim.builder


def test_every_trial_of_the_story_is_flagged_with_evidence(
    story_importable, tiny_data, tmp_path, capsys
):
    doc = yaml.safe_load((STORY / "story.yaml").read_text())
    doc["n_trials"] = 2
    doc["trial"]["out_dir"] = str(tmp_path / "runs")
    doc["trial"]["data"] = {"root": str(tiny_data), "image_size": 64, "cache_dir": str(tmp_path)}
    doc["trial"]["model"]["args"] = {"width": 4, "fc": 16}
    doc["trial"]["train"]["epochs"] = 1
    doc["trial"]["tracking"] = {"backend": "none"}
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["sweep", str(path)]) == 0
    trials = trials_of(load_study("story", out=str(tmp_path / "runs")))
    assert len(trials) == 2
    for t in trials:
        flags = trial_flags(t, {})
        for flag in ("audit:missing:fcn", "audit:missing:decoder", "never-updated:fcn"):
            assert flag in flags, (t.number, flags)
        assert "0 of" in t.user_attrs["evidence"]["audit:missing:decoder"]
    out = capsys.readouterr().out
    assert "no finished, unflagged trial yet: no best.yaml" in out
