"""The checks as a library: ``harness.checks.watch`` in a plain PyTorch loop."""

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import harness.checks
from harness.checks import AuditError, audit, audit_param_groups, watch
from harness.checks.updates import UpdateMonitor

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plain_loop.py"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fcn = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout2d(0.1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fcn(self.encoder(x)))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, w=None) -> None:
    criterion = nn.CrossEntropyLoss()
    for _ in range(steps):
        x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 2, (2, 8, 8))
        loss = criterion(model(x), y)
        if w is not None:
            w.report_loss(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _story(model: Net) -> torch.optim.Optimizer:
    return torch.optim.Adam([{"params": model.encoder.parameters(), "lr": 1e-4}], lr=1e-3)


def test_the_public_api_is_exported():
    for name in ("audit_param_groups", "audit", "watch", "Watch", "AuditReport", "Finding"):
        assert hasattr(harness.checks, name), name


def test_story_optimiser_is_caught_at_once_and_after_k_steps(capsys):
    torch.manual_seed(0)
    model = Net().train()
    opt = _story(model)
    w = watch(model, opt, steps=3)
    assert set(w.flags()) == {"audit:missing:fcn", "audit:missing:decoder"}  # before any step
    _train(model, opt, 2, w)
    assert "never-updated:decoder" not in w.flags()  # the verdict waits for k steps
    _train(model, opt, 1, w)
    flags = w.flags()
    assert list(flags) == [
        "audit:missing:fcn",
        "audit:missing:decoder",
        "never-updated:fcn",
        "never-updated:decoder",
    ]
    assert flags["audit:missing:decoder"].startswith("decoder: 0 of 38 trainable parameters")
    assert flags["never-updated:decoder"].startswith("decoder: relative update 0 after 3 steps")
    err = capsys.readouterr().err
    assert "WARNING never-updated:decoder: decoder: relative update 0 after 3 steps" in err
    assert err.count("WARNING") == 4  # each flag once
    w.close()


def test_frozen_decoder_and_zero_lr_group():
    torch.manual_seed(0)
    model = Net().train()
    model.decoder.requires_grad_(False)  # a leftover freeze
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, steps=2, quiet=True) as w:
        _train(model, opt, 2)
    assert set(w.flags()) == {"audit:not-trainable:decoder", "never-updated:decoder"}
    assert "none of them requires_grad" in w.flags()["never-updated:decoder"]

    model = Net().train()
    groups = [
        {"params": model.encoder.parameters()},
        {"params": model.fcn.parameters()},
        {"params": model.decoder.parameters(), "lr": 0.0},  # the typo
    ]
    opt = torch.optim.Adam(groups, lr=1e-3)
    with watch(model, opt, steps=2, quiet=True) as w:
        _train(model, opt, 2)
    assert set(w.flags()) == {"audit:zero-lr:group2", "never-updated:decoder"}
    assert (
        w.flags()["audit:zero-lr:group2"]
        == "optimiser group 'group2' has lr 0: its parameters never move"
    )


def test_batchnorm_left_in_eval_is_flagged_unless_declared():
    torch.manual_seed(0)
    model = Net().train()
    model.decoder[1].eval()  # a leftover line
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, steps=2, quiet=True) as w:
        _train(model, opt, 2)
    assert list(w.flags()) == ["eval-mode:decoder"]
    assert w.flags()["eval-mode:decoder"] == (
        "decoder: 1 of 1 BatchNorm/Dropout modules in eval mode at step 1 while the model trains:"
        " decoder.1 (BatchNorm2d); BatchNorm running statistics do not move"
    )

    model = Net().train()
    model.encoder.eval()  # frozen BN for fine-tuning, on purpose
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, steps=2, quiet=True, frozen_bn=("encoder",)) as w:
        _train(model, opt, 2)
    assert w.flags() == {}
    assert w.intended["eval-mode:encoder"].startswith("encoder: 1 of 1 BatchNorm/Dropout")
    assert "intended" in w.report() and "eval-mode:encoder" in w.report()


def test_whole_model_left_in_eval_mode_after_validation():
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, steps=2, quiet=True) as w:
        model.eval()  # validation, and no model.train() after it
        _train(model, opt, 1)
    assert set(w.flags()) == {"eval-mode:encoder", "eval-mode:fcn", "eval-mode:decoder"}
    assert "the whole model is in eval mode" in w.flags()["eval-mode:fcn"]
    assert "Dropout drops nothing" in w.flags()["eval-mode:fcn"]


