"""DeconvNet: shapes, layouts, switches, init and weight loading (no network needed)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from harness.config import ModelConfig
from harness.errors import WeightsError
from harness.models import MODEL_PARTS, build_model, encoder_state_from_vgg

SMALL = ModelConfig(width=0.125, fc_channels=128, fc_kernel=3)  # the CPU-sized trial
PAPER = ModelConfig(width=1.0, fc_channels=4096, fc_kernel=7)
# width 1 (ImageNet channels) but a tiny FCN, for the weight-loading tests
WIDE_ENCODER = ModelConfig(width=1.0, fc_channels=8, fc_kernel=1)
VOC_CLASSES = 21


def build(cfg: ModelConfig, num_classes: int, progress: bool = False) -> Any:
    # Any: the tests reach into DeconvNet's submodules, build_model is typed as nn.Module
    return build_model(cfg, num_classes, progress=progress)


def count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def conv_weights(model: Any) -> list[torch.Tensor]:
    return [m.weight for m in model.encoder.features if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def vgg16_bn_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A full torchvision vgg16_bn state dict (random init, classifier included) on disk."""
    torch.manual_seed(1)
    state = torchvision.models.vgg16_bn().state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16_bn.pth"
    torch.save(state, path)
    return path, state


# --- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(96, 96), (100, 100), (128, 128), (65, 65), (97, 130)])
@pytest.mark.slow
def test_logits_have_input_size(size: tuple[int, int]) -> None:
    model = build(SMALL, num_classes=12)
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 12, *size)


@pytest.mark.slow
def test_backward_reaches_every_part() -> None:
    model = build(SMALL, num_classes=12)
    model(torch.randn(2, 3, 100, 100)).logsumexp(1).mean().backward()
    for part in MODEL_PARTS:
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert any(g.abs().sum() > 0 for g in grads), part


@pytest.mark.slow
def test_too_small_input_says_what_works() -> None:
    model = build(SMALL, num_classes=3)
    with pytest.raises(ValueError, match=r"2x2 after five pools.*>= 65"):
        model(torch.randn(1, 3, 64, 64))


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    return build(PAPER, num_classes=VOC_CLASSES).eval()


@pytest.mark.slow
def test_paper_config_has_about_252m_parameters(paper_model: nn.Module) -> None:
    n = sum(p.numel() for p in paper_model.parameters())
    # 251,793,173 with 21 classes (VOC); fc6 and fc6-deconv alone hold 205M
    assert n == pytest.approx(251_793_173, rel=0.02)
    assert 245e6 < n < 260e6


@torch.no_grad()
@pytest.mark.slow
def test_paper_config_logits_have_input_size(paper_model: nn.Module) -> None:
    out = paper_model(torch.randn(1, 3, 224, 224))  # the paper's input: fc6 sees 7x7
    assert out.shape == (1, VOC_CLASSES, 224, 224)


@torch.no_grad()
@pytest.mark.parametrize("size", [(512, 512), (500, 375)])
def test_paper_config_at_competition_size(size: tuple[int, int]) -> None:
    # shapes only: on the meta device (a real forward at 512 costs ~4 s on two CPU cores)
    with torch.device("meta"):
        model = build(PAPER, num_classes=VOC_CLASSES).eval()
        out = model(torch.empty(1, 3, *size))
    assert out.shape == (1, VOC_CLASSES, *size)


# --- structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder_bn,fcn_bn,decoder_bn", list(itertools.product([True, False], repeat=3))
)
@pytest.mark.slow
def test_bn_switches(encoder_bn: bool, fcn_bn: bool, decoder_bn: bool) -> None:
    cfg = dataclasses.replace(SMALL, encoder_bn=encoder_bn, fcn_bn=fcn_bn, decoder_bn=decoder_bn)
    model = build(cfg, num_classes=4)
    # 13 convs in VGG16; fc6, fc7, fc6-deconv; 13 deconvs mirroring VGG16
    assert count(model.encoder, nn.BatchNorm2d) == (13 if encoder_bn else 0)
    assert count(model.fcn, nn.BatchNorm2d) == (3 if fcn_bn else 0)
    assert count(model.decoder, nn.BatchNorm2d) == (13 if decoder_bn else 0)
    assert count(model.head, nn.BatchNorm2d) == 0
    assert count(model.encoder, nn.Conv2d) == 13
    assert count(model.decoder, nn.ConvTranspose2d) == 13
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 4, 96, 96)


