"""The toy-world scene classifier: a small, plain VGG-style CNN for 64x64 RGB images.

Layout of ``features`` with the default widths ``(16, 32, 64, 128)``::

    block 1 (64x64):  0 conv  1 relu  2 conv  3 relu  4 pool
    block 2 (32x32):  5 conv  6 relu  7 conv  8 relu  9 pool
    block 3 (16x16): 10 conv 11 relu 12 conv 13 relu 14 pool
    block 4 ( 8x8):  15 conv 16 relu 17 conv 18 relu

Activations are dissected after each ReLU; :data:`TOY_ALIASES` names them as in the
paper (``conv4_2`` -> ``features.18``). ReLUs are not in-place, so a hook on a conv sees
the conv's own output.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

CONVS_PER_BLOCK = 2
DEFAULT_WIDTHS = (16, 32, 64, 128)


def toy_aliases(num_blocks: int = len(DEFAULT_WIDTHS), convs_per_block: int = CONVS_PER_BLOCK) -> dict[str, str]:
    """Map ``convB_C`` to the dotted path of the ReLU after that conv in ``features``."""
    aliases: dict[str, str] = {}
    index = 0
    for block in range(1, num_blocks + 1):
        for conv in range(1, convs_per_block + 1):
            aliases[f"conv{block}_{conv}"] = f"features.{index + 1}"  # the ReLU after the conv
            index += 2
        if block < num_blocks:
            index += 1  # the max-pool between blocks
    return aliases


TOY_ALIASES: dict[str, str] = toy_aliases()
# low, middle and last conv layers: the report shows the shift from colors to objects
TOY_DEFAULT_LAYER = ("conv2_2", "conv3_2", "conv4_2")
TOY_INPUT_SIZE = 64


class ToyClassifier(nn.Module):
    """Plain VGG-style classifier: two 3x3 conv+ReLU per block, 2x2 max-pool between blocks."""

    def __init__(self, num_classes: int = 6, widths: Sequence[int] = DEFAULT_WIDTHS):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for b, width in enumerate(widths):
            for _ in range(CONVS_PER_BLOCK):
                layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = width
            if b < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(in_ch, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
