"""torchvision's semantic segmentation models (the 20 Pascal VOC object classes) plus colors.

Registered as ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``fcn_resnet101`` and
``lraspp_mobilenet_v3_large``; weights fetched through torchvision's download with its hash
check when online (:mod:`dissect.models.weights`), or read from a file.
"""

from __future__ import annotations

import dataclasses

import torch
import torchvision
from torch import Tensor

from dissect.download import fetch_file, sha256_file, verified_sha256
from dissect.errors import DissectError
from dissect.models.weights import read_state_dict, torchvision_file, torchvision_weights
from dissect.segmenters.base import Segmenter
from dissect.segmenters.color import COLOR_NAMES, color_layer
from dissect.segmenters.registry import register_segmenter

SEGMENTER_WEIGHTS_FLAG = "--segmenter-weights FILE"
TORCHVISION_SEGMENTERS = {
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    "fcn_resnet50": "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    "fcn_resnet101": "FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
}


class TorchvisionSegmenter(Segmenter):
    """A torchvision semantic segmentation model (Pascal VOC classes) plus colors."""

    def __init__(self, arch: str, weights: str | None = None, progress: bool = True):
        self.name = arch
        enum_name = TORCHVISION_SEGMENTERS[arch]
        builder = getattr(torchvision.models.segmentation, arch)
        meta_cats = list(torchvision_weights(enum_name).meta["categories"])
        self.net = builder(weights=None, weights_backbone=None, num_classes=len(meta_cats),
                           aux_loss=None)
        if weights != "none":
            if weights:
                path = weights
                state = read_state_dict(path)
                self.weights_sha256 = sha256_file(path)
            else:
                path = fetch_file(_weights_file(arch), progress)
                digest = verified_sha256(path)
                state = read_state_dict(path)
                self.weights_sha256 = digest
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("aux_classifier.")]
            if bad or unexpected:
                raise DissectError(f"the weights for segmenter {arch} do not fit it "
                                   f"({len(bad)} missing, {len(unexpected)} unexpected keys)")
        self.net.eval()
        self.classes = [c for c in meta_cats if c != "__background__"]
        self.concepts = ([(c.replace(" ", "_"), "object") for c in self.classes]
                         + [(f"{c}-c", "color") for c in COLOR_NAMES])
        self.layers = ["object", "color"]
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def to(self, device):
        """Move the network to ``device``."""
        self.net.to(device)
        return self

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        """Object and color label numbers ``[N, 2, H, W]``."""
        dev = next(self.net.parameters()).device
        x = (images.to(dev).float() - self.mean.to(dev)) / self.std.to(dev)
        out = self.net(x)["out"]
        obj = out.argmax(1)  # 0 = background -> no label; class k -> number k
        col = color_layer(images, len(self.classes)).to(obj.device)
        return torch.stack([obj, col], 1).to(images.device)


def _weights_file(arch: str):
    """The default weights of segmenter ``arch`` as a download record: a copy of them is
    given with ``--segmenter-weights FILE`` (not the model's ``--weights``)."""
    rf = torchvision_file(TORCHVISION_SEGMENTERS[arch], SEGMENTER_WEIGHTS_FLAG)
    return dataclasses.replace(rf, what=f"weights of segmenter {arch} ({rf.what})")


def _register(arch: str) -> None:
    @register_segmenter(arch, description=f"torchvision's {arch} (the 20 Pascal VOC objects) plus colors",
                        files=lambda: [_weights_file(arch)])
    def factory(weights: str | None, progress: bool) -> TorchvisionSegmenter:
        return TorchvisionSegmenter(arch, weights, progress)


for _arch in TORCHVISION_SEGMENTERS:
    _register(_arch)
