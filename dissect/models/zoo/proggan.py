"""Progressive GAN generators (Karras et al. 2018), as GAN dissection used them.

The generators of the 2020 paper, converted from the authors' TensorFlow models to PyTorch,
are published at ``https://dissect.csail.mit.edu/models/`` (``proggan_bedroom-d8a89ff1.pth``
and so on: LSUN scenes, 256 x 256). The layout is davidbau/dissect's
``experiment/proggan.py``: a sequence of blocks from a latent ``z`` (``[N, z_dim]``, taken
as a 1 x 1 map) to an RGB image::

    layer1          (4x4)   pixel norm, 4x4 conv (padding 3) from z, wscale, leaky ReLU 0.2
    layer2          (4x4)   pixel norm, 3x3 conv, wscale, leaky ReLU
    layer3, layer4  (8x8)   pixel norm, 2x nearest upsampling, 3x3 conv, ...; then a 3x3 block
    ...                     one such pair per doubling of the resolution
    layer13, 14     (256x256)
    output_256x256          pixel norm, 1x1 conv to RGB, wscale (gain 1), no tanh

``wscale`` is the equalized learning rate: the conv has no bias and its output is scaled by
``gain / sqrt(fan_in)`` (gain ``sqrt(2) / kernel_size`` with ``fan_in`` the input channels,
i.e. ``sqrt(2 / (channels * k * k))``) before a learned bias ``wscale.b`` is added. The
state dict holds only ``<block>.conv.weight`` and ``<block>.wscale.b``. Older files name
the blocks ``features.0 ..`` and the output ``output``; both styles load. The channel
widths and the latent size are read from the weights (512 for the published files), so a
file of any width and resolution builds the network that fits it.

The output is left unclamped, as in the TensorFlow training code: values a little outside
[-1, 1] are normal. The models declare their range (``declared_range="tanh"``), and their
output is clamped to it. ``layer4`` (8 x 8, 512 units) is the 2020 paper's layer.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from dissect.models.registry import register_model
from dissect.models.zoo.places365 import MODELS_URL

# latent size, then the channels at 4x4, 8x8, ... 256x256: the published generators' widths
PROGAN_256_SIZES = (512, 512, 512, 512, 256, 128, 64, 32)
PROGAN_DEFAULT_LAYER = "layer4"


class PixelNorm(nn.Module):
    """Each pixel's feature vector divided by its root mean square (``eps`` 1e-8)."""

    def forward(self, x: Tensor) -> Tensor:
        return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class DoubleResolution(nn.Module):
    """2x nearest-neighbour upsampling."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class WScale(nn.Module):
    """The equalized learning rate: ``x * gain / sqrt(fan_in) + b`` (``b`` learned, one per
    channel; the scale is a constant, not in the state dict)."""

    def __init__(self, channels: int, fan_in: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class ConvBlock(nn.Module):
    """Pixel norm, (2x upsampling,) a bias-free conv, wscale, leaky ReLU 0.2."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int, upsample: bool = False):
        super().__init__()
        self.norm = PixelNorm()
        if upsample:
            self.up = DoubleResolution()
        self.conv = nn.Conv2d(cin, cout, kernel_size, 1, padding, bias=False)
        self.wscale = WScale(cout, cin, gain=math.sqrt(2) / kernel_size)
        self.relu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if hasattr(self, "up"):
            x = self.up(x)
        return self.relu(self.wscale(self.conv(x)))


