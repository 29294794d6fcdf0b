"""The papers' Places365 classifiers, with the key layouts of their published weights.

Both papers dissect networks trained on Places365 (365 scene classes). Their weights are
published at ``https://dissect.csail.mit.edu/models/`` as plain state dicts whose keys
follow the layouts of the code that converted them (davidbau/dissect ``experiment/``
``oldvgg16.py``, ``oldalexnet.py``, ``oldresnet152.py``), not torchvision's:

* ``vgg16-places365``: torchvision's VGG-16 with its layers given their research names,
  ``features.conv1_1 ... features.conv5_3`` (ReLUs ``relu1_1 ...``, pools ``pool1 ...``) and
  ``classifier.fc6, fc7, fc8a`` (``relu6, drop6, relu7, drop7`` between them).
* ``alexnet-places365``: the Caffe AlexNet, a flat sequence ``conv1 relu1 pool1 lrn1 conv2
  ... conv5 relu5 pool5 flatten fc6 relu6 dropout6 fc7 relu7 dropout7 fc8`` with local
  response normalization and grouped convolutions (conv2, conv4, conv5 in two groups);
  input 227 x 227 (fc6 reads pool5's 6 x 6 map). One module more than Caffe's, without
  weights: an adaptive average pool to 6 x 6 before ``flatten``, as torchvision's AlexNet
  has, the identity at 227 px, so that other input sizes run too.
* ``resnet152-places365``: a Torch7 ResNet-152 converted to PyTorch, a sequence of indexed
  children ``0`` conv, ``1`` batch norm, ``2`` ReLU, ``3`` max-pool, ``4 .. 7`` the four
  stages (``layer1 .. layer4``), ``8`` a 7 x 7 average pool (here an adaptive pool to 1 x 1:
  the same at 224 px, and other input sizes run too), ``9`` flatten, ``10.1`` the linear layer; each bottleneck block is ``ConcatTable(residual, shortcut)``, ``CAddTable``,
  ``ReLU`` (keys ``4.0.0.0.0.weight`` ... ``4.0.0.1.0.weight``); input 224 x 224.

Aliases name the layers as the papers do (``conv5_3``, ``conv5``, ``layer4``); as in Caffe,
where a ReLU overwrites its conv's blob, an alias means the output after the ReLU.
Preprocessing as the papers: resize to 256, center crop 224 (227 for AlexNet), ImageNet
mean and standard deviation. The 365 class names are Places365's
(``categories_places365.txt`` of CSAILVision/places365, shipped beside this module).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torchvision
from torch import Tensor, nn

from dissect.models.registry import register_model

MODELS_URL = "https://dissect.csail.mit.edu/models/"
NUM_CLASSES = 365
CATEGORIES_FILE = Path(__file__).resolve().parent / "categories_places365.txt"


@lru_cache(maxsize=1)
def places365_class_names() -> tuple[str, ...]:
    """Places365's 365 scene names in class order (``airfield``, ..., ``zen_garden``): the
    file's ``/a/airfield 0`` lines with the ``/a/`` prefix dropped, as Places365's own demo
    code names them."""
    names: dict[int, str] = {}
    for line in CATEGORIES_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            path, index = line.split()
            names[int(index)] = path[3:]
    return tuple(names[i] for i in range(len(names)))


def _places365(**fields):
    """``register_model`` fields every Places365 classifier shares."""
    return dict(num_classes=NUM_CLASSES, class_names=places365_class_names(), ablation_data="places_val",
                **fields)


# --------------------------------------------------------------------------- VGG-16

VGG16_FEATURES = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "pool5",
)
VGG16_CLASSIFIER = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8a")


def _renamed(seq: nn.Sequential, names: Sequence[str]) -> nn.Sequential:
    if len(seq) != len(names):
        raise ValueError(f"cannot name {len(seq)} layers with {len(names)} names")
    return nn.Sequential(OrderedDict(zip(names, seq)))


@register_model(
    "vgg16-places365",
    **_places365(
        default_weights=f"url:{MODELS_URL}vgg16_places365-0bafbc55.pth",
        default_data="broden1_224",
        default_layer="conv5_3",
        aliases={n: f"features.relu{n[4:]}" for n in VGG16_FEATURES if n.startswith("conv")}
        | {"fc6": "classifier.relu6", "fc7": "classifier.relu7"},
        head="classifier.fc8a",
        description="VGG-16 (Simonyan & Zisserman 2014), Places365, as dissected in both papers",
    ),
)
def vgg16_places365(num_classes: int) -> nn.Module:
    """torchvision's VGG-16 with the research names of its layers, randomly initialized."""
    model = torchvision.models.vgg16(weights=None, num_classes=num_classes)
    model.features = _renamed(model.features, VGG16_FEATURES)
    model.classifier = _renamed(model.classifier, VGG16_CLASSIFIER)
    return model


# --------------------------------------------------------------------------- AlexNet


