"""DeepLab v1 LargeFOV: shapes, parameter count, parts, switches, weights, optimiser groups."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
import yaml
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from harness.checks import audit_param_groups
from harness.config import DataConfig, ModelConfig, OptimConfig, TrialConfig, with_overrides
from harness.errors import ConfigError
from harness.faults import build_buggy_optimizer
from harness.models import DeepLabV1, build_model, encoder_state_from_vgg
from harness.optim import build_optimizer

SMALL = ModelConfig(name="deeplabv1", width=0.125, fc_channels=64)  # CPU-sized
TINY = ModelConfig(name="deeplabv1", width=1 / 32, fc_channels=8)  # where only shapes matter
# the paper's model: plain VGG16 (no BN), fc6 3x3 dilation 12 to 1024, fc7 1024, dropout 0.5
PAPER = ModelConfig(
    name="deeplabv1",
    width=1.0,
    fc_channels=1024,
    fc_kernel=3,
    encoder_bn=False,
    fcn_bn=False,
    dropout=0.5,
)
WIDE_ENCODER = dataclasses.replace(PAPER, fc_channels=8)  # ImageNet channels, tiny FCN
VOC_CLASSES = 21
PARTS = ("encoder", "fcn", "decoder")


def build(cfg: ModelConfig, num_classes: int) -> Any:
    return build_model(cfg, num_classes, progress=False)


def count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def convs(model: Any) -> list[nn.Conv2d]:
    return [m for m in model.encoder.features if isinstance(m, nn.Conv2d)]


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(321, 321), (512, 512), (96, 96), (33, 47), (97, 130)])
@torch.no_grad()
@pytest.mark.slow
def test_logits_have_input_size(size: tuple[int, int]) -> None:
    model = build(TINY, num_classes=12).eval()
    x = torch.randn(1, 3, *size)
    assert model(x).shape == (1, 12, *size)
    # output stride 8: three halving pools, ceil(n / 2) each
    stride8 = tuple(-(-s // 8) for s in size)
    assert model.fcn(model.encoder(x)).shape[-2:] == stride8


@torch.no_grad()
@pytest.mark.parametrize("size", [(321, 321), (512, 512)])
@pytest.mark.slow
def test_paper_config_shapes(size: tuple[int, int]) -> None:
    # full width on the meta device: shapes without the compute
    with torch.device("meta"):
        model = build(PAPER, num_classes=VOC_CLASSES).eval()
        out = model(torch.empty(1, 3, *size))
        features = model.fcn(model.encoder(torch.empty(1, 3, *size)))
    assert out.shape == (1, VOC_CLASSES, *size)
    assert features.shape == (1, 1024, *(-(-s // 8) for s in size))  # 41x41 at 321, 64x64 at 512


@pytest.mark.slow
def test_paper_config_has_about_20_5m_parameters() -> None:
    with torch.device("meta"):
        model = build(PAPER, num_classes=VOC_CLASSES)
    n = sum(p.numel() for p in model.parameters())
    # VGG16 convs 14,714,688 + fc6 4,719,616 + fc7 1,049,600 + fc8 21,525
    assert n == 20_505_429
    assert n == pytest.approx(20.5e6, rel=0.01)
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in PARTS}
    assert parts == {"encoder": 14_714_688, "fcn": 5_769_216, "decoder": 21_525}


@pytest.mark.slow
def test_backward_reaches_every_part() -> None:
    model = build(TINY, num_classes=5)
    model(torch.randn(2, 3, 96, 96)).logsumexp(1).mean().backward()
    for part in PARTS:
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert any(g.abs().sum() > 0 for g in grads), part


# --- structure ---------------------------------------------------------------------------------


def test_parts_partition_the_parameters() -> None:
    model = build(SMALL, num_classes=5)
    assert isinstance(model, DeepLabV1)
    assert [n for n, _ in model.named_children()] == list(PARTS)
    ids = [{id(p) for p in getattr(model, part).parameters()} for part in PARTS]
    assert all(ids), "every part has parameters"
    assert sum(map(len, ids)) == len(set().union(*ids)), "parts overlap"
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    assert not hasattr(model, "head")  # the classifier is in the decoder
    assert model.decoder.classifier.out_channels == 5


@pytest.mark.slow
def test_layers_as_in_the_paper() -> None:
    model = build(PAPER, num_classes=VOC_CLASSES)
    pools = [m for m in model.encoder.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [
        (3, 1, 1)
    ] * 2
    assert [c.dilation for c in convs(model)] == [(1, 1)] * 10 + [(2, 2)] * 3
    assert [c.padding for c in convs(model)] == [(1, 1)] * 10 + [(2, 2)] * 3
    avg = model.encoder.pool5a
    assert isinstance(avg, nn.AvgPool2d) and (avg.kernel_size, avg.stride, avg.padding) == (3, 1, 1)
    fc6, fc7 = model.fcn.fc6, model.fcn.fc7
    assert (fc6.out_channels, fc6.kernel_size, fc6.dilation, fc6.padding) == (
        1024,
        (3, 3),
        (12, 12),
        (12, 12),
    )
    assert (fc7.in_channels, fc7.out_channels, fc7.kernel_size) == (1024, 1024, (1, 1))
    drops = [m for m in model.fcn if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)  # after fc6 and fc7
    assert count(model, nn.Dropout) == 2 and count(model, nn.Dropout2d) == 0
    assert count(model, nn.BatchNorm2d) == 0


def test_classifier_init_normal_std_001() -> None:
    torch.manual_seed(0)
    model = build(dataclasses.replace(SMALL, fc_channels=512), num_classes=64)
    w = model.decoder.classifier.weight
    assert w.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(model.decoder.classifier.bias == 0)


@pytest.mark.parametrize("encoder_bn,fcn_bn", list(itertools.product([True, False], repeat=2)))
@pytest.mark.slow
def test_bn_switches(encoder_bn: bool, fcn_bn: bool) -> None:
    cfg = dataclasses.replace(SMALL, encoder_bn=encoder_bn, fcn_bn=fcn_bn)
    model = build(cfg, num_classes=4)
    assert count(model.encoder, nn.BatchNorm2d) == (13 if encoder_bn else 0)
    assert count(model.fcn, nn.BatchNorm2d) == (2 if fcn_bn else 0)
    assert count(model.decoder, nn.BatchNorm2d) == 0
    # a conv right before BN has no bias in the FCN (BN cancels it)
    assert (model.fcn.fc6.bias is None) == fcn_bn
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4, 64, 64)


def test_decoder_bn_is_ignored() -> None:
    torch.manual_seed(0)
    a = build(dataclasses.replace(SMALL, decoder_bn=True), 3).state_dict()
    torch.manual_seed(0)
    b = build(dataclasses.replace(SMALL, decoder_bn=False), 3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_width_and_fc_channels() -> None:
    model = build(SMALL, num_classes=5)
    assert [c.out_channels for c in convs(model)] == [
        8,
        8,
        16,
        16,
        32,
        32,
        32,
        64,
        64,
        64,
        64,
        64,
        64,
    ]
    assert model.fcn.fc6.in_channels == 64 and model.fcn.fc6.out_channels == 64
    assert model.decoder.classifier.in_channels == 64


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.slow
def test_encoder_mirrors_torchvision_layout(batch_norm: bool) -> None:
    features = build(dataclasses.replace(WIDE_ENCODER, encoder_bn=batch_norm), 2).encoder.features
    reference = make_layers(cfgs["D"], batch_norm=batch_norm)  # torchvision's vgg16(_bn).features
    assert [type(m) for m in features] == [type(m) for m in reference]
    ours = {k: v.shape for k, v in features.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}


# --- config ------------------------------------------------------------------------------------


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"^model\.fc_kernel=4: must be odd for deeplabv1"):
        ModelConfig(name="deeplabv1", fc_kernel=4)
    ModelConfig(name="deconvnet", fc_kernel=4)  # DeconvNet's unpadded fc6 takes any kernel
    # DeconvNet's minimum image size (fc6 without padding) does not apply: fc6 is padded
    TrialConfig(data=DataConfig(image_size=32), model=ModelConfig(name="deeplabv1", fc_kernel=7))
    with pytest.raises(ConfigError, match=r"data\.image_size=32: five pools leave 1x1"):
        TrialConfig(data=DataConfig(image_size=32), model=ModelConfig(fc_kernel=7))
    with pytest.raises(ConfigError, match=r"^model\.name='deeplab': must be one of deconvnet"):
        ModelConfig(name="deeplab")
    cfg = with_overrides(TrialConfig(), {"model.name": "deeplabv1"})
    assert cfg.model.name == "deeplabv1"


# --- weights -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_weights_path_loads_torchvision_vgg16_bn(tmp_path: Path) -> None:
    torch.manual_seed(1)
    # torchvision's vgg16_bn().features layout (random values; the classifier would be ignored)
    source = {f"features.{k}": v for k, v in make_layers(cfgs["D"], True).state_dict().items()}
    torch.save(source, tmp_path / "vgg16_bn.pth")
    cfg = dataclasses.replace(
        WIDE_ENCODER, encoder_bn=True, weights_path=str(tmp_path / "vgg16_bn.pth")
    )
    model = build(cfg, 3)
    ours = model.encoder.features.state_dict()
    for key, value in encoder_state_from_vgg(source).items():
        assert torch.equal(ours[key.removeprefix("features.")], value), key
    # conv5_3 (dilated here) takes VGG's conv5_3; the FCN and classifier keep their init
    assert torch.equal(convs(model)[-1].weight, source["features.40.weight"])


@pytest.mark.slow
def test_weights_path_loads_plain_vgg16(tmp_path: Path) -> None:
    torch.manual_seed(2)
    features = make_layers(cfgs["D"], batch_norm=False)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.weight"] = torch.zeros(10, 4)  # classifier.* is ignored
    torch.save(state, tmp_path / "vgg16.pth")
    model = build(dataclasses.replace(WIDE_ENCODER, weights_path=str(tmp_path / "vgg16.pth")), 3)
    expected = [m for m in features if isinstance(m, nn.Conv2d)]
    for ours, theirs in zip(convs(model), expected, strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


@pytest.mark.slow
def test_pretrained_loads_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(3)
    features = make_layers(cfgs["D"], batch_norm=False)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    name = Path(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url).name
    torch.save(state, hub / name)
    # a cached file is loaded as is (torch hub checks the hash on download only)
    model = build(dataclasses.replace(WIDE_ENCODER, pretrained=True), 3)
    assert torch.equal(convs(model)[0].weight, state["features.0.weight"])
    assert torch.equal(convs(model)[-1].weight, state["features.28.weight"])


# --- optimiser groups and the audit ------------------------------------------------------------


def test_f_lr_groups_and_audit_ok() -> None:
    model = build(SMALL, num_classes=4)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, f_lr=1e-4))
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"encoder": 1e-4, "fcn": 1e-3, "decoder": 1e-3}
    report = audit_param_groups(model, optimizer)
    assert report.ok, report.findings
    assert [r.module for r in report.modules] == list(PARTS)


def test_audit_catches_the_story_bug() -> None:
    model = build(SMALL, num_classes=4)
    optimizer = build_buggy_optimizer(model, OptimConfig(), "encoder-only-optimizer")
    codes = {f.code for f in audit_param_groups(model, optimizer).findings}
    assert {"missing:fcn", "missing:decoder"} <= codes


# --- a whole trial -----------------------------------------------------------------------------


def test_trial_with_model_deeplabv1(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["trial", "--data", str(tiny_data), "--out", str(tmp_path / "runs"), "--name", "dl"]
    args += ["--model", "deeplabv1", "--image-size", "48", "--width", "0.0625"]
    args += ["--fc-channels", "16", "--epochs", "1", "--batch-size", "8", "--tracking", "none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "param-group audit: ok" in out
    run = tmp_path / "runs" / "dl"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "deeplabv1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["flags"] == []
    modules = [row["module"] for row in json.loads((run / "audit.json").read_text())["modules"]]
    assert modules == list(PARTS)
