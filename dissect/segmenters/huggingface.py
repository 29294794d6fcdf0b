"""The ecosystem's current ADE20K segmenters through Hugging Face ``transformers`` (the
optional extra ``pip install 'dissect[hf]'``), plus colors.

Registered as ``segformer-ade20k`` (SegFormer, Xie et al. 2021) and ``mask2former-ade20k``
(Mask2Former, Cheng et al. 2022), each labeling the 150 ADE20K objects. Weights: the hub
model of :data:`HF_SEGMENTERS` (downloaded by ``transformers`` into its cache), or
``--segmenter-weights DIR``, a folder written by ``save_pretrained`` (``config.json`` and
``model.safetensors``). Only safetensors are read (no pickles) and no code from the hub is
run. The class names are the model config's ``id2label``.

Input as the model's ``preprocessor_config.json`` says when it has one (``image_mean``,
``image_std``, ``size``; images rescaled to [0, 1]), else ImageNet's mean and std at 512 px;
the probe images are square, so they are resized (bilinear) to a square of that size.
Output as ``transformers``' own ``post_process_semantic_segmentation``: SegFormer's logits
upsampled to the image size and argmaxed; Mask2Former's mask logits upsampled to 384 px,
their sigmoids weighted by each query's class probabilities (the "no object" class left
out), upsampled to the image size and argmaxed. Class ``k`` is label ``k + 1``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dissect.errors import DissectError
from dissect.models.weights import state_dict_sha256
from dissect.segmenters.base import Segmenter
from dissect.segmenters.color import COLOR_NAMES, color_layer
from dissect.segmenters.registry import register_segmenter

# name -> (transformers model class, model_type in config.json, default hub model)
HF_SEGMENTERS = {
    "segformer-ade20k": ("SegformerForSemanticSegmentation", "segformer",
                         "nvidia/segformer-b5-finetuned-ade-640-640"),
    "mask2former-ade20k": ("Mask2FormerForUniversalSegmentation", "mask2former",
                           "facebook/mask2former-swin-large-ade-semantic"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 512
MASK2FORMER_MASK_SIZE = 384  # transformers' post-processing: "(384, 384) for all models"


def _preprocessing(source: str) -> tuple[tuple, tuple, int]:
    """``(mean, std, size)`` from the model's ``preprocessor_config.json``, else defaults."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file() and not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "preprocessor_config.json"))
        except Exception:  # offline, or the model has none: the defaults
            return IMAGENET_MEAN, IMAGENET_STD, DEFAULT_SIZE
    if not path.is_file():
        return IMAGENET_MEAN, IMAGENET_STD, DEFAULT_SIZE
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DissectError(f"cannot read {path}: {exc}") from None
    size = cfg.get("size", DEFAULT_SIZE)
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or DEFAULT_SIZE
    return (tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(cfg.get("image_std", IMAGENET_STD)), int(size))


class HuggingFaceSegmenter(Segmenter):
    """A ``transformers`` semantic segmentation model (its ``id2label`` objects) plus colors."""

    def __init__(self, name: str, model, mean, std, size: int):
        self.name = name
        self.net = model.eval()
        self.family = model.config.model_type
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.classes = [str(id2label[i]).strip() for i in range(len(id2label))]
        names, seen = [], set()
        for c in self.classes:
            n = c.replace(" ", "_") or "-"
            while n in seen:
                n += "_"
            seen.add(n)
            names.append(n)
        self.concepts = [(n, "object") for n in names] + [(f"{c}-c", "color") for c in COLOR_NAMES]
        self.layers = ["object", "color"]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.size = int(size)
        self.weights_sha256 = state_dict_sha256(self.net)

    def to(self, device):
        """Move the network to ``device``."""
        self.net.to(device)
        return self

    def provenance(self) -> dict:
        """The base record plus the input size."""
        return {**super().provenance(), "input_size": self.size}

    @torch.no_grad()
    def scores(self, images: Tensor) -> Tensor:
        """Per-class scores ``[N, classes, H, W]`` at the image size."""
        dev = next(self.net.parameters()).device
        h, w = images.shape[2:]
        x = F.interpolate(images.to(dev).float(), (self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(dev)) / self.std.to(dev)
        out = self.net(pixel_values=x)
        if self.family == "mask2former":
            masks = F.interpolate(out.masks_queries_logits, (MASK2FORMER_MASK_SIZE,) * 2, mode="bilinear",
                                  align_corners=False)
            classes = out.class_queries_logits.softmax(-1)[..., :-1]
            seg = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())
        else:
            seg = out.logits
        return F.interpolate(seg, (h, w), mode="bilinear", align_corners=False)

    def segment(self, images: Tensor) -> Tensor:
        """Object and color label numbers ``[N, 2, H, W]``."""
        obj = self.scores(images).argmax(1) + 1
        col = color_layer(images, len(self.classes)).to(obj.device)
        return torch.stack([obj, col], 1).to(images.device)


def load_hf_segmenter(name: str, weights: str | None) -> HuggingFaceSegmenter:
    """Segmenter ``name`` of :data:`HF_SEGMENTERS` from ``weights`` (a ``save_pretrained``
    folder or a hub model id; default the registered hub model)."""
    cls_name, model_type, hub_id = HF_SEGMENTERS[name]
    try:
        import transformers
    except ImportError:
        raise DissectError(f"segmenter {name} needs Hugging Face transformers: pip install 'dissect[hf]'") from None
    source = str(Path(weights).expanduser()) if weights and Path(weights).expanduser().exists() else (weights or hub_id)
    if Path(source).is_dir():
        config = Path(source) / "config.json"
        if not config.is_file():
            raise DissectError(f"segmenter {name}: {source} has no config.json; give a folder written by "
                               "save_pretrained (config.json, model.safetensors)")
        try:
            found = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise DissectError(f"segmenter {name}: cannot read {config}: {exc}") from None
        if found != model_type:
            raise DissectError(f"segmenter {name}: {source} holds a {found} model, not {model_type}")
    try:
        model = getattr(transformers, cls_name).from_pretrained(source, use_safetensors=True)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DissectError(f"segmenter {name}: cannot load {source} ({first}); pass --segmenter-weights DIR, "
                           "a folder written by save_pretrained") from None
    if model.config.model_type != model_type:
        raise DissectError(f"segmenter {name}: {source} holds a {model.config.model_type} model, not {model_type}")
    return HuggingFaceSegmenter(name, model, *_preprocessing(source))


def _register(name: str) -> None:
    kind = HF_SEGMENTERS[name][1]
    @register_segmenter(name, description=f"Hugging Face {kind} (the 150 ADE20K objects; needs "
                                          "pip install 'dissect[hf]') plus colors")
    def factory(weights: str | None, progress: bool) -> HuggingFaceSegmenter:
        return load_hf_segmenter(name, weights)


for _name in HF_SEGMENTERS:
    _register(_name)