def test_frozen_on_purpose_is_recorded_as_intended():
    model = Net().train()
    model.encoder.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with watch(model, opt, steps=2, quiet=True, frozen=("encoder",)) as w:
        _train(model, opt, 2)
    assert w.flags() == {}
    assert set(w.intended) == {"never-updated:encoder"}


def test_non_finite_loss_reported():
    model = Net().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, quiet=True) as w:
        _train(model, opt, 3, w)
        assert w.report_loss(torch.tensor(float("nan"))) is False  # reported before step 4
        assert w.report_loss(1.0)
    assert w.flags() == {"nan-loss": "training loss is nan at step 4"}


def test_a_correct_loop_raises_no_flag_over_20_seeds():
    for seed in range(20):
        torch.manual_seed(seed)
        model = Net().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        with watch(model, opt, steps=2, quiet=True) as w:
            _train(model, opt, 3, w)
            model.eval()  # validation between epochs is fine
            with torch.no_grad():
                model(torch.randn(1, 3, 8, 8))
            model.train()
            _train(model, opt, 1, w)
            assert w.check() == {}, (seed, w.report())
        assert w.intended == {}


def test_close_detaches_the_hook():
    model = Net().train()
    opt = _story(model)
    w = watch(model, opt, steps=2, quiet=True)
    _train(model, opt, 1)
    w.close()
    _train(model, opt, 3)
    assert w.step == 1 and "never-updated:decoder" not in w.flags()
    assert not opt._optimizer_step_post_hooks
    w.close()  # twice is fine


def test_groups_added_later_are_audited_again():
    model = Net().train()
    opt = torch.optim.Adam([*model.encoder.parameters(), *model.fcn.parameters()], lr=1e-3)
    with watch(model, opt, steps=2, quiet=True) as w:
        assert set(w.flags()) == {"audit:missing:decoder"}
        opt.add_param_group({"params": list(model.decoder.parameters()), "lr": 0.0})
        _train(model, opt, 1)
    assert set(w.flags()) == {"audit:missing:decoder", "audit:zero-lr:group1"}


def test_same_flags_and_evidence_as_the_update_monitor():
    torch.manual_seed(0)
    model = Net().train()
    opt = _story(model)
    mon = UpdateMonitor(steps=3)
    mon.on_fit_start(model, opt)
    with watch(model, opt, steps=3, quiet=True) as w:
        for step in range(1, 4):
            _train(model, opt, 1)
            mon.on_step_end(step, 0.0)
    model.fcn[1].eval()
    mon.on_step_end(4, 0.0)
    shared = {f: t for f, t in w.flags().items() if f.startswith("never-updated:")}
    assert shared == {f: t for f, t in mon.flags().items() if f.startswith("never-updated:")}
    assert "eval-mode:fcn" in mon.flags()  # harness trial records it too
    report = audit_param_groups(model, opt)
    assert {f"audit:{f.code}": f.message for f in report.findings} == {
        f: t for f, t in w.flags().items() if f.startswith("audit:")
    }


def test_audit_prints_and_strict_raises(capsys):
    model = Net()
    report = audit(model, _story(model))
    assert not report.ok and "decoder" in report.missing[-1]
    out = capsys.readouterr().out
    assert "WARNING audit:missing:decoder: decoder: 0 of 38" in out
    with pytest.raises(AuditError, match="2 problem"):
        audit(model, _story(model), strict=True)
    assert audit(model, torch.optim.Adam(model.parameters()), strict=True).ok


def test_example_plain_loop_prints_the_story_flag(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    captured = capsys.readouterr()
    assert "WARNING audit:missing:decoder" in captured.err
    assert "never-updated:decoder: decoder: relative update 0 after 5 steps" in captured.out
    assert len(EXAMPLE.read_text().splitlines()) <= 45


@pytest.mark.slow
def test_harness_trial_records_the_same_flags_and_evidence(tiny_cfg):
    from harness.callbacks import Callback
    from harness.config import with_overrides
    from harness.fit import fit

    class Watching(Callback):  # the library API, attached to the harness's own loop
        def on_fit_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
            self.w = watch(model, optimizer, steps=2, quiet=True)

    cb = Watching()
    overrides = {
        "train.inject_bug": "encoder-only-optimizer",
        "train.monitor_steps": 2,
        "tracking.backend": "none",
    }
    result = fit(with_overrides(tiny_cfg, overrides), callbacks=[cb])
    cb.w.close()
    assert "never-updated:decoder" in result.flags and "audit:missing:decoder" in result.flags
    assert cb.w.flags() == result.evidence
