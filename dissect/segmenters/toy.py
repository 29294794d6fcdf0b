"""The toy-world segmenter ``toy``: a small U-Net for objects and parts, plus the color namer.

The network (:class:`ToySegmenter`) maps a scene to object and part labels. Input: RGB
images in [0, 1], ``[N, 3, H, W]`` with H and W multiples of 8 (64x64 for the toy world).
Output: two logit maps at the input size, objects (:data:`SEG_OBJECTS`, every
pixel has one) and parts (:data:`SEG_PARTS`, index 0 = no part). Colors are not learned:
the color namer (:mod:`dissect.segmenters.color`) names them exactly, from the pixels.

Widths 16, 32, 64, 128 at 64, 32, 16 and 8 px, two 3x3 conv + BatchNorm + ReLU per level,
skip connections, bilinear upsampling: about 0.5M parameters. :class:`ToyWorldSegmenter`
is the registered segmenter: the shipped weights of the network, and the color namer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dissect.download import sha256_file
from dissect.errors import DissectError
from dissect.inference import channels_last, fast_layout, fold_batchnorm
from dissect.models.weights import WEIGHTS_DIR, read_state_dict
from dissect.segmenters.base import Segmenter
from dissect.segmenters.color import COLOR_NAMES, color_layer
from dissect.segmenters.registry import register_segmenter

SEG_OBJECTS = ["sky", "grass", "sand", "road", "water", "mountain", "tree", "house", "car",
               "sun", "cloud", "fence"]
SEG_PARTS = ["-", "trunk", "crown", "wall", "roof", "door", "window", "body", "wheel"]
SEG_WIDTHS = (16, 32, 64, 128)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToySegmenter(nn.Module):
    """Images in [0, 1] -> (object logits ``[N, 12, H, W]``, part logits ``[N, 9, H, W]``)."""

    def __init__(self, widths=SEG_WIDTHS):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.enc1, self.enc2, self.enc3, self.enc4 = _block(3, w1), _block(w1, w2), _block(w2, w3), _block(w3, w4)
        self.dec3, self.dec2, self.dec1 = _block(w4 + w3, w3), _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.objects = nn.Conv2d(w1, len(SEG_OBJECTS), 1)
        self.parts = nn.Conv2d(w1, len(SEG_PARTS), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = (x - 0.5) / 0.25
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        e4 = self.enc4(F.max_pool2d(e3, 2))

        def up(a, skip):
            return torch.cat([F.interpolate(a, size=skip.shape[-2:], mode="bilinear",
                                            align_corners=False), skip], 1)

        d3 = self.dec3(up(e4, e3))
        d2 = self.dec2(up(d3, e2))
        d1 = self.dec1(up(d2, e1))
        return self.objects(d1), self.parts(d1)


class ToyWorldSegmenter(Segmenter):
    """The shipped toy segmenter (objects, parts) and the color namer (colors)."""

    name = "toy"

    def __init__(self, weights: str | None = None):
        path = WEIGHTS_DIR / "toy_segmenter.safetensors" if weights is None else weights
        try:
            state = read_state_dict(path)
        except DissectError:
            raise DissectError(f"the toy segmenter's weights are missing ({path}); run "
                               "`dissect train toy-segmenter` or reinstall dissect") from None
        self.net = ToySegmenter()
        self.net.load_state_dict(state)
        self.net.eval()
        self._fast = fast_layout(fold_batchnorm(self.net))   # what segment() runs (same labels, ~2.5x faster)
        self.weights_sha256 = sha256_file(path)
        self.objects = list(SEG_OBJECTS)
        self.parts = list(SEG_PARTS[1:])
        self.concepts = ([(o, "object") for o in self.objects] + [(p, "part") for p in self.parts]
                         + [(f"{c}-c", "color") for c in COLOR_NAMES])
        self.layers = ["object", "part", "color"]

    def to(self, device):
        """Move the network to ``device``."""
        self.net.to(device)
        self._fast.to(device)
        return self

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """Object, part and color label numbers ``[N, 3, H, W]``."""
        n, _, h, w = images.shape
        x = images
        if h % 8 or w % 8 or h < 32:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        lo, lp = self._fast(channels_last(x.to(next(self._fast.parameters()).device).float()))
        if lo.shape[-2:] != (h, w):
            lo = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)
            lp = F.interpolate(lp, size=(h, w), mode="bilinear", align_corners=False)
        obj = lo.argmax(1) + 1
        part = lp.argmax(1)
        part = torch.where(part > 0, part + len(self.objects), torch.zeros_like(part))
        col = color_layer(images, len(self.objects) + len(self.parts)).to(obj.device)
        return torch.stack([obj, part, col], 1).to(images.device)


@register_segmenter("toy", description="the shipped toy segmenter (objects and parts of the toy world) "
                                       "plus the color namer")
def toy_world_segmenter(weights: str | None, progress: bool) -> ToyWorldSegmenter:
    """The toy segmenter with its shipped weights, or the weights file ``weights``."""
    return ToyWorldSegmenter(weights)
