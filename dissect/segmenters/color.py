"""The color namer: Broden's 11 color names for every pixel, by a documented rule.

Registered as segmenter ``color`` (:class:`ColorNamer`); the other segmenters add its labels
as their color layer (:func:`color_layer`). :func:`name_colors` works on any uint8 RGB image
(toy scenes and real photos alike). The rule is a fixed, deterministic partition of HSV
space (H in degrees, S and V in [0, 1], with ``V = max(R,G,B)/255``, chroma
``C = (max - min)/255``, ``S = C / V``), applied in order:

1. ``V < 0.20``                                   -> black
2. achromatic (``S < 0.18`` or ``C < 0.08``):
   ``V >= 0.80`` -> white, ``V < 0.30`` -> black, otherwise -> grey
3. chromatic, by hue sector:

   ==============  ==========================================================
   hue (degrees)   name
   ==============  ==========================================================
   [345, 15)       red; pink if ``S < 0.55`` and ``V >= 0.70``;
                   brown if ``V < 0.40``
   [15, 45)        orange; brown if ``V < 0.60``;
                   pink if ``S < 0.45`` and ``V >= 0.85`` and hue < 25
   [45, 70)        yellow; brown if ``V < 0.50``
   [70, 170)       green
   [170, 255)      blue
   [255, 290)      purple
   [290, 345)      pink if ``V >= 0.60``, otherwise purple
   ==============  ==========================================================

The result is an integer array of indices into :data:`COLOR_NAMES`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dissect.segmenters.base import Segmenter
from dissect.segmenters.registry import register_segmenter

COLOR_NAMES = [
    "black",
    "blue",
    "brown",
    "green",
    "grey",
    "orange",
    "pink",
    "purple",
    "red",
    "white",
    "yellow",
]

_I = {name: i for i, name in enumerate(COLOR_NAMES)}

# Hue sector of each whole degree 0..360 (360 only guards float rounding).
_SECTOR_OF_DEGREE = np.zeros(361, dtype=np.int64)
for _lo, _hi, _sec in [(15, 45, 1), (45, 70, 2), (70, 170, 3), (170, 255, 4), (255, 290, 5),
                       (290, 345, 6)]:
    _SECTOR_OF_DEGREE[_lo:_hi] = _sec
_SECTOR_NAME = np.array([_I[n] for n in ["red", "orange", "yellow", "green", "blue", "purple",
                                         "pink"]], dtype=np.int64)
# A pixel darker than this value is brown (red, orange and yellow hues only).
_SECTOR_BROWN_BELOW = np.array([0.40, 0.60, 0.50, 0, 0, 0, 0], dtype=np.float32)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (hue in degrees [0, 360), saturation, value, chroma) as float32 arrays."""
    rgb = np.asarray(rgb)
    scale = np.float32(1.0 / 255.0)
    r = rgb[..., 0].astype(np.float32) * scale
    g = rgb[..., 1].astype(np.float32) * scale
    b = rgb[..., 2].astype(np.float32) * scale
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    c = mx - mn
    inv_c = np.float32(60.0) / np.where(c > 0, c, np.float32(1.0))
    # Standard piecewise hue; where several channels tie for the max, red wins, then green.
    h = np.where(
        mx == r,
        (g - b) * inv_c,
        np.where(mx == g, (b - r) * inv_c + np.float32(120.0), (r - g) * inv_c + np.float32(240.0)),
    )
    h += np.where(h < 0, np.float32(360.0), np.float32(0.0))
    h = np.where(c > 0, h, np.float32(0.0))
    s = c / np.where(mx > 0, mx, np.float32(1.0))
    return h, s, mx, c


def name_colors(rgb: np.ndarray) -> np.ndarray:
    """Name the color of each pixel of an HxWx3 uint8 RGB image.

    Returns an HxW int64 array of indices into :data:`COLOR_NAMES` (see the module
    docstring for the rule).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"name_colors expects an HxWx3 RGB image, got shape {rgb.shape}")
    h, s, v, c = rgb_to_hsv(rgb)

    # Chromatic names by hue sector (0 red, 1 orange, 2 yellow, 3 green, 4 blue,
    # 5 purple, 6 magenta), then the light/dark variants of the sector.
    sector = _SECTOR_OF_DEGREE[h.astype(np.int32)]
    out = _SECTOR_NAME[sector]
    out = np.where(v < _SECTOR_BROWN_BELOW[sector], _I["brown"], out)
    pink = ((sector == 0) & (s < 0.55) & (v >= 0.70)) | (
        (sector == 1) & (s < 0.45) & (v >= 0.85) & (h < 25)
    )
    out = np.where(pink, _I["pink"], out)
    out = np.where((sector == 6) & (v < 0.60), _I["purple"], out)

    achromatic = (s < 0.18) | (c < 0.08)
    gray_name = np.where(v >= 0.80, _I["white"], np.where(v < 0.30, _I["black"], _I["grey"]))
    out = np.where(achromatic, gray_name, out)
    out = np.where(v < 0.20, _I["black"], out)
    return out


def _color_numbers(offset: int) -> np.ndarray:
    return np.arange(1, len(COLOR_NAMES) + 1, dtype=np.int64) + offset


def color_layer(images: Tensor, offset: int) -> Tensor:
    """The color namer's labels for images in [0, 1], numbered ``offset + 1 ...``."""
    u8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    lut = _color_numbers(offset)
    out = np.stack([lut[name_colors(im)] for im in u8])
    return torch.from_numpy(out).to(images.device)


class ColorNamer(Segmenter):
    """Broden's 11 color names for every pixel, by the documented rule."""

    name = "color"

    def __init__(self):
        self.concepts = [(f"{c}-c", "color") for c in COLOR_NAMES]
        self.layers = ["color"]

    def segment(self, images: Tensor) -> Tensor:
        """Color label numbers ``[N, 1, H, W]``."""
        return color_layer(images, 0)[:, None]


@register_segmenter("color", description="the color namer alone: Broden's 11 colors, for any image")
def color_namer(weights: str | None, progress: bool) -> ColorNamer:
    """The color namer (it has no weights)."""
    return ColorNamer()
