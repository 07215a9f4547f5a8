"""The GPU check (``harness bench --only gpu``), run on the CPU at a small size so it does not rot:
its report's fields, the FLOP count against a hand count, the MaxUnpool2d comparison (and that
it fails when the outputs are wrong), the peak table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.bench.gpu import (
    CheckSettings,
    check_device,
    peak_for,
    run_check,
    step_flops,
    utilisation,
)
from harness.bench.gpu_report import utilisation_rows, write_report
from harness.bench.unpool import (
    RTOL,
    check_unpool,
    compare_unpool,
    pool_inputs,
    unpool_outputs,
)
from harness.config import ModelConfig
from harness.errors import HarnessError
from harness.models import build_model


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    """The whole check on the CPU: the small model at 32 px on a tiny dataset, one round."""
    from harness.data.synth import generate

    root = tmp_path_factory.mktemp("gpu") / "data"
    generate(root, seed=0, n_train=16, n_val=4, n_test=1, size=64)
    settings = CheckSettings(
        device="cpu",
        image_size=32,
        batch_size=4,
        width=0.125,
        fc_channels=16,
        fc_kernel=1,
        rounds=1,
        epochs=2,
        warmup_steps=1,
        timed_steps=1,
        data_root=str(root),
        paper_size=False,
    )
    lines: list[str] = []
    return run_check(settings, lines.append), lines


@pytest.mark.slow  # the whole check: about 3 s on one core
def test_cpu_run_reports_every_figure(cpu_report):
    report, lines = cpu_report
    assert any(line.startswith("fit vs bare loop") for line in lines)  # progress was said
    for c in (report.fit_vs_bare, report.precision):
        assert c.test.img_per_s > 0 and c.base.img_per_s > 0
        assert math.isfinite(c.ratio) and c.ratio > 0
    # one round of 2 epochs: the first is warm-up, one timed epoch per side
    assert len(report.fit_vs_bare.test.samples) == len(report.fit_vs_bare.base.samples) == 1
    assert report.fit_vs_bare.target == 0.95 and isinstance(report.fit_vs_bare.passed, bool)
    assert report.precision.test.label == "bf16+channels_last"
    assert report.precision.base.label == "fp32 contiguous"
    # the loader row sets the bare loop beside the fixed batch in fit's setting (fp32 on a CPU)
    assert report.loader.test == report.fit_vs_bare.base
    assert report.loader.base == report.precision.base and report.loader.ratio > 0
    assert report.step_flops > 0
    assert [u.math for u in report.utilisation] == ["bf16", "fp32", "fp32"]  # no TF32 on a CPU
    for u in report.utilisation:  # the CPU has no peak in the table: no MFU is made up
        assert u.tflops > 0 and u.peak_tflops is None and u.mfu is None
    assert report.fit_vs_bare.test.peak_memory_bytes is None  # not tracked on the CPU
    assert report.environment["device_type"] == "cpu" and report.environment["torch"]
    assert report.settings["num_params"] > 0 and report.settings["runtime"]["amp"] is None
    assert len(report.unpool.pools) == 5 and report.unpool.passed


@pytest.mark.slow
def test_cpu_run_writes_json_and_a_readable_table(cpu_report, tmp_path):
    report, _ = cpu_report
    json_path, text_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text())
    assert data["fit_vs_bare"]["ratio"] == pytest.approx(report.fit_vs_bare.ratio)
    assert data["fit_vs_bare"]["passed"] is report.fit_vs_bare.passed
    assert data["loader"]["ratio"] == pytest.approx(report.loader.ratio)
    assert data["unpool"]["passed"] is True and len(data["unpool"]["pools"]) == 5
    assert data["utilisation"][0]["mfu"] is None and data["environment"]["peak"] is None
    text = text_path.read_text()
    assert "fit vs bare loop" in text and ">= 0.95" in text
    assert "peak unknown for CPU" in text and "n/a (CPU)" in text
    assert "MaxUnpool2d bf16+channels_last vs fp32" in text
    last = text.splitlines()[-1]
    assert last.startswith(("PASS", "FAIL"))
    # each check's own verdict is named, so a pass is never read as a failure
    assert f"MaxUnpool2d {'PASS' if report.unpool.passed else 'FAIL'}" in last
    assert f"fit vs bare {'PASS' if report.fit_vs_bare.passed else 'FAIL'}" in last


def test_unknown_gpu_says_peak_unknown():
    assert peak_for("NVIDIA Mystery 9000") is None
    rows = utilisation(10**12, peak_for("NVIDIA Mystery 9000"), 8, [("bf16", "bf16", 8.0)])
    assert rows[0].mfu is None and rows[0].tflops == pytest.approx(1.0)
    env = {"device_type": "cuda", "device": "NVIDIA Mystery 9000", "peak": None}
    ((_, text, _),) = utilisation_rows(rows, env)
    assert "peak unknown for this device: no MFU" in text and "%" not in text


def test_known_gpu_gets_its_peak_and_mfu():
    assert peak_for("NVIDIA H200").bf16 == 989.4  # type: ignore[union-attr]
    assert peak_for("NVIDIA H200 NVL").name == "H200 NVL"  # type: ignore[union-attr]
    assert peak_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"  # type: ignore[union-attr]
    assert peak_for("NVIDIA H100 PCIe").bf16 == 756.5  # type: ignore[union-attr]
    assert peak_for("NVIDIA A100-SXM4-80GB").tf32 == 156.0  # type: ignore[union-attr]
    assert peak_for("NVIDIA L40S").name == "L40S"  # type: ignore[union-attr]
    assert peak_for("NVIDIA L4").name == "L4"  # type: ignore[union-attr]
    assert peak_for("NVIDIA A10G") is None and peak_for("NVIDIA GeForce RTX 4090") is None
    # 1 TFLOP per step at 8 images/s with batch 8: 1 step/s, 1 TFLOP/s of A100's 312
    (row,) = utilisation(10**12, peak_for("NVIDIA A100-PCIE-40GB"), 8, [("x", "bf16", 8.0)])
    assert row.step_s == pytest.approx(1.0) and row.mfu == pytest.approx(1 / 312)


def test_step_flops_equals_a_hand_count():
    torch.manual_seed(0)
    n, h, w = 2, 8, 8
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ConvTranspose2d(4, 5, 3, padding=1, bias=False),
    )
    images, masks = torch.randn(n, 3, h, w), torch.randint(0, 5, (n, h, w))
    # a 3x3 conv: 2 FLOPs (multiply, add) per weight per output pixel
    conv = 2 * n * h * w * 4 * 3 * 9
    deconv = 2 * n * h * w * 5 * 4 * 9  # stride 1, padding 1: the same count as a conv
    # backward: the weight gradient of both (as much as their forward), the input gradient of
    # the second only (the images need none)
    expected = conv + deconv + (conv + 2 * deconv)
    flops = step_flops(lambda: nn.functional.cross_entropy(model(images), masks))
    assert flops == expected == 193536
    assert all(p.grad is not None for p in model.parameters())  # backward really ran


@pytest.fixture(scope="module")
def small_deconvnet():
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125, fc_channels=16, fc_kernel=1)
    return build_model(cfg, num_classes=4), torch.randn(2, 3, 33, 33)


def test_unpool_check_passes_on_the_models_activations(small_deconvnet):
    model, images = small_deconvnet
    report = check_unpool(model, images, torch.bfloat16)
    assert report.passed and report.setting == "bf16+channels_last"
    # odd sizes on purpose (33 -> 17 -> 9 ...): the ceil-mode pools and output_size are covered
    assert [p.shape[-1] for p in report.pools] == [33, 17, 9, 5, 3]
    assert all(p.pooled_rel_diff <= RTOL and p.mismatched_indices == 0 for p in report.pools)
    assert all(p.pooled_rel_diff > 0 for p in report.pools[:1])  # bf16 did round something


def test_unpool_check_fails_when_values_land_elsewhere(small_deconvnet):
    model, images = small_deconvnet
    pool = next(m for m in model.encoder.modules() if isinstance(m, nn.MaxPool2d))
    unpool, x = model.decoder.unpool, pool_inputs(model.encoder, images)[0]
    ref = unpool_outputs(pool, unpool, x, torch.float32, channels_last=False)
    # a kernel that read the layout wrong, as if the map were shifted by one pixel
    shifted = unpool_outputs(pool, unpool, x.roll(1, dims=-1), torch.bfloat16, True)
    result = compare_unpool(x, ref, shifted, torch.bfloat16)
    assert not result.passed and result.mismatched_indices > 0
    # the right places, values off by more than bf16's rounding
    right = unpool_outputs(pool, unpool, x, torch.bfloat16, True)
    assert compare_unpool(x, ref, right, torch.bfloat16).passed
    off = right._replace(pooled=right.pooled * (1 + 4 * RTOL))
    result = compare_unpool(x, ref, off, torch.bfloat16)
    assert not result.passed and result.mismatched_indices == 0 and result.pooled_rel_diff > RTOL


def test_cuda_device_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HarnessError, match=r"^--device 'cuda': CUDA is not available"):
        check_device("cuda")
    with pytest.raises(HarnessError, match=r"must be cpu, cuda or cuda:N"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")


def test_a_tie_after_rounding_is_no_mismatch():
    # fp32 sees 1 + 2^-10 as the max, bf16 rounds both to 1.0 and takes the first
    x = torch.zeros(1, 1, 2, 4)
    x[0, 0, 0, :2] = torch.tensor([1.0, 1.0 + 2**-10])
    x[0, 0, 1, 2:] = torch.tensor([3.0, 2.0])  # a plain window beside it
    pool, unpool = nn.MaxPool2d(2, 2, return_indices=True, ceil_mode=True), nn.MaxUnpool2d(2, 2)
    ref = unpool_outputs(pool, unpool, x, torch.float32, channels_last=False)
    test = unpool_outputs(pool, unpool, x, torch.bfloat16, channels_last=True)
    assert ref.indices.flatten().tolist() == [1, 6] and test.indices.flatten().tolist() == [0, 6]
    result = compare_unpool(x, ref, test, torch.bfloat16)
    assert result.passed and (result.tied_indices, result.mismatched_indices) == (1, 0)
    # the same index change without the tie (the values differ in bf16 too) is a mismatch
    x[0, 0, 0, 1] = 1.5
    ref = unpool_outputs(pool, unpool, x, torch.float32, channels_last=False)
    result = compare_unpool(x, ref, test, torch.bfloat16)
    assert not result.passed and result.mismatched_indices == 1


@pytest.mark.slow  # a fresh interpreter: torch and the harness imported anew (3-8 s)
def test_gpu_check_needs_neither_optuna_nor_wandb(tmp_path):
    # the lent GPU machines have neither: the CLI's path to the check must not import them
    code = (
        "import sys; sys.modules['optuna'] = None; sys.modules['wandb'] = None\n"
        "from harness.cli import main\n"
        "sys.exit(main(['bench', '--only', 'gpu', '--device', 'tpu']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    # the check's own argument check answered: everything up to it imported
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: --device 'tpu': must be cpu, cuda or cuda:N"
