"""DeconvNet (Noh, Hong, Han, ICCV 2015) on a VGG16 backbone, with switchable BatchNorm.

The model has four top-level parts, so that optimizer groups and monitors can address them:

- ``encoder``: VGG16 conv1_1..conv5_3 in a ``features`` Sequential with exactly torchvision's
  ``vgg16().features`` / ``vgg16_bn().features`` layout, so ImageNet state dicts map 1:1;
- ``fcn``: fc6 (fc_kernel x fc_kernel conv, no padding), fc7 (1x1), fc6-deconv (transposed conv
  back to the encoder's width);
- ``decoder``: max-unpooling with the encoder's pool indices + 3x3 deconvolutions, mirroring VGG16;
- ``head``: the 1x1 classifier.

Convs followed by BN have no bias in ``fcn`` and ``decoder`` (BN cancels it). The encoder keeps
torchvision's biases so that ImageNet weights load; with ``encoder_bn`` their gradient is zero up to
rounding, so an update monitor sees them move only through weight decay.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_BN_Weights, VGG16_Weights

from harness.config import ModelConfig
from harness.errors import WeightsError

__all__ = [
    "DeconvNet",
    "DeconvNetDecoder",
    "EncoderOutput",
    "VGG16Encoder",
    "build_deconvnet",
    "encoder_state_from_vgg",
    "load_pretrained",
    "load_weights",
]

# VGG16 ("D" in the paper and in torchvision): channels per conv, "M" for a 2x2/2 max pool.
VGG16_LAYOUT: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip
# The decoder mirrors it, deepest stage first; each stage starts with an unpool.
DECODER_LAYOUT: list[list[int]] = [
    [512, 512, 512],
    [512, 512, 256],
    [256, 256, 128],
    [128, 64],
    [64, 64],
]


def _ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class EncoderOutput(NamedTuple):
    out: Tensor
    indices: list[Tensor]  # pool indices, shallowest first
    sizes: list[torch.Size]  # feature-map sizes before each pool, shallowest first


class VGG16Encoder(nn.Module):
    """VGG16 conv1_1..conv5_3; the pools return their indices for the decoder's unpooling."""

    def __init__(self, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                # ceil_mode keeps odd sizes (e.g. 25 -> 13) instead of dropping the last row
                layers.append(nn.MaxPool2d(2, 2, return_indices=True, ceil_mode=True))
            else:
                out_channels = _ch(int(v), width)
                conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
                if batch_norm:
                    layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                else:
                    layers += [conv, nn.ReLU(inplace=True)]
                in_channels = out_channels
        # same indices as torchvision's vgg16(_bn)().features, so its state dict loads 1:1
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: Tensor) -> EncoderOutput:
        indices: list[Tensor] = []
        sizes: list[torch.Size] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape[-2:])
                x, idx = layer(x)
                indices.append(idx)
            else:
                x = layer(x)
        return EncoderOutput(x, indices, sizes)


def _fcn(
    in_channels: int, fc_channels: int, kernel: int, batch_norm: bool, dropout: float
) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()

    def block(name: str, conv: nn.Module, channels: int, drop: bool) -> None:
        layers[name] = conv
        if batch_norm:
            layers[f"{name}_bn"] = nn.BatchNorm2d(channels)
        layers[f"{name}_relu"] = nn.ReLU(inplace=True)
        if drop and dropout > 0:
            layers[f"{name}_drop"] = nn.Dropout2d(dropout)

    # a bias right before BN is cancelled by the BN mean: drop it (it would only get zero grads)
    bias = not batch_norm
    block("fc6", nn.Conv2d(in_channels, fc_channels, kernel, bias=bias), fc_channels, True)
    block("fc7", nn.Conv2d(fc_channels, fc_channels, 1, bias=bias), fc_channels, True)
    block(
        "fc6_deconv",
        nn.ConvTranspose2d(fc_channels, in_channels, kernel, bias=bias),
        in_channels,
        False,
    )
    return nn.Sequential(layers)


