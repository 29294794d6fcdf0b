"""torchvision's ImageNet classifiers: VGG, AlexNet, ResNet, GoogLeNet, Inception v3,
DenseNet-161 and MobileNetV2, with the paper's layer names as aliases; and the modern
families, ViT, Swin, ConvNeXt, EfficientNet and RegNet, with their blocks and stages as
aliases (a ViT block's tokens and Swin's channels-last maps are read as maps by
:mod:`dissect.feature_maps`).

Every model is built randomly initialized by torchvision (``weights=None``); its default
weights are torchvision's ``<Enum>_Weights.IMAGENET1K_V1``, fetched by
:mod:`dissect.models.weights`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dissect.models.registry import register_model


def _imagenet_weights(enum: str) -> str:
    return f"torchvision:{enum}_Weights.IMAGENET1K_V1"


def _torchvision_builder(arch: str, **options: Any) -> Callable[[int], nn.Module]:
    """``builder(num_classes)``: torchvision's ``models.<arch>``, randomly initialized."""
    build = getattr(torchvision.models, arch)
    return lambda num_classes: build(weights=None, num_classes=num_classes, **options)


def _register_torchvision(arch: str, enum: str, options: dict[str, Any] | None = None, **fields: Any) -> None:
    """Register torchvision's ``models.<arch>`` (built with ``options``) as ``arch``, its
    default weights ``<enum>_Weights.IMAGENET1K_V1``; ``fields`` as in ModelSpec."""
    register_model(arch, default_weights=_imagenet_weights(enum), **fields)(_torchvision_builder(arch, **(options or {})))


def _vgg_aliases(convs_per_block: Sequence[int]) -> dict[str, str]:
    """conv{block}_{i} -> the ReLU after that conv in torchvision's VGG ``features``."""
    aliases, index = {}, 0
    for block, n in enumerate(convs_per_block, start=1):
        for conv in range(1, n + 1):
            aliases[f"conv{block}_{conv}"] = f"features.{index + 1}"
            index += 2
        index += 1  # max-pool
    return aliases


VGG_CONVS_PER_BLOCK = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
RESNETS = {"resnet18": "ResNet18", "resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}
RESNET_ALIASES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4", "res5c": "layer4"}

for _arch, _blocks in VGG_CONVS_PER_BLOCK.items():
    _register_torchvision(
        _arch,
        _arch.upper(),
        default_layer="conv5_3" if _arch == "vgg16" else "conv5_4",
        aliases=_vgg_aliases(_blocks),
        head="classifier.6",
        description=f"{_arch.upper()} (Simonyan & Zisserman 2014), ImageNet",
    )

for _arch, _enum in RESNETS.items():
    _register_torchvision(_arch, _enum, default_layer="layer4", aliases=RESNET_ALIASES, head="fc",
                          description=f"{_enum} (He et al. 2016), ImageNet")

_register_torchvision(
    "alexnet",
    "AlexNet",
    default_layer="conv5",
    aliases={"conv1": "features.1", "conv2": "features.4", "conv3": "features.7", "conv4": "features.9", "conv5": "features.11"},
    head="classifier.6",
    description="AlexNet (Krizhevsky et al. 2012), ImageNet",
)

_register_torchvision(
    "googlenet",
    "GoogLeNet",
    options={"aux_logits": False, "init_weights": True, "transform_input": True},
    default_layer="inception5b",
    aliases={f"inception_{s}": f"inception{s}" for s in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")},
    head="fc",
    ignore_keys=("aux1.", "aux2."),
    description="GoogLeNet / Inception v1 (Szegedy et al. 2015), ImageNet",
)

_register_torchvision(
    "inception_v3",
    "Inception_V3",
    # init_weights=False: PyTorch's default init; torchvision's truncated-normal one takes ~5 s
    options={"aux_logits": False, "init_weights": False, "transform_input": True},
    input_size=299,
    default_layer="Mixed_7c",
    aliases={m.lower(): m for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")},
    head="fc",
    ignore_keys=("AuxLogits.",),
    description="Inception v3 (Szegedy et al. 2016), ImageNet, 299x299 input",
)

_register_torchvision(
    "mobilenet_v2",
    "MobileNet_V2",
    default_layer="features",
    head="classifier.1",
    description="MobileNetV2 (Sandler et al. 2018), ImageNet",
)


class _DenseNet(torchvision.models.DenseNet):
    """torchvision's DenseNet with the final ReLU not in place, so the output of ``features``
    that a hook captured is not overwritten by the classifier's ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


_DENSE_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the old 'norm.1' style keys of torchvision's DenseNet checkpoints ('norm1')."""
    out = {}
    for key, value in state.items():
        m = _DENSE_OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


@register_model(
    "densenet161",
    default_weights=_imagenet_weights("DenseNet161"),
    default_layer="features",
    aliases={f"denseblock{i}": f"features.denseblock{i}" for i in range(1, 5)},
    head="classifier",
    fix_state_dict=_densenet_keys,
    description="DenseNet-161 (Huang et al. 2017), ImageNet",
)
def densenet161(num_classes: int) -> nn.Module:
    """DenseNet-161 (torchvision's layout, final ReLU not in place), randomly initialized."""
    return _DenseNet(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96, num_classes=num_classes)


# ----------------------------------------------------------------------------- modern families

VITS = {"vit_b_16": ("ViT_B_16", 12, "ViT-B/16")}
for _arch, (_enum, _depth, _title) in VITS.items():
    _register_torchvision(
        _arch, _enum,
        # the last block but one: the last block's patch tokens never reach the head (only
        # its class token does), so ablating them would change nothing
        default_layer=f"block{_depth - 1}",
        aliases={f"block{i}": f"encoder.layers.encoder_layer_{i - 1}" for i in range(1, _depth + 1)},
        head="heads.head",
        description=f"{_title} (Dosovitskiy et al. 2021), ImageNet; blocks' patch tokens read as a 14x14 map",
    )

_STAGES = {f"stage{i}": f"features.{2 * i - 1}" for i in range(1, 5)}  # stages between downsamplings
_register_torchvision("swin_t", "Swin_T", default_layer="stage4", aliases=_STAGES, head="head",
                      description="Swin-T (Liu et al. 2021), ImageNet; channels-last stages transposed")
_register_torchvision("convnext_tiny", "ConvNeXt_Tiny", default_layer="stage4", aliases=_STAGES,
                      head="classifier.2", description="ConvNeXt-T (Liu et al. 2022), ImageNet")
_register_torchvision(
    "efficientnet_b0", "EfficientNet_B0",
    default_layer="head_conv",
    aliases={**{f"stage{i}": f"features.{i}" for i in range(1, 8)}, "head_conv": "features.8"},
    head="classifier.1", description="EfficientNet-B0 (Tan & Le 2019), ImageNet",
)
_register_torchvision("regnet_y_400mf", "RegNet_Y_400MF", default_layer="block4",
                      aliases={f"block{i}": f"trunk_output.block{i}" for i in range(1, 5)}, head="fc",
                      description="RegNetY-400MF (Radosavovic et al. 2020), ImageNet")
