"""Segmenters: images in, per-pixel labels over named concepts out.

Generator dissection needs labels for images nobody annotated: a segmenter provides them,
as a real segmenter labels a GAN's outputs in GAN dissection. Every segmenter has the same
interface (:class:`~dissect.segmenters.base.Segmenter`): ``concepts``, ``layers`` and
``segment(images)``.

Available (``--segmenter``; :func:`list_segmenters`), one module per family, each
registering where it is defined (:func:`register_segmenter`):

``toy`` (:mod:`~dissect.segmenters.toy`)
    the shipped toy segmenter (objects and parts of the toy world) plus the color namer;
``color`` (:mod:`~dissect.segmenters.color`)
    the color namer alone: Broden's 11 colors for any image;
``deeplabv3_resnet50``, ``deeplabv3_resnet101``, ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``fcn_resnet101``, ``lraspp_mobilenet_v3_large`` (:mod:`~dissect.segmenters.torchvision`)
    torchvision's semantic segmentation models (the 20 Pascal VOC object classes), weights
    fetched through torchvision's download with its hash check when online, plus colors;
``upp`` (:mod:`~dissect.segmenters.upp`)
    the unified perceptual parsing network of the 2020 paper (Broden+ objects, parts and
    materials; pure PyTorch, CPU or GPU), its published weights downloaded into the cache
    or read from a folder, plus colors;
``segformer-ade20k``, ``mask2former-ade20k`` (:mod:`~dissect.segmenters.huggingface`)
    Hugging Face's SegFormer and Mask2Former (the 150 ADE20K objects), with the optional
    extra ``pip install 'dissect[hf]'``, plus colors;
``package.module:callable``
    your own: the callable returns an object with ``concepts``, ``layers`` and
    ``segment(images)`` (an instance of :class:`~dissect.segmenters.base.Segmenter` or any
    duck-typed one).
"""

from dissect.segmenters import color, huggingface, toy, torchvision, upp  # register every family
from dissect.segmenters.base import Segmenter, as_segmenter
from dissect.segmenters.color import COLOR_NAMES, ColorNamer, color_layer, name_colors, rgb_to_hsv
from dissect.segmenters.registry import list_segmenters, load_segmenter, register_segmenter, segmenter_key
from dissect.segmenters.torchvision import TORCHVISION_SEGMENTERS, TorchvisionSegmenter
from dissect.segmenters.toy import SEG_OBJECTS, SEG_PARTS, ToySegmenter, ToyWorldSegmenter
from dissect.segmenters.upp import UnifiedParsingSegmenter

__all__ = [
    "COLOR_NAMES",
    "ColorNamer",
    "SEG_OBJECTS",
    "SEG_PARTS",
    "Segmenter",
    "TORCHVISION_SEGMENTERS",
    "TorchvisionSegmenter",
    "UnifiedParsingSegmenter",
    "ToySegmenter",
    "ToyWorldSegmenter",
    "as_segmenter",
    "color_layer",
    "list_segmenters",
    "load_segmenter",
    "name_colors",
    "register_segmenter",
    "rgb_to_hsv",
    "segmenter_key",
]
