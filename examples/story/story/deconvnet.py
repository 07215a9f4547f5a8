"""A DeconvNet (Noh et al., 2015), small enough for a CPU: a VGG-style encoder whose max pools
keep their indices, fc6/fc7 as convolutions, and a decoder that unpools with those indices."""

import torch
from torch import nn


def _conv(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU()]


def _deconv(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    layers = [nn.ConvTranspose2d(cin, cout, 3, padding=1)]
    return [*layers, *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU()]


class Encoder(nn.Module):
    def __init__(self, widths: list[int], bn: bool) -> None:
        super().__init__()
        cins = [3, *widths[:-1]]
        self.blocks = nn.ModuleList(
            nn.Sequential(*_conv(a, b, bn), *_conv(b, b, bn))
            for a, b in zip(cins, widths, strict=False)
        )
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)

    def forward(self, x: torch.Tensor):
        indices, sizes = [], []
        for block in self.blocks:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        return x, indices, sizes


class Decoder(nn.Module):
    def __init__(self, widths: list[int], num_classes: int, bn: bool) -> None:
        super().__init__()
        couts = [widths[0], *widths[:-1]]  # each stage ends at the width of the one above it
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.blocks = nn.ModuleList(
            nn.Sequential(*_deconv(w, w, bn), *_deconv(w, c, bn))
            for w, c in zip(reversed(widths), reversed(couts), strict=False)
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x, indices, sizes):
        for block, idx, size in zip(self.blocks, reversed(indices), reversed(sizes), strict=False):
            x = block(self.unpool(x, idx, output_size=size))
        return self.classifier(x)


class DeconvNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8, fc: int = 64, bn: bool = True) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.encoder = Encoder(widths, bn)
        self.fcn = nn.Sequential(  # fc6 / fc7 as convolutions, then back to the encoder's width
            *_conv(widths[-1], fc, bn),
            nn.Conv2d(fc, fc, 1),
            nn.ReLU(),
            *_deconv(fc, widths[-1], bn),
        )
        self.decoder = Decoder(widths, num_classes, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, indices, sizes = self.encoder(x)
        return self.decoder(self.fcn(x), indices, sizes)


def make(num_classes: int, width: int = 8, fc: int = 64, bn: bool = True) -> DeconvNet:
    return DeconvNet(num_classes, width=width, fc=fc, bn=bn)
