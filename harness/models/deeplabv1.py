"""DeepLab v1 LargeFOV (Chen et al., ICLR 2015) on a VGG16 backbone, with switchable BatchNorm.

The model has three top-level parts, the same names as DeconvNet's, so that optimizer groups
(``f_lr`` for the encoder), the param-group audit and the update monitor address them alike:

- ``encoder``: VGG16 conv1_1..conv5_3 in a ``features`` Sequential with exactly the module indices
  of torchvision's ``vgg16().features`` / ``vgg16_bn().features`` (so ImageNet state dicts load
  1:1, as into DeconvNet), but DeepLab's pools: pool1-3 3x3 stride 2 padding 1, pool4-5 3x3
  stride 1 padding 1, and conv5_1..5_3 with dilation 2 (padding 2); then ``pool5a``, a 3x3
  average pool stride 1 padding 1 (the public ports' pool5a). Output stride 8.
- ``fcn``: fc6 (``fc_kernel`` x ``fc_kernel`` conv, dilation 12, size-preserving padding; paper 3x3
  to 1024), fc7 (1x1, ``fc_channels``), each followed by ReLU (and BN before it with ``fcn_bn``,
  and elementwise dropout after it with ``dropout`` > 0, as the Caffe model's drop6/drop7).
- ``decoder``: the 1x1 classifier (fc8, init normal std 0.01, bias 0) and the parameter-free
  bilinear upsampling of its stride-8 logits to the input size. There is no ``head``: the
  classifier sits inside ``decoder`` (DESIGN.md section 3 allows either), so ``frozen-decoder`` and
  ``zero-lr-decoder`` hit it.

``decoder_bn`` has nothing to switch here: in both models it means "BN after every hidden conv of
the decoder" and the classifier never has BN (DeconvNet's ``head`` has none either); DeepLab's
decoder has no hidden conv. The flag is accepted and ignored, so a config or study may keep it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.models.deconvnet import VGG16_LAYOUT, _ch, apply_weights

__all__ = [
    "FC6_DILATION",
    "DeepLabV1",
    "DeepLabV1Decoder",
    "DeepLabV1Encoder",
    "build_deeplabv1",
]

FC6_DILATION = 12  # LargeFOV
CONV5_DILATION = 2  # pool4 no longer halves the map, so conv5 dilates to keep its field of view
OUTPUT_STRIDE = 8


class DeepLabV1Encoder(nn.Module):
    """VGG16 conv1_1..conv5_3 with DeepLab's pools and dilated conv5, then pool5a (avg)."""

    def __init__(self, width: float = 1.0, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        pool_no = 0
        for v in VGG16_LAYOUT:
            if v == "M":
                pool_no += 1
                # pool1-3 halve the map (ceil(n/2) for any n), pool4-5 keep it: output stride 8
                stride = 2 if pool_no <= 3 else 1
                layers.append(nn.MaxPool2d(3, stride, padding=1))
            else:
                out_channels = _ch(int(v), width)
                dilation = CONV5_DILATION if pool_no == 4 else 1
                conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
                if batch_norm:
                    layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
                else:
                    layers += [conv, nn.ReLU(inplace=True)]
                in_channels = out_channels
        # same indices and shapes as torchvision's vgg16(_bn)().features: its state dict loads 1:1
        self.features = nn.Sequential(*layers)
        # outside ``features`` so the layout above stays torchvision's; no parameters
        self.pool5a = nn.AvgPool2d(3, 1, padding=1)
        self.out_channels = in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pool5a(self.features(x))


def _fcn(
    in_channels: int, fc_channels: int, kernel: int, batch_norm: bool, dropout: float
) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    # a bias right before BN is cancelled by the BN mean: drop it (it would only get zero grads)
    bias = not batch_norm
    padding = FC6_DILATION * (kernel - 1) // 2  # odd kernel (ModelConfig checks): same size out
    convs = {
        "fc6": nn.Conv2d(
            in_channels, fc_channels, kernel, padding=padding, dilation=FC6_DILATION, bias=bias
        ),
        "fc7": nn.Conv2d(fc_channels, fc_channels, 1, bias=bias),
    }
    for name, conv in convs.items():
        layers[name] = conv
        if batch_norm:
            layers[f"{name}_bn"] = nn.BatchNorm2d(fc_channels)
        layers[f"{name}_relu"] = nn.ReLU(inplace=True)
        if dropout > 0:
            # Caffe's Dropout (drop6, drop7) is elementwise, not per channel
            layers[f"{name}_drop"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


class DeepLabV1Decoder(nn.Module):
    """The 1x1 classifier (fc8) and bilinear upsampling of its logits to the input size."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.classifier(x)
        # align_corners=True is Caffe's Interp: 321 px -> 41x41 -> exactly 321 (41 = 40 * 8 + 1)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class DeepLabV1(nn.Module):
    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        fc_channels: int = 1024,
        fc_kernel: int = 3,
        encoder_bn: bool = False,
        fcn_bn: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: must be >= 1")
        if fc_kernel < 1 or fc_kernel % 2 == 0:
            raise ValueError(f"fc_kernel={fc_kernel}: must be odd (fc6 keeps the map's size)")
        self.encoder = DeepLabV1Encoder(width, encoder_bn)
        self.fcn = _fcn(self.encoder.out_channels, fc_channels, fc_kernel, fcn_bn, dropout)
        self.decoder = DeepLabV1Decoder(fc_channels, num_classes)

        for m in self.modules():
            # as torchvision's VGG (and DeconvNet) for a model trained from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # the paper's fc8 init
        classifier = self.decoder.classifier
        nn.init.normal_(classifier.weight, std=0.01)
        if classifier.bias is not None:
            nn.init.constant_(classifier.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return self.decoder(self.fcn(self.encoder(x)), size)


def build_deeplabv1(cfg: ModelConfig, num_classes: int, *, progress: bool = True) -> DeepLabV1:
    # cfg.decoder_bn is ignored: the decoder is the classifier alone (see the module docstring)
    model = DeepLabV1(
        num_classes,
        width=cfg.width,
        fc_channels=cfg.fc_channels,
        fc_kernel=cfg.fc_kernel,
        encoder_bn=cfg.encoder_bn,
        fcn_bn=cfg.fcn_bn,
        dropout=cfg.dropout,
    )
    # the encoder's features mirror torchvision's VGG16(-BN) exactly as DeconvNet's do
    return apply_weights(model, cfg, progress=progress)
