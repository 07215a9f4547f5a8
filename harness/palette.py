"""The one class palette: a class has the same colour in every mask the harness draws (the EDA
report, the study report's predicted masks, the ``--tracking local`` panels)."""

from __future__ import annotations

import colorsys

import numpy as np

# matplotlib's tab20, strong tones first, then the light ones (no matplotlib needed here)
_TAB20 = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip
BACKGROUND = (25, 25, 25)
IGNORE = (255, 255, 255)


def class_palette(n: int) -> np.ndarray:
    """``[256, 3]`` uint8 colours for class ids: 0 (background) near black, 1..n-1 distinct,
    n and above (the ignore index 255 among them) white. Index it with a mask directly."""
    colours = np.full((256, 3), IGNORE, dtype=np.uint8)
    colours[0] = BACKGROUND
    for k in range(1, min(n, 256)):
        if n - 1 <= len(_TAB20):
            colours[k] = _TAB20[k - 1]
        else:  # many classes: evenly spaced hues
            rgb = colorsys.hsv_to_rgb((k - 1) / (n - 1), 0.85, 0.95)
            colours[k] = np.round(np.asarray(rgb) * 255)
    return colours