@pytest.mark.parametrize(
    "batch_norm,pools", [(True, [6, 13, 23, 33, 43]), (False, [4, 9, 16, 23, 30])]
)
@pytest.mark.slow
def test_encoder_mirrors_torchvision_layout(batch_norm: bool, pools: list[int]) -> None:
    cfg = dataclasses.replace(WIDE_ENCODER, encoder_bn=batch_norm)
    features = build(cfg, num_classes=2).encoder.features
    reference = make_layers(cfgs["D"], batch_norm=batch_norm)  # torchvision's vgg16(_bn).features
    assert [type(m) for m in features] == [type(m) for m in reference]
    assert [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] == pools
    ours = {k: v.shape for k, v in features.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}


def test_parts_partition_the_parameters() -> None:
    model = build(SMALL, num_classes=5)
    ids = [{id(p) for p in getattr(model, part).parameters()} for part in MODEL_PARTS]
    assert all(ids), "every part has parameters"
    assert sum(map(len, ids)) == len(set().union(*ids)), "parts overlap"
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    assert isinstance(model.head, nn.Conv2d) and model.head.out_channels == 5


def test_width_scales_channels() -> None:
    model = build(SMALL, num_classes=5)
    convs = [m for m in model.encoder.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert model.fcn.fc6.out_channels == 128 and model.fcn.fc6.kernel_size == (3, 3)
    assert model.fcn.fc6_deconv.out_channels == 64
    assert model.head.in_channels == 8


def test_dropout_toggles_dropout2d() -> None:
    assert count(build(SMALL, num_classes=2), nn.Dropout2d) == 0
    model = build(dataclasses.replace(SMALL, dropout=0.5), num_classes=2)
    drops = [m for m in model.fcn if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 2 and all(d.p == 0.5 for d in drops)
    assert count(model, nn.Dropout2d) == 2  # only after fc6 and fc7


def test_init_is_deterministic_under_seed() -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build(SMALL, num_classes=3).state_dict()

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.features.0.weight"], c["encoder.features.0.weight"])
    # torchvision's init: BN weight 1 and bias 0, conv biases 0
    assert torch.all(a["encoder.features.1.weight"] == 1)
    assert torch.all(a["encoder.features.0.bias"] == 0)


# --- weights -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_weights_path_loads_torchvision_vgg16_bn(vgg16_bn_state: tuple[Path, dict]) -> None:
    path, source = vgg16_bn_state
    model = build(dataclasses.replace(WIDE_ENCODER, weights_path=str(path)), 3)
    ours = model.encoder.features.state_dict()
    for key, value in encoder_state_from_vgg(source).items():
        assert torch.equal(ours[key.removeprefix("features.")], value), key
    assert torch.equal(conv_weights(model)[0], source["features.0.weight"])


@pytest.mark.slow
def test_weights_path_without_num_batches_tracked(
    tmp_path: Path, vgg16_bn_state: tuple[Path, dict]
) -> None:
    # files saved before torch 0.4.1 (as torchvision's vgg16_bn ImageNet file) lack this buffer
    _, source = vgg16_bn_state
    state = {k: v for k, v in encoder_state_from_vgg(source).items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    model = build(dataclasses.replace(WIDE_ENCODER, weights_path=str(tmp_path / "old.pth")), 3)
    assert torch.equal(conv_weights(model)[3], source["features.10.weight"])


@pytest.mark.slow
def test_weights_path_loads_plain_vgg16(tmp_path: Path) -> None:
    torch.manual_seed(2)
    features = make_layers(cfgs["D"], batch_norm=False)
    # torchvision vgg16() layout; a small stand-in for classifier.*, which must be ignored
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.weight"] = torch.zeros(10, 4)
    torch.save(state, tmp_path / "vgg16.pth")
    cfg = dataclasses.replace(
        WIDE_ENCODER, encoder_bn=False, weights_path=str(tmp_path / "vgg16.pth")
    )
    model = build(cfg, 3)
    expected = [m.weight for m in features if isinstance(m, nn.Conv2d)]
    assert all(torch.equal(a, b) for a, b in zip(conv_weights(model), expected, strict=True))


@pytest.mark.slow
def test_weights_path_round_trips_a_harness_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = build(SMALL, num_classes=4)
    torch.save(trained.state_dict(), tmp_path / "model.pth")
    torch.manual_seed(1)
    loaded = build(dataclasses.replace(SMALL, weights_path=str(tmp_path / "model.pth")), 4)
    a, b = trained.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint that wraps the state dict, or a compiled model's keys, load too
    compiled = {f"_orig_mod.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"model": compiled, "epoch": 3}, tmp_path / "ckpt.pth")
    wrapped = build(dataclasses.replace(SMALL, weights_path=str(tmp_path / "ckpt.pth")), 4)
    assert torch.equal(wrapped.head.weight, trained.head.weight)


@pytest.mark.slow
def test_weights_path_errors_name_file_and_key(
    tmp_path: Path, vgg16_bn_state: tuple[Path, dict]
) -> None:
    vgg_path, _ = vgg16_bn_state

    def load(cfg: ModelConfig, path: Path, num_classes: int = 3) -> None:
        build(dataclasses.replace(cfg, weights_path=str(path)), num_classes)

    with pytest.raises(WeightsError, match=r"nope\.pth: weights file not found"):
        load(SMALL, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth: cannot read"):
        load(SMALL, tmp_path / "junk.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"other\.pth: neither .*first key: weight"):
        load(SMALL, tmp_path / "other.pth")
    # ImageNet channels into a width-0.125 encoder
    with pytest.raises(WeightsError, match=r"vgg16_bn\.pth: key features\.0\.weight has shape"):
        load(SMALL, vgg_path)
    # VGG16-BN file into a plain-VGG16 encoder
    no_bn = dataclasses.replace(WIDE_ENCODER, encoder_bn=False)
    with pytest.raises(WeightsError, match=r"missing key features\.2\.weight .*encoder_bn=true"):
        load(no_bn, vgg_path)
    # a harness model saved with another config
    torch.save(build(SMALL, 4).state_dict(), tmp_path / "model.pth")
    with pytest.raises(WeightsError, match=r"model\.pth: key head\.weight has shape"):
        load(SMALL, tmp_path / "model.pth", num_classes=5)
    with pytest.raises(WeightsError, match=r"model\.pth: (missing|unexpected) key fcn\.fc6"):
        load(dataclasses.replace(SMALL, fcn_bn=False), tmp_path / "model.pth", num_classes=4)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and a download that fails as it does on an offline machine."""

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize(
    "encoder_bn,file_name", [(True, "vgg16_bn-6c64b313.pth"), (False, "vgg16-397923af.pth")]
)
@pytest.mark.slow
def test_pretrained_offline_says_how_to_fix(
    offline_hub: Path, encoder_bn: bool, file_name: str
) -> None:
    cfg = dataclasses.replace(WIDE_ENCODER, pretrained=True, encoder_bn=encoder_bn)
    with pytest.raises(WeightsError) as info:
        build(cfg, num_classes=3)
    message = str(info.value)
    assert "\n" not in message
    assert "cannot download" in message and "offline" in message
    assert f"put {file_name} into {offline_hub}" in message
    assert "model.weights_path=" in message and "--no-pretrained" in message


@pytest.mark.slow
def test_pretrained_loads_from_the_hub_cache(
    offline_hub: Path, vgg16_bn_state: tuple[Path, dict]
) -> None:
    path, source = vgg16_bn_state
    offline_hub.mkdir(parents=True)
    url_name = os.path.basename(torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url)
    (offline_hub / url_name).symlink_to(path)
    model = build(dataclasses.replace(WIDE_ENCODER, pretrained=True), 3)
    assert torch.equal(conv_weights(model)[-1], source["features.40.weight"])
    assert torch.equal(model.encoder.features[41].running_var, source["features.41.running_var"])


@pytest.mark.slow
def test_pretrained_with_a_broken_cache_file(offline_hub: Path) -> None:
    offline_hub.mkdir(parents=True)
    (offline_hub / "vgg16-397923af.pth").write_bytes(b"truncated")
    cfg = dataclasses.replace(WIDE_ENCODER, pretrained=True, encoder_bn=False)
    with pytest.raises(WeightsError, match=r"cannot read cached VGG16 .*delete it"):
        build(cfg, 3)