class LRN(nn.Module):
    """Caffe's local response normalization across channels:
    ``x / (1 + alpha * mean of x^2 over the size nearest channels) ** beta`` (the window
    zero-padded at the ends, the mean always over ``size``, as Caffe computes it)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta
        self.average = nn.AvgPool3d(kernel_size=(size, 1, 1), stride=1, padding=((size - 1) // 2, 0, 0))

    def forward(self, x: Tensor) -> Tensor:
        div = self.average(x.pow(2).unsqueeze(1)).squeeze(1)
        return x / div.mul(self.alpha).add(1.0).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


class CaffeAlexNet(nn.Sequential):
    """The Caffe AlexNet of Places365 (227 x 227 input), its layers named as Caffe names them."""

    WIDTHS = (96, 256, 384, 384, 256, 4096, 4096)
    GROUPS = (1, 2, 1, 2, 2)

    def __init__(self, num_classes: int = NUM_CLASSES):
        w, g = (3,) + self.WIDTHS, self.GROUPS
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(w[0], w[1], kernel_size=11, stride=4, groups=g[0])),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("lrn1", LRN(5, 1e-4, 0.75)),
            ("conv2", nn.Conv2d(w[1], w[2], kernel_size=5, padding=2, groups=g[1])),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("lrn2", LRN(5, 1e-4, 0.75)),
            ("conv3", nn.Conv2d(w[2], w[3], kernel_size=3, padding=1, groups=g[2])),
            ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(w[3], w[4], kernel_size=3, padding=1, groups=g[3])),
            ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(w[4], w[5], kernel_size=3, padding=1, groups=g[4])),
            ("relu5", nn.ReLU()),
            ("pool5", nn.MaxPool2d(kernel_size=3, stride=2)),
            ("avgpool", nn.AdaptiveAvgPool2d(6)),  # not in Caffe's: the identity at 227 px
            ("flatten", nn.Flatten()),
            ("fc6", nn.Linear(w[5] * 6 * 6, w[6])),
            ("relu6", nn.ReLU()),
            ("dropout6", nn.Dropout()),
            ("fc7", nn.Linear(w[6], w[7])),
            ("relu7", nn.ReLU()),
            ("dropout7", nn.Dropout()),
            ("fc8", nn.Linear(w[7], num_classes)),
        ]))


@register_model(
    "alexnet-places365",
    **_places365(
        default_weights=f"url:{MODELS_URL}alexnet_places365-92864cf6.pth",
        default_data="broden1_227",
        input_size=227,
        default_layer="conv5",
        aliases={f"conv{i}": f"relu{i}" for i in range(1, 6)} | {"fc6": "relu6", "fc7": "relu7"},
        head="fc8",
        description="AlexNet (Krizhevsky et al. 2012; Caffe, LRN, grouped convs), Places365, 227x227 input",
    ),
)
def alexnet_places365(num_classes: int) -> nn.Module:
    """The Caffe AlexNet, randomly initialized."""
    return CaffeAlexNet(num_classes)


# --------------------------------------------------------------------------- ResNet-152 (Torch7)


class ConcatTable(nn.Module):
    """Torch7's ConcatTable: every child applied to the same input; their outputs as a tuple."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(branch(x) for branch in self.children())


class CAddTable(nn.Module):
    """Torch7's CAddTable: the sum of a tuple of tensors."""

    def forward(self, xs: tuple[Tensor, ...]) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]


def _bottleneck(cin: int, width: int, stride: int) -> nn.Sequential:
    """One Torch7 bottleneck block: ``0`` ConcatTable(``0`` residual, ``1`` shortcut), ``1``
    CAddTable, ``2`` ReLU; the shortcut is a 1x1 conv + batch norm where the shape changes
    (the stride sits on the 3x3 conv, as in Facebook's fb.resnet.torch), else the identity."""
    cout = 4 * width
    residual = nn.Sequential(*_conv_bn(cin, width, 1), nn.ReLU(), *_conv_bn(width, width, 3, stride), nn.ReLU(),
                             *_conv_bn(width, cout, 1))
    shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
    return nn.Sequential(ConcatTable(residual, shortcut), CAddTable(), nn.ReLU())


RESNET152_BLOCKS = (3, 8, 36, 3)


def torch7_resnet(blocks: Sequence[int] = RESNET152_BLOCKS, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """The Torch7 bottleneck ResNet (ResNet-152 by default) as a sequence of indexed children."""
    stages, cin = [], 64
    for i, n in enumerate(blocks):
        width = 64 * 2 ** i
        stage = [_bottleneck(cin if b == 0 else 4 * width, width, 2 if b == 0 and i > 0 else 1) for b in range(n)]
        stages.append(nn.Sequential(*stage))
        cin = 4 * width
    return nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *stages,
        # Torch7's 7x7 average pool, as the 1x1 adaptive pool that equals it at 224 px
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Sequential(nn.Identity(), nn.Linear(cin, num_classes)),
    )


RESNET_STAGES = {f"layer{i}": str(3 + i) for i in range(1, 5)}


@register_model(
    "resnet152-places365",
    **_places365(
        default_weights=f"url:{MODELS_URL}resnet152_places365-f928166e5c.pth",
        default_data="broden1_224",
        default_layer="layer4",
        aliases={"conv1": "2", **RESNET_STAGES, "res2": "4", "res3": "5", "res4": "6", "res5": "7", "res5c": "7"},
        head="10.1",
        description="ResNet-152 (He et al. 2016; Torch7 conversion), Places365",
    ),
)
def resnet152_places365(num_classes: int) -> nn.Module:
    """The Torch7 ResNet-152 with indexed children, randomly initialized."""
    return torch7_resnet(RESNET152_BLOCKS, num_classes)


__all__ = [
    "CAddTable",
    "CaffeAlexNet",
    "ConcatTable",
    "LRN",
    "MODELS_URL",
    "places365_class_names",
    "torch7_resnet",
    "vgg16_places365",
    "alexnet_places365",
    "resnet152_places365",
]