class DeconvNetDecoder(nn.Module):
    """Unpool + 3x3 deconvs, stage 5 (deepest) to stage 1."""

    def __init__(self, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        in_channels = _ch(512, width)
        stages: list[nn.Sequential] = []
        for stage_no, channels in zip(range(5, 0, -1), DECODER_LAYOUT, strict=True):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, c in enumerate(channels, start=1):
                out_channels = _ch(c, width)
                name = f"deconv{stage_no}_{i}"
                layers[name] = nn.ConvTranspose2d(
                    in_channels, out_channels, 3, padding=1, bias=not batch_norm
                )
                if batch_norm:
                    layers[f"{name}_bn"] = nn.BatchNorm2d(out_channels)
                layers[f"{name}_relu"] = nn.ReLU(inplace=True)
                in_channels = out_channels
            stages.append(nn.Sequential(layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_channels

    def forward(self, x: Tensor, indices: list[Tensor], sizes: list[torch.Size]) -> Tensor:
        for stage, idx, size in zip(self.stages, reversed(indices), reversed(sizes), strict=True):
            # output_size restores odd sizes that the ceil-mode pool rounded up
            x = self.unpool(x, idx, output_size=size)
            x = stage(x)
        return x


class DeconvNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        encoder_bn: bool = True,
        fcn_bn: bool = True,
        decoder_bn: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: must be >= 1")
        self.fc_kernel = fc_kernel
        self.encoder = VGG16Encoder(width, encoder_bn)
        self.fcn = _fcn(self.encoder.out_channels, fc_channels, fc_kernel, fcn_bn, dropout)
        self.decoder = DeconvNetDecoder(width, decoder_bn)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=1)

        for m in self.modules():
            # as torchvision's VGG; for ConvTranspose2d torch's "fan_out" is in_channels * k * k
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        enc = self.encoder(x)
        h, w = enc.out.shape[-2:]
        if min(h, w) < self.fc_kernel:
            # torch's own error here does not say which input size would work
            raise ValueError(
                f"input {tuple(x.shape[-2:])} leaves {h}x{w} after five pools, smaller than "
                f"fc_kernel={self.fc_kernel}; use inputs >= {32 * self.fc_kernel - 31} pixels"
            )
        x = self.fcn(enc.out)
        x = self.decoder(x, enc.indices, enc.sizes)
        return self.head(x)


_M = TypeVar("_M", bound=nn.Module)


def build_deconvnet(cfg: ModelConfig, num_classes: int, *, progress: bool = True) -> DeconvNet:
    model = DeconvNet(
        num_classes,
        width=cfg.width,
        fc_channels=cfg.fc_channels,
        fc_kernel=cfg.fc_kernel,
        encoder_bn=cfg.encoder_bn,
        fcn_bn=cfg.fcn_bn,
        decoder_bn=cfg.decoder_bn,
        dropout=cfg.dropout,
    )
    return apply_weights(model, cfg, progress=progress)


def apply_weights(model: _M, cfg: ModelConfig, *, progress: bool = True) -> _M:
    """ImageNet VGG16(-BN) weights into the encoder (``cfg.pretrained``), or a local state dict
    (``cfg.weights_path``), or nothing: the same for every VGG16-based model."""
    if cfg.pretrained:
        load_pretrained(model, batch_norm=cfg.encoder_bn, progress=progress)
    elif cfg.weights_path:
        load_weights(model, cfg.weights_path)
    return model


# --- weights ----------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    # one line for the CLI, which prints a WeightsError as a single line
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_state(
    module: nn.Module, state: Mapping[str, Any], source: str, prefix: str = "", hint: str = ""
) -> None:
    """Raise WeightsError naming ``source`` and the first key that does not fit ``module``."""
    expected = module.state_dict()
    hint = f" ({hint})" if hint else ""
    for key, value in expected.items():
        if key not in state:
            # checkpoints older than torch 0.4.1 (as torchvision's vgg16_bn file) lack this buffer;
            # BatchNorm's loader fills it in
            if key.endswith("num_batches_tracked"):
                continue
            raise WeightsError(f"{source}: missing key {prefix}{key}{hint}")
        if not isinstance(state[key], Tensor) or state[key].shape != value.shape:
            raise WeightsError(
                f"{source}: key {prefix}{key} has shape {_shape(state[key])}, the model expects "
                f"{tuple(value.shape)}{hint}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected key {prefix}{key}{hint}")


def encoder_state_from_vgg(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Keep the ``features.*`` entries of a torchvision VGG state dict (drop ``classifier.*``).

    The result loads into ``VGG16Encoder`` as is, because its ``features`` mirrors torchvision's.
    """
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _vgg_hint(state: Mapping[str, Any], encoder: VGG16Encoder) -> str:
    # in vgg16_bn index 1 is a BatchNorm, in vgg16 a ReLU without state
    file_bn = "features.1.running_mean" in state
    model_bn = isinstance(encoder.features[1], nn.BatchNorm2d)
    if file_bn and not model_bn:
        return "the file is VGG16-BN; set model.encoder_bn=true"
    if model_bn and not file_bn:
        return "the file is VGG16 without BN; set model.encoder_bn=false"
    return "model.width must match the file's channels (1.0 for ImageNet VGG16)"


def _load_encoder_from_vgg(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    encoder: VGG16Encoder = model.encoder  # type: ignore[assignment]
    features = {k.removeprefix("features."): v for k, v in encoder_state_from_vgg(state).items()}
    _check_state(encoder.features, features, source, "features.", _vgg_hint(state, encoder))
    # a plain dict (no version metadata) lets BatchNorm add a missing num_batches_tracked
    encoder.features.load_state_dict(features, strict=False)


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into ``model``.

    Accepted: a torchvision VGG16/VGG16-BN state dict (``features.N.*``; ``classifier.*`` is
    ignored) for the encoder, or a whole harness model (``encoder.*``, ``fcn.*``, ...), also
    wrapped as ``{"model": ...}`` or ``{"state_dict": ...}`` and with the ``_orig_mod.`` or
    ``module.`` prefix of a compiled or DataParallel model. Any problem raises WeightsError
    naming the file and the first offending key.
    """
    source = str(path)
    try:
        # mmap reads only the tensors we keep (not a VGG's 400 MB classifier); it needs the zip
        # format that torch.save writes since 1.6, older files are read whole
        mmap = zipfile.is_zipfile(path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise WeightsError(f"{source}: weights file not found") from None
    except Exception as exc:  # a corrupt file can raise almost anything (IndexError, KeyError...)
        raise WeightsError(f"{source}: cannot read a torch state dict ({_reason(exc)})") from exc
    if isinstance(state, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{source}: not a state dict (a mapping of parameter names to tensors)")

    # torch.compile and DataParallel save their wrapped model's keys under these prefixes
    for prefix in ("_orig_mod.", "module."):
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    keys = list(state)
    if any(k.startswith("encoder.") for k in keys):
        _check_state(model, state, source, hint="a harness model saved with another config?")
        model.load_state_dict(dict(state), strict=False)
    elif any(k.startswith("features.") for k in keys):
        _load_encoder_from_vgg(model, state, source)
    else:
        raise WeightsError(
            f"{source}: neither a torchvision VGG16 state dict (features.*) nor a harness model "
            f"(encoder.*, fcn.*, decoder.*, head.*); first key: {keys[0]}"
        )


def load_pretrained(model: nn.Module, batch_norm: bool, progress: bool = True) -> None:
    """Load torchvision's ImageNet VGG16(-BN) weights into the encoder (torch hub cache first)."""
    weights = VGG16_BN_Weights.IMAGENET1K_V1 if batch_norm else VGG16_Weights.IMAGENET1K_V1
    label = "VGG16-BN" if batch_norm else "VGG16"
    file_name = os.path.basename(urlparse(weights.url).path)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / file_name
    was_cached = cached.exists()
    try:
        state = weights.get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as exc:  # URLError, hash mismatch, or a corrupt cached file (any type)
        reason = _reason(exc)
        if was_cached:
            raise WeightsError(
                f"cannot read cached {label} ImageNet weights {cached} ({reason}): delete it to "
                "download again, or pass model.weights_path=FILE, or use --no-pretrained"
            ) from exc
        raise WeightsError(
            f"cannot download {label} ImageNet weights from {weights.url} (offline? {reason}): "
            f"put {file_name} into {cache_dir} (the torch hub cache, $TORCH_HOME/hub/checkpoints), "
            "or pass model.weights_path=FILE, or use --no-pretrained"
        ) from exc
    _load_encoder_from_vgg(model, state, str(cached))
