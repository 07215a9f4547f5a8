import torch
from torch import nn

from harness.config import OptimConfig
from harness.faults import build_buggy_optimizer
from harness.optim import build_optimizer, build_scheduler, group_lrs
from harness.sanity import audit_param_groups


class Toy(nn.Module):
    """Same top-level layout as DeconvNet: encoder, fcn, decoder, head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.fcn = nn.Conv2d(4, 4, 1)
        self.decoder = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)


def story_optimizer(model, f_lr=1e-5, lr=1e-4):
    # verbatim the story's line
    return torch.optim.Adam([{"params": model.encoder.parameters(), "lr": f_lr}], lr=lr)


def test_story_optimizer_leaves_fcn_decoder_and_head_out():
    model = Toy()
    report = audit_param_groups(model, story_optimizer(model))
    assert not report.ok
    expected = {n for n, _ in model.named_parameters() if not n.startswith("encoder.")}
    assert set(report.missing) == expected
    codes = {f.code for f in report.findings}
    assert codes == {"missing:fcn", "missing:decoder", "missing:head"}
    decoder = next(r for r in report.modules if r.module == "decoder")
    assert decoder.in_optimizer == 0 and decoder.trainable == sum(
        p.numel() for p in model.decoder.parameters()
    )
    msg = next(f.message for f in report.findings if f.code == "missing:decoder")
    assert msg.startswith("decoder: 0 of ")


def test_correct_optimizer_is_clean_and_uses_both_lrs():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, f_lr=1e-4))
    report = audit_param_groups(model, opt)
    assert report.ok, report.findings
    assert report.missing == () and report.duplicated == () and report.empty_groups == ()
    assert group_lrs(opt) == {"encoder": 1e-4, "fcn": 1e-3, "decoder": 1e-3, "head": 1e-3}
    lrs = {r.module: r.lrs for r in report.modules}
    assert lrs["encoder"] == (1e-4,) and lrs["decoder"] == (1e-3,)


def test_build_buggy_optimizer_reproduces_the_story():
    model = Toy()
    opt = build_buggy_optimizer(model, OptimConfig(lr=1e-3, f_lr=1e-4), "encoder-only-optimizer")
    assert len(opt.param_groups) == 1
    report = audit_param_groups(model, opt)
    assert {f.code for f in report.findings} == {"missing:fcn", "missing:decoder", "missing:head"}


def test_duplicated_empty_and_zero_lr_groups_are_found():
    model = Toy()
    opt = torch.optim.SGD(
        [
            {"params": list(model.encoder.parameters()) + list(model.fcn.parameters())},
            {"params": list(model.decoder.parameters()), "lr": 0.0},
            {"params": list(model.head.parameters())},
        ],
        lr=0.1,
    )
    opt.add_param_group({"params": [], "lr": 0.1})
    # torch refuses duplicates in its constructor, but code that edits param_groups can add them
    opt.param_groups[2]["params"].extend(model.fcn.parameters())
    report = audit_param_groups(model, opt)
    codes = {f.code for f in report.findings}
    assert codes == {"duplicated:fcn", "zero-lr:group1", "empty-group:group3"}
    assert set(report.duplicated) == {n for n, _ in model.fcn.named_parameters(prefix="fcn")}


def test_a_warm_up_from_zero_is_not_a_zero_lr_group():
    """A scheduler has already set the lr to base_lr * factor(0) when the audit runs: a warm-up
    that starts at 0 trains every group, so the audit judges the base lr (``initial_lr``)."""
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, f_lr=1e-4))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 100))
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    report = audit_param_groups(model, opt)
    assert report.ok, report.findings
    assert {r.module: r.lrs for r in report.modules}["decoder"] == (1e-3,)


def test_a_group_set_to_lr_0_is_found_under_a_scheduler_too():
    model = Toy()
    opt = torch.optim.Adam(
        [
            {"params": list(model.encoder.parameters()) + list(model.fcn.parameters())},
            {"params": list(model.decoder.parameters()) + list(model.head.parameters()), "lr": 0},
        ],
        lr=1e-3,
    )
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, step / 100))
    assert {f.code for f in audit_param_groups(model, opt).findings} == {"zero-lr:group1"}


def test_f_lr_zero_freezes_encoder_on_purpose_without_finding():
    model = Toy()
    cfg = OptimConfig(lr=1e-3, f_lr=0.0)
    opt = build_optimizer(model, cfg)
    report = audit_param_groups(model, opt, frozen_on_purpose=("encoder",))
    assert report.ok
    assert all(not p.requires_grad for p in model.encoder.parameters())
    encoder = next(r for r in report.modules if r.module == "encoder")
    assert encoder.frozen_on_purpose and encoder.trainable == 0


def test_module_frozen_by_mistake_is_found():
    # requires_grad=False by mistake: torch skips it silently; the audit names the module
    model = Toy()
    model.decoder.requires_grad_(False)
    report = audit_param_groups(model, build_optimizer(model, OptimConfig()))
    assert [f.code for f in report.findings] == ["not-trainable:decoder"]
    assert "requires_grad=False" in report.findings[0].message


def test_schedulers_decay_to_zero():
    model = Toy()
    for kind in ("cosine", "poly"):
        opt = build_optimizer(model, OptimConfig(lr=1.0, f_lr=0.5, scheduler=kind))
        sched = build_scheduler(opt, OptimConfig(scheduler=kind), total_steps=10)
        assert sched is not None
        for _ in range(10):
            opt.step()
            sched.step()
        assert all(g["lr"] < 1e-9 for g in opt.param_groups)
    opt = build_optimizer(model, OptimConfig())
    assert build_scheduler(opt, OptimConfig(), 10) is None
