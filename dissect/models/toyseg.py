"""The toy-world segmenter: a small U-Net mapping a scene to object and part labels.

Input: RGB images in [0, 1], ``[N, 3, H, W]`` with H and W multiples of 8 (64x64 for the
toy world). Output: two logit maps at the input size, objects (:data:`SEG_OBJECTS`, every
pixel has one) and parts (:data:`SEG_PARTS`, index 0 = no part). Colors are not learned:
the color namer (:mod:`dissect.data.colors`) names them exactly, from the pixels.

Widths 16, 32, 64, 128 at 64, 32, 16 and 8 px, two 3x3 conv + BatchNorm + ReLU per level,
skip connections, bilinear upsampling: about 0.5M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
