"""The toy world's models: the scene classifier ``toy`` and the scene generator ``toygan``.

The classifier is a small, plain VGG-style CNN for 64x64 RGB images. Layout of ``features``
with the default widths ``(16, 32, 64, 128)``::

    block 1 (64x64):  0 conv  1 relu  2 conv  3 relu  4 pool
    block 2 (32x32):  5 conv  6 relu  7 conv  8 relu  9 pool
    block 3 (16x16): 10 conv 11 relu 12 conv 13 relu 14 pool
    block 4 ( 8x8):  15 conv 16 relu 17 conv 18 relu

Activations are dissected after each ReLU; :data:`TOY_ALIASES` names them as in the
paper (``conv4_2`` -> ``features.18``). ReLUs are not in-place, so a hook on a conv sees
the conv's own output.

The generator is DCGAN-style, 64x64 scenes from z ~ N(0, I) (``z_dim`` 128, base width 64;
3.8M parameters, stored as float16)::

    layer1 ( 4x4,  512 units): ConvTranspose 4x4 from z, BatchNorm, ReLU
    layer2 ( 8x8,  256 units): ConvTranspose 4x4 stride 2, BatchNorm, ReLU
    layer3 (16x16, 128 units): same
    layer4 (32x32,  64 units): same
    output (64x64, 3 channels): ConvTranspose 4x4 stride 2, tanh -> images in [-1, 1]

Units are dissected after each ReLU (the output of ``layerN``), as in GAN dissection where
``layer4`` of a Progressive GAN was the featured layer. The discriminator that trained it is
:mod:`dissect.training.generator`'s (it is not shipped).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor, nn

from dissect.models.registry import register_model

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


TOYGAN_Z_DIM = 128
TOYGAN_WIDTH = 64
TOYGAN_DEFAULT_LAYER = ("layer2", "layer3")


def _up(cin: int, cout: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4, 1 if first else 2, 0 if first else 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=False))


class ToyGenerator(nn.Module):
    """z (N, z_dim) or (N, z_dim, 1, 1) -> images (N, 3, 64, 64) in [-1, 1]."""

    def __init__(self, z_dim: int = TOYGAN_Z_DIM, width: int = TOYGAN_WIDTH):
        super().__init__()
        self.z_dim = z_dim
        w = width
        self.layer1 = _up(z_dim, 8 * w, first=True)
        self.layer2 = _up(8 * w, 4 * w)
        self.layer3 = _up(4 * w, 2 * w)
        self.layer4 = _up(2 * w, w)
        self.output = nn.Sequential(nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh())

    @classmethod
    def for_state_dict(cls, state: Mapping[str, Tensor]) -> "ToyGenerator":
        """A generator shaped like ``state`` (its z size and base width read from the first
        layer's weights, ``[z_dim, 8 * width, 4, 4]``), so weights of any width load."""
        w = state.get("layer1.0.weight")
        if w is None or w.dim() != 4 or w.shape[1] % 8:
            return cls()  # let the strict loader name what does not fit
        return cls(z_dim=int(w.shape[0]), width=int(w.shape[1]) // 8)

    def forward(self, z: Tensor) -> Tensor:
        x = self.layer1(z.flatten(1)[:, :, None, None])  # [N, z] or [N, z, 1, 1]
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.output(x)


@register_model(
    "toy",
    default_weights="builtin:toy_classifier",
    input_size=TOY_INPUT_SIZE,
    default_layer=TOY_DEFAULT_LAYER,
    aliases=TOY_ALIASES,
    num_classes=6,
    head="classifier.3",
    missing_weights_hint="run `dissect train toy-classifier` to create them",
    description="small VGG-style scene classifier for the 64x64 toy world (weights ship with dissect)",
)
def toy(num_classes: int) -> ToyClassifier:
    """The toy classifier, randomly initialized, with ``num_classes`` outputs."""
    return ToyClassifier(num_classes=num_classes)


@register_model(
    "toygan",
    kind="generator",
    default_weights="builtin:toy_generator",
    input_size=64,
    default_layer=TOYGAN_DEFAULT_LAYER,
    num_classes=0,
    z_dim=TOYGAN_Z_DIM,
    segmenter="toy",
    experiments={"ablate": ("tree",), "insert": ("door",), "layers": ("layer2",)},
    builder_for_state=ToyGenerator.for_state_dict,
    missing_weights_hint="run `dissect train toy-generator` to create them",
    description="DCGAN-style generator of 64x64 toy-world scenes (weights ship with dissect)",
)
def toygan(num_classes: int) -> ToyGenerator:
    """The toy generator, randomly initialized (a generator has no classes)."""
    return ToyGenerator()