class OutputBlock(nn.Module):
    """Pixel norm, 1x1 conv to RGB, wscale with gain 1; the output is not clamped."""

    def __init__(self, cin: int):
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(cin, 3, kernel_size=1, padding=0, bias=False)
        self.wscale = WScale(3, cin, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.wscale(self.conv(self.norm(x)))


class ProgressiveGenerator(nn.Sequential):
    """A Progressive GAN generator for ``sizes`` = (z size, channels at 4x4, 8x8, ...): blocks
    ``layer1 ..`` then ``output_RxR``; ``forward`` takes latents ``[N, z_dim]``."""

    def __init__(self, sizes: Sequence[int] = PROGAN_256_SIZES):
        if len(sizes) < 2:
            raise ValueError(f"a progressive generator needs a latent size and at least one width, got {sizes}")
        blocks = [ConvBlock(sizes[0], sizes[1], 4, 3), ConvBlock(sizes[1], sizes[1], 3, 1)]
        for cin, cout in zip(sizes[1:-1], sizes[2:]):
            blocks += [ConvBlock(cin, cout, 3, 1, upsample=True), ConvBlock(cout, cout, 3, 1)]
        self.z_dim = int(sizes[0])
        self.output_size = 4 * 2 ** (len(sizes) - 2)
        named = [(f"layer{i + 1}", b) for i, b in enumerate(blocks)]
        named.append((f"output_{self.output_size}x{self.output_size}", OutputBlock(sizes[-1])))
        super().__init__(OrderedDict(named))

    def forward(self, z: Tensor) -> Tensor:
        x = z.reshape(z.shape[0], z.shape[1], 1, 1)
        for block in self:
            x = block(x)
        return x


_OLD_BLOCK = re.compile(r"^features\.(\d+)\.(.*)$")


def progan_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the older key style (``features.N.*``, ``output.*``) renamed to
    ``layerN+1.*`` and ``output_RxR.*``; a state dict in the current style is returned as is."""
    if not any(k.startswith("features.") for k in state):
        return dict(state)
    blocks = {int(m.group(1)) for k in state if (m := _OLD_BLOCK.match(k))}
    res = 4 * 2 ** ((max(blocks) + 1) // 2 - 1) if blocks else 0
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _OLD_BLOCK.match(key)
        if m:
            out[f"layer{int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif key.startswith("output."):
            out[f"output_{res}x{res}." + key.removeprefix("output.")] = value
        else:
            out[key] = value
    return out


def sizes_from_state_dict(state: Mapping[str, Tensor]) -> tuple[int, ...] | None:
    """(z size, channels at 4x4, 8x8, ...) read from the blocks' conv weights, or None when
    ``state`` does not look like a progressive generator's."""
    sizes = []
    for i in itertools.count():
        w = state.get(f"layer{i + 1}.conv.weight")
        if w is None or w.dim() != 4:
            break
        if i == 0:
            sizes.append(int(w.shape[1]))
        if i % 2 == 0:
            sizes.append(int(w.shape[0]))
    return tuple(sizes) if len(sizes) >= 2 else None


def progan_for_state(state: Mapping[str, Tensor]) -> ProgressiveGenerator:
    """The generator shaped like ``state`` (either key style); the published widths when the
    state does not say (the strict loader then names what does not fit)."""
    return ProgressiveGenerator(sizes_from_state_dict(progan_state_dict(state)) or PROGAN_256_SIZES)


# LSUN scene -> its published file
PROGAN_DOMAINS: dict[str, str] = {
    "bedroom": "proggan_bedroom-d8a89ff1.pth",
    "church": "proggan_churchoutdoor-7e701dd5.pth",
    "conferenceroom": "proggan_conferenceroom-21e85882.pth",
    "diningroom": "proggan_diningroom-3aa0ab80.pth",
    "kitchen": "proggan_kitchen-67f1e16c.pth",
    "livingroom": "proggan_livingroom-5ef336dd.pth",
    "restaurant": "proggan_restaurant-b8578299.pth",
}
# the 2020 paper's headline experiments: trees removed from churches, doors inserted
PROGAN_EXPERIMENTS = {"church": {"ablate": ("tree",), "insert": ("door",)}}


def _register(domain: str, filename: str) -> None:
    def build(num_classes: int) -> ProgressiveGenerator:
        return ProgressiveGenerator(PROGAN_256_SIZES)

    build.__doc__ = f"The {domain} Progressive GAN generator (256 px), randomly initialized."
    register_model(
        f"progan-{domain}",
        kind="generator",
        default_weights=f"url:{MODELS_URL}{filename}",
        input_size=256,
        default_layer=PROGAN_DEFAULT_LAYER,
        num_classes=0,
        z_dim=PROGAN_256_SIZES[0],
        segmenter="upp",
        declared_range="tanh",
        experiments=PROGAN_EXPERIMENTS.get(domain, {}),
        builder_for_state=progan_for_state,
        fix_state_dict=progan_state_dict,
        description=f"Progressive GAN (Karras et al. 2018), LSUN {domain}, 256x256, as in GAN dissection",
    )(build)


for _domain, _file in PROGAN_DOMAINS.items():
    _register(_domain, _file)
