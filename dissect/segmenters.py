"""Segmenters: images in, per-pixel labels over named concepts out.

Generator dissection needs labels for images nobody annotated: a segmenter provides them,
as a real segmenter labels a GAN's outputs in GAN dissection. Every segmenter here has the
same interface (:class:`Segmenter`):

* ``concepts``: the concepts it can name, as ``(name, category)`` pairs; concept ``i`` of the
  list is label number ``i + 1`` (0 = no label), the Broden convention;
* ``layers``: the category of each label layer it outputs (e.g. ``["object", "part",
  "color"]``); a pixel can hold one concept per layer;
* ``segment(images)``: images ``[N, 3, H, W]`` float in [0, 1] -> label numbers
  ``[N, len(layers), H, W]`` int64 at the same size.

Available (``--segmenter``):

``toy``
    the shipped toy segmenter (objects and parts of the toy world) plus the color namer;
``color``
    the color namer alone (:mod:`dissect.data.colors`): Broden's 11 colors for any image;
``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``fcn_resnet101``, ``lraspp_mobilenet_v3_large``
    torchvision's semantic segmentation models (the 20 Pascal VOC object classes), weights
    fetched through torchvision's download with its hash check when online, plus colors;
``package.module:callable``
    your own: the callable returns an object with ``concepts``, ``layers`` and
    ``segment(images)`` as above (an instance of :class:`Segmenter` or any duck-typed one).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.colors import COLOR_NAMES, name_colors
from .errors import DissectError, unknown_choice

TORCHVISION_SEGMENTERS = {
    "deeplabv3_resnet50": "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    "deeplabv3_resnet101": "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
    "deeplabv3_mobilenet_v3_large": "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
    "fcn_resnet50": "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
    "fcn_resnet101": "FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
    "lraspp_mobilenet_v3_large": "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
}
SEGMENTER_NAMES = ["toy", "color", *TORCHVISION_SEGMENTERS]


class Segmenter:
    """Base class: subclasses set ``name``, ``concepts`` and ``layers`` and implement
    :meth:`segment`."""

    name: str = "segmenter"
    concepts: list[tuple[str, str]] = []
    layers: list[str] = []
    weights_sha256: str | None = None

    def segment(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Segmenter":
        return self

    # ------------------------------------------------------------------ helpers
    def number(self, concept: str) -> int:
        """Label number of ``concept`` (a name, or ``name-category`` never needed here)."""
        for i, (name, _) in enumerate(self.concepts):
            if name == concept:
                return i + 1
        raise unknown_choice("concept", concept, [n for n, _ in self.concepts],
                             hint=f"(the concepts segmenter {self.name!r} can label)")

    def category_of(self, concept: str) -> str:
        return self.concepts[self.number(concept) - 1][1]

    def layer_of(self, concept: str) -> int:
        """Index of the output layer that holds ``concept``."""
        return self.layers.index(self.category_of(concept))

    def provenance(self) -> dict:
        return {"name": self.name, "layers": list(self.layers), "num_concepts": len(self.concepts),
                "weights_sha256": self.weights_sha256}


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
        return color_layer(images, 0)[:, None]


class ToyWorldSegmenter(Segmenter):
    """The shipped toy segmenter (objects, parts) and the color namer (colors)."""

    name = "toy"

    def __init__(self, weights: str | None = None):
        from .models.registry import WEIGHTS_DIR, read_state_dict, sha256_file
        from .models.toyseg import SEG_OBJECTS, SEG_PARTS, ToySegmenter

        path = WEIGHTS_DIR / "toy_segmenter.safetensors" if weights is None else weights
        try:
            state = read_state_dict(path)
        except DissectError:
            raise DissectError(f"the toy segmenter's weights are missing ({path}); run "
                               "`dissect train toy-segmenter` or reinstall dissect") from None
        self.net = ToySegmenter()
        self.net.load_state_dict(state)
        self.net.eval()
        self.weights_sha256 = sha256_file(path)
        self.objects = list(SEG_OBJECTS)
        self.parts = list(SEG_PARTS[1:])
        self.concepts = ([(o, "object") for o in self.objects] + [(p, "part") for p in self.parts]
                         + [(f"{c}-c", "color") for c in COLOR_NAMES])
        self.layers = ["object", "part", "color"]

    def to(self, device):
        self.net.to(device)
        return self

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        n, _, h, w = images.shape
        x = images
        if h % 8 or w % 8 or h < 32:
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        lo, lp = self.net(x.to(next(self.net.parameters()).device).float())
        if lo.shape[-2:] != (h, w):
            lo = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)
            lp = F.interpolate(lp, size=(h, w), mode="bilinear", align_corners=False)
        obj = lo.argmax(1) + 1
        part = lp.argmax(1)
        part = torch.where(part > 0, part + len(self.objects), torch.zeros_like(part))
        col = color_layer(images, len(self.objects) + len(self.parts)).to(obj.device)
        return torch.stack([obj, part, col], 1).to(images.device)


class TorchvisionSegmenter(Segmenter):
    """A torchvision semantic segmentation model (Pascal VOC classes) plus colors."""

    def __init__(self, arch: str, weights: str | None = None, progress: bool = True):
        import torchvision

        from .models.registry import (_fetch_torchvision_weights, _torchvision_weights,
                                      read_state_dict, sha256_file)

        self.name = arch
        enum_name = TORCHVISION_SEGMENTERS[arch]
        builder = getattr(torchvision.models.segmentation, arch)
        meta_cats = list(_torchvision_weights(enum_name).meta["categories"])
        self.net = builder(weights=None, weights_backbone=None, num_classes=len(meta_cats),
                           aux_loss=None)
        if weights != "none":
            if weights:
                path = weights
                state = read_state_dict(path)
                self.weights_sha256 = sha256_file(path)
            else:
                path, digest = _fetch_torchvision_weights(enum_name, progress)
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
        self.net.to(device)
        return self

    @torch.no_grad()
    def segment(self, images: Tensor) -> Tensor:
        dev = next(self.net.parameters()).device
        x = (images.to(dev).float() - self.mean.to(dev)) / self.std.to(dev)
        out = self.net(x)["out"]
        obj = out.argmax(1)  # 0 = background -> no label; class k -> number k
        col = color_layer(images, len(self.classes)).to(obj.device)
        return torch.stack([obj, col], 1).to(images.device)


def _check_segmenter(obj: Any, target: str) -> Any:
    for attr in ("concepts", "layers", "segment"):
        if not hasattr(obj, attr):
            raise DissectError(f"segmenter {target} has no {attr!r}: it must provide concepts "
                               "[(name, category)], layers [category] and segment(images)")
    cats = {c for _, c in obj.concepts}
    if not obj.concepts or not obj.layers or not cats <= set(obj.layers):
        raise DissectError(f"segmenter {target}: every concept's category must be one of its "
                           f"layers ({list(obj.layers)}), and it needs at least one concept")
    if not isinstance(obj, Segmenter):  # give duck-typed segmenters the helpers
        wrapped = Segmenter()
        wrapped.name = target
        wrapped.concepts = [tuple(c) for c in obj.concepts]
        wrapped.layers = list(obj.layers)
        wrapped.segment = obj.segment  # type: ignore[method-assign]
        if hasattr(obj, "to"):
            wrapped.to = lambda d: (obj.to(d), wrapped)[1]  # type: ignore[method-assign]
        return wrapped
    return obj


def load_segmenter(name: str, weights: str | None = None, progress: bool = True) -> Segmenter:
    """A segmenter by name (see the module docstring) or ``package.module:callable``."""
    if name == "toy":
        return ToyWorldSegmenter(weights)
    if name == "color":
        return ColorNamer()
    if name in TORCHVISION_SEGMENTERS:
        return TorchvisionSegmenter(name, weights, progress)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            from .models.registry import import_user_module
            mod = import_user_module(module_name)
        except ImportError as exc:
            raise DissectError(f"cannot import {module_name!r} for segmenter {name}: {exc}; "
                               "make sure it is on PYTHONPATH") from exc
        fn = getattr(mod, attr, None)
        if fn is None or not callable(fn):
            raise DissectError(f"{name}: {module_name} has no callable {attr!r}")
        return _check_segmenter(fn(), name)
    raise unknown_choice("segmenter", name, SEGMENTER_NAMES, hint="or package.module:callable")


def segmenter_key(seg: Segmenter) -> str:
    """What identifies a segmenter's labels (for caches)."""
    blob = json.dumps([seg.name, seg.weights_sha256, list(seg.layers), list(seg.concepts)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def concept_pixels(labels: Tensor, seg: Segmenter, concept: str) -> Tensor:
    """Boolean ``[N, H, W]``: where ``labels`` (from ``seg.segment``) hold ``concept``."""
    return labels[:, seg.layer_of(concept)] == seg.number(concept)


def known_concepts(seg: Segmenter, categories: Sequence[str] | None = None) -> list[str]:
    return [n for n, c in seg.concepts if categories is None or c in categories]
