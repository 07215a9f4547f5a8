import json
import math

import pytest
import torch
from torch import nn

from harness.checks.learning import check_learning, majority_miou, prior_loss
from harness.checks.updates import UpdateMonitor
from harness.config import INJECTABLE_BUGS, with_overrides
from harness.fit import StopTrial, fit
from harness.fit.record import read_metrics


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.decoder = nn.Linear(4, 2)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, mon: UpdateMonitor, n: int) -> None:
    for step in range(1, n + 1):
        loss = model.decoder(model.encoder(torch.randn(8, 4))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.on_step_end(step, loss.item())


def test_a_module_that_does_not_move_is_flagged_after_k_steps_with_evidence():
    model = Net()
    opt = torch.optim.Adam(model.encoder.parameters(), lr=1e-4)  # decoder never stepped
    mon = UpdateMonitor(steps=3)
    mon.on_fit_start(model, opt)
    _steps(model, opt, mon, 3)
    assert set(mon.flags()) == {"never-updated:decoder"}
    text = mon.flags()["never-updated:decoder"]
    assert text.startswith("decoder: relative update 0 after 3 steps (10 parameters, grad norm")
    row: dict = {}
    mon.on_epoch_end(1, row)
    assert row["updates/decoder"] == 0 and row["updates/encoder"] > 1e-4  # Adam: ~lr per step
    assert row["grad_norm/decoder"] > 0  # healthy gradients, no step: the story's bug


def test_frozen_on_purpose_is_not_flagged_and_stop_option_raises():
    model = Net()
    opt = torch.optim.Adam(model.decoder.parameters(), lr=1e-4)
    mon = UpdateMonitor(steps=2, frozen_on_purpose=("encoder",))
    mon.on_fit_start(model, opt)
    _steps(model, opt, mon, 2)
    assert mon.flags() == {}
    stopper = UpdateMonitor(steps=2, frozen_on_purpose=("decoder",), stop=True)
    model2 = Net()
    opt2 = torch.optim.Adam(model2.decoder.parameters(), lr=1e-4)
    stopper.on_fit_start(model2, opt2)
    with pytest.raises(StopTrial) as info:
        _steps(model2, opt2, stopper, 2)
    assert info.value.status == "failed" and "encoder: relative update 0" in info.value.reason


def test_prior_loss_is_the_cross_entropy_of_the_best_constant_prediction():
    g = torch.Generator().manual_seed(0)
    mask = torch.multinomial(torch.tensor([0.7, 0.2, 0.0, 0.1]), 4 * 32 * 32, True, generator=g)
    mask = mask.reshape(4, 32, 32)
    pixels = torch.bincount(mask.flatten(), minlength=4).tolist()
    assert pixels[2] == 0  # an absent class counts for nothing
    shares = torch.tensor(pixels, dtype=torch.float64) / mask.numel()

    def loss_of(probs: torch.Tensor) -> float:  # a constant prediction, as torch scores it
        logits = probs.clamp_min(1e-12).log()[None, :, None, None].expand(4, 4, 32, 32)
        return float(torch.nn.functional.cross_entropy(logits, mask))

    assert prior_loss(pixels) == pytest.approx(loss_of(shares), rel=1e-9)
    for other in ([0.6, 0.25, 0.0, 0.15], [0.75, 0.2, 0.0, 0.05], [0.25] * 4):
        assert loss_of(torch.tensor(other, dtype=torch.float64)) > prior_loss(pixels)
    assert prior_loss([5, 0]) == 0.0 and math.isnan(prior_loss([0, 0]))


def test_learning_check_flat_loss_and_majority_level():
    assert majority_miou([80, 20, 0]) == pytest.approx(0.8 / 2)
    flat = [{"train/loss": 2.0 - 0.001 * i, "val/mIoU": 0.5} for i in range(4)]
    found = check_learning(flat, baseline_miou=0.1)
    assert "training loss 2 -> 1.997 over 4 epochs" in found["no-learning"]
    stuck = [{"train/loss": 2.0 / (i + 1), "val/mIoU": 0.1} for i in range(5)]
    assert "majority-class baseline 0.100" in check_learning(stuck, 0.1)["no-learning"]
    assert check_learning(stuck[:4], 0.1) == {}  # mIoU judged from 5 epochs on
    good = [{"train/loss": 2.0 / (i + 1), "val/mIoU": 0.1 * (i + 1)} for i in range(5)]
    assert check_learning(good, 0.1) == {}
    assert check_learning(flat[:2], 0.1) == {}  # too early to judge
    assert check_learning(stuck, math.nan).keys() == set()


@pytest.mark.slow
def test_fit_records_updates_and_flags_evidence_everywhere(tiny_cfg):
    cfg = with_overrides(
        tiny_cfg, {"train.inject_bug": "encoder-only-optimizer", "tracking.backend": "none"}
    )
    result = fit(cfg)
    assert "never-updated:decoder" in result.flags
    assert "after 4 steps" in result.evidence["never-updated:decoder"]  # 4 steps per epoch
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["flags"] == result.flags
    assert summary["evidence"]["never-updated:decoder"] == result.evidence["never-updated:decoder"]
    assert summary["evidence"]["audit:missing:decoder"].startswith("decoder: 0 of 231.3k")
    row = read_metrics(cfg.run_dir)[0]
    assert row["updates/decoder"] == 0 and row["updates/encoder"] > 0
    assert row["grad_norm/decoder"] > 0


@pytest.mark.slow
def test_correct_trial_has_no_monitor_flags_and_monitor_can_be_off(tiny_cfg):
    cfg = with_overrides(tiny_cfg, {"tracking.backend": "none", "train.monitor_steps": 2})
    assert fit(cfg).flags == []
    off = with_overrides(
        cfg,
        {"name": "off", "train.inject_bug": "zero-lr-decoder", "train.monitor": False},
    )
    result = fit(off)
    assert result.flags == ["audit:zero-lr:decoder"]
    assert "updates/decoder" not in result.history[0]


@pytest.mark.slow
def test_stop_on_never_updated_ends_the_trial_early(tiny_cfg):
    cfg = with_overrides(
        tiny_cfg,
        {
            "train.inject_bug": "zero-lr-decoder",
            "train.stop_never_updated": True,
            "train.monitor_steps": 2,
            "train.epochs": 2,
            "tracking.backend": "none",
        },
    )
    result = fit(cfg)
    assert result.status == "failed" and result.epochs_run == 0
    assert "decoder: relative update 0 after 2 steps" in (result.reason or "")
    assert "never-updated:decoder" in result.flags


@pytest.mark.parametrize("bug", [b for b in INJECTABLE_BUGS])
@pytest.mark.slow
def test_every_injectable_bug_is_caught_by_some_layer(tiny_cfg, bug):
    # structural bugs: the monitor sees them after the first steps; shuffled masks need the
    # learning check, which judges val mIoU from 5 epochs on
    epochs = 5 if bug == "shuffled-masks" else 1
    cfg = with_overrides(
        tiny_cfg, {"train.inject_bug": bug, "train.epochs": epochs, "tracking.backend": "none"}
    )
    result = fit(cfg)
    assert result.status == "finished"
    assert result.flags, bug
    assert all(result.evidence.get(f) for f in result.flags)
    if bug != "shuffled-masks":  # structural bugs: the monitor names the module
        assert "never-updated:decoder" in result.flags


def test_shifted_masks_pair_each_image_with_the_next_mask():
    from harness.faults import ShiftedMasks

    data = [(torch.full((1,), i), torch.full((2,), 10 * i)) for i in range(3)]
    shifted = ShiftedMasks(data)
    assert len(shifted) == 3
    assert [(int(x[0]), int(y[0])) for x, y in shifted] == [(0, 10), (1, 20), (2, 0)]


# --- mask pairing -------------------------------------------------------------------------------


def _pairs(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images of textured noise with one bright square each; the mask labels the square."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.rand(3, 32, 32, generator=g) * 0.3
        mask = torch.zeros(32, 32, dtype=torch.long)
        y, x = torch.randint(0, 20, (2,), generator=g).tolist()
        image[:, y : y + 10, x : x + 10] += 0.7
        mask[y : y + 10, x : x + 10] = 1
        out.append((image, mask))
    return out


def test_edge_alignment_matches_a_per_pixel_reference():
    from harness.checks.pairing import edge_alignment

    images, masks = zip(*_pairs(3), strict=True)
    total = count = 0.0
    for image, mask in zip(images, masks, strict=True):
        gray = image.mean(0)
        for i in range(32):
            for j in range(32):
                for di, dj in ((1, 0), (0, 1)):
                    if i + di < 32 and j + dj < 32 and mask[i, j] != mask[i + di, j + dj]:
                        total += abs(float(gray[i + di, j + dj] - gray[i, j]))
                        count += 1
    assert edge_alignment(images, masks) == pytest.approx(total / count, rel=1e-5)
    assert math.isnan(edge_alignment([images[0]], [torch.zeros(32, 32, dtype=torch.long)]))


def test_mask_pairing_flags_masks_of_other_images_only():
    from harness.checks.flags import MASKS_MISALIGNED
    from harness.checks.pairing import check_mask_pairing
    from harness.faults import ShiftedMasks

    data = _pairs(12)
    assert check_mask_pairing(data) == {}
    found = check_mask_pairing(ShiftedMasks(data))
    assert "do not seem to belong to their images" in found[MASKS_MISALIGNED]
    assert check_mask_pairing(ShiftedMasks(data[:3])) == {}  # too few to judge


@pytest.mark.slow
def test_shuffled_masks_flagged_before_training_and_audit_can_be_off(tiny_cfg):
    from harness.checks.flags import MASKS_MISALIGNED

    result = fit(
        with_overrides(tiny_cfg, {"train.inject_bug": "shuffled-masks", "tracking.backend": "none"})
    )
    assert MASKS_MISALIGNED in result.flags and result.evidence[MASKS_MISALIGNED]
    # the structural audit switched off: the story's bug raises no audit flag, only the monitor's
    cfg = with_overrides(
        tiny_cfg,
        {
            "name": "blind",
            "train.inject_bug": "encoder-only-optimizer",
            "train.audit": False,
            "tracking.backend": "none",
        },
    )
    result = fit(cfg)
    assert not [f for f in result.flags if f.startswith("audit:")]
    assert "never-updated:decoder" in result.flags
    audit = json.loads((result.run_dir / "audit.json").read_text())
    assert audit["enabled"] is False and audit["findings"] == []
    assert audit["missing"]  # the module table and raw facts stay as information
