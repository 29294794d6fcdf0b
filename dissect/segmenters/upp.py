"""The unified perceptual parsing segmenter ``upp`` (Xiao et al., ECCV 2018), as the 2020
paper labels a generator's outputs: Broden+ objects, parts and materials, plus colors.

Facts from the published code (CSAILVision/unifiedparsing ``models/``, davidbau/dissect
``netdissect/segmenter.py`` ``UnifiedParsingSegmenter`` and ``netdissect/upsegmodel/``):

* **Files** (:data:`UPP_URL`): ``encoder_epoch_40.pth``, ``decoder_epoch_40.pth`` (plain
  state dicts) and ``labels.json``: ``{"object": [...], "part": [...], "material": [...],
  "scene": [...], "object_part": {object name: [part names]}}``, each list starting with
  ``"-"`` (none) except ``scene``. Their checksums and sizes are not published: they are
  read without a check, and the report records the SHA-256 of what was read.
* **Encoder**: ResNet-50 with the deep stem (three 3x3 convs, 64-64-128 channels, the first
  of stride 2, each with BatchNorm and ReLU, then a 3x3 max pool of stride 2), bottlenecks
  with the stride on the 3x3 conv; keys ``conv1 bn1 conv2 bn2 conv3 bn3 layer1..layer4``
  (no ``fc``). It returns the four stages' maps (strides 4, 8, 16, 32).
* **Decoder**: UPerNet (``fpn_dim`` 512): a pyramid pooling module on the last map (scales
  1, 2, 3, 6, pooled by precise RoI pooling over the whole map, :mod:`.prroi`), an FPN, and
  heads ``scene_head`` (on the PPM output), ``object_head`` and ``part_head`` (on the fused
  FPN), ``material_head`` (on the finest FPN level). Object, part and material logits come
  out at a quarter of the input size. The part head has one channel per (object, part)
  pair, the objects with parts in order of their object number, each object's parts
  softmaxed on their own.
* **Input**: BGR, 0-255, minus the mean ``(102.9801, 115.9465, 122.7717)`` (B, G, R), no
  division; resized (adaptive average pooling) to each of ``sizes`` (default ``(256,)``);
  at each size the logits are upsampled (bilinear) to the image size and softmaxed, and the
  probabilities summed over the sizes (several sizes = the multi-scale vote).
* **Labels**: object = argmax (0 = ``"-"``: no label), material = argmax (0: none), and
  parts only for ``sky``, ``building`` and ``person`` (the reference's default), only where
  the object layer holds their owner. A part that is also an object (``door``) is labeled
  as that object, as the reference does. Numbers as the reference: objects, then materials,
  then parts, then our 11 colors. A name used twice (``sky`` is an object and a material)
  is kept for the first and suffixed for the next (``sky-m``; ``-p`` for a part).

The scene head is built (its weights are in the file) but a scene is a whole-image label,
which a segmenter's pixel layers do not carry; it is not used, as in the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from dissect.cache import default_cache_dir
from dissect.download import RemoteFile, fetch_file, sha256_file
from dissect.errors import DissectError
from dissect.models.weights import apply_state_dict, read_state_dict
from dissect.segmenters.base import Segmenter
from dissect.segmenters.color import COLOR_NAMES, color_layer
from dissect.segmenters.prroi import PrRoIPool2D
from dissect.segmenters.registry import register_segmenter

UPP_DIRNAME = "upp-resnet50-upernet"
UPP_URL = f"https://dissect.csail.mit.edu/models/segmodel/{UPP_DIRNAME}/"
ENCODER_FILE, DECODER_FILE, LABELS_FILE = "encoder_epoch_40.pth", "decoder_epoch_40.pth", "labels.json"
UPP_FILES = (LABELS_FILE, ENCODER_FILE, DECODER_FILE)
BGR_MEAN = (102.9801, 115.9465, 122.7717)
PART_OWNERS = ("sky", "building", "person")
SEG_SIZES = (256,)
SEGMENT_CHUNK = 8   # images per forward pass: 8 x 336 objects x 256 x 256 floats = 0.7 GB
POOL_SCALES = (1, 2, 3, 6)
FPN_INPLANES = (256, 512, 1024, 2048)
FPN_DIM = 512


# --------------------------------------------------------------------------- the network


def _bn_relu(conv: nn.Conv2d) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(inplace=True))


def _conv3x3_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return _bn_relu(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False))


class UppEncoder(nn.Module):
    """ResNet-50 with the deep stem; returns the four stages' maps."""

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1, self.relu1 = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3, self.relu3 = nn.BatchNorm2d(128), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 128
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride, down)]
            layers += [Bottleneck(planes * 4, planes) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            inplanes = planes * 4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps


class UPerNet(nn.Module):
    """The UPerNet decoder: logits ``{"object", "part", "material"}`` at the finest map's
    size (a quarter of the input) and ``"scene"`` ``[N, scenes]``."""

    def __init__(self, num_classes: dict[str, int], fc_dim: int = 2048, fpn_dim: int = FPN_DIM,
                 pool_scales: Sequence[int] = POOL_SCALES, fpn_inplanes: Sequence[int] = FPN_INPLANES):
        super().__init__()
        self.ppm_pooling = nn.ModuleList(PrRoIPool2D(s, s, 1.0) for s in pool_scales)
        self.ppm_conv = nn.ModuleList(_bn_relu(nn.Conv2d(fc_dim, 512, 1, bias=False)) for _ in pool_scales)
        self.ppm_last_conv = _conv3x3_bn_relu(fc_dim + len(pool_scales) * 512, fpn_dim)
        self.fpn_in = nn.ModuleList(_bn_relu(nn.Conv2d(c, fpn_dim, 1, bias=False)) for c in fpn_inplanes[:-1])
        self.fpn_out = nn.ModuleList(nn.Sequential(_conv3x3_bn_relu(fpn_dim, fpn_dim))
                                     for _ in fpn_inplanes[:-1])
        self.conv_fusion = _conv3x3_bn_relu(len(fpn_inplanes) * fpn_dim, fpn_dim)
        self.scene_head = nn.Sequential(_conv3x3_bn_relu(fpn_dim, fpn_dim), nn.AdaptiveAvgPool2d(1),
                                        nn.Conv2d(fpn_dim, num_classes["scene"], 1))
        for name in ("object", "part", "material"):
            setattr(self, f"{name}_head", nn.Sequential(_conv3x3_bn_relu(fpn_dim, fpn_dim),
                                                        nn.Conv2d(fpn_dim, num_classes[name], 1)))

    def forward(self, maps: list[Tensor], scene: bool = False) -> dict[str, Tensor]:
        conv5 = maps[-1]
        n, _, h, w = conv5.shape
        rois = torch.zeros(n, 5, dtype=conv5.dtype, device=conv5.device)
        rois[:, 0] = torch.arange(n, dtype=conv5.dtype, device=conv5.device)
        rois[:, 3], rois[:, 4] = w, h  # (batch, x0, y0, x1, y1): the whole map
        pooled = [conv(F.interpolate(pool(conv5, rois), (h, w), mode="bilinear", align_corners=False))
                  for pool, conv in zip(self.ppm_pooling, self.ppm_conv)]
        f = self.ppm_last_conv(torch.cat([conv5] + pooled, 1))
        out = {"scene": self.scene_head(f).flatten(1)} if scene else {}
        fpn = [f]
        for i in reversed(range(len(maps) - 1)):
            lateral = self.fpn_in[i](maps[i])
            f = lateral + F.interpolate(f, size=lateral.shape[2:], mode="bilinear", align_corners=False)
            fpn.append(self.fpn_out[i](f))
        fpn.reverse()  # finest first
        out["material"] = self.material_head(fpn[0])
        size = fpn[0].shape[2:]
        fused = self.conv_fusion(torch.cat(
            [fpn[0]] + [F.interpolate(m, size, mode="bilinear", align_corners=False) for m in fpn[1:]], 1))
        out["object"] = self.object_head(fused)
        out["part"] = self.part_head(fused)
        return out


# --------------------------------------------------------------------------- labels.json


def read_labels(path: str | os.PathLike) -> dict:
    """``labels.json`` read and checked: the ``object``, ``part``, ``material`` and ``scene``
    name lists and the ``object_part`` table (object name -> its part names)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DissectError(f"cannot read the segmenter's {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DissectError(f"{path} is not a unified parsing labels.json (not a JSON object)")
    for key in ("object", "part", "material", "scene"):
        names = data.get(key)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DissectError(f"{path}: {key!r} must be a non-empty list of names")
    table = data.get("object_part")
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise DissectError(f"{path}: 'object_part' must map object names to lists of part names")
    objects, parts = set(data["object"]), set(data["part"])
    for owner, names in table.items():
        if owner not in objects:
            raise DissectError(f"{path}: 'object_part' names {owner!r}, which is not in 'object'")
        bad = [p for p in names if p not in parts]
        if bad or not names:
            raise DissectError(f"{path}: the parts of {owner!r} must be names from 'part' "
                               f"(not {', '.join(map(repr, bad[:3])) or 'an empty list'})")
    return data


def num_classes(labels: dict) -> dict[str, int]:
    """The decoder's output sizes: one channel per name, and one per (object, part) pair."""
    sizes = {k: len(labels[k]) for k in ("object", "material", "scene")}
    sizes["part"] = sum(len(p) for p in labels["object_part"].values())
    return sizes


# --------------------------------------------------------------------------- the segmenter


def upp_cache_dir() -> Path:
    """Where the default weights are kept: ``<cache>/segmenters/upp-resnet50-upernet``."""
    return default_cache_dir() / "segmenters" / UPP_DIRNAME


def upp_files(folder: Path | None = None, names: Sequence[str] = UPP_FILES) -> list[RemoteFile]:
    """The published files (default folder :func:`upp_cache_dir`) as download records, for
    ``dissect fetch`` and a report's offline check. Unchecked: no checksum is published."""
    folder = Path(folder) if folder is not None else upp_cache_dir()
    return [RemoteFile(f"segmenter upp: {name}", UPP_URL + name, folder / name,
                       instead="or pass --segmenter-weights DIR, a folder holding all three files",
                       flag="--segmenter-weights DIR")
            for name in names]


def fetch_upp_files(folder: Path | None = None, progress: bool = True,
                    names: Sequence[str] = UPP_FILES) -> Path:
    """The folder holding the three published files (default :func:`upp_cache_dir`), each
    downloaded from :data:`UPP_URL` when missing. When some cannot be had, one error names
    each missing file, its URL and where it belongs."""
    records = upp_files(folder, names)
    missing = []
    for record in records:
        try:
            fetch_file(record, progress)
        except DissectError:
            missing.append(record.dest.name)
    folder = records[0].dest.parent
    if missing:
        listed = "; ".join(f"{name} from {UPP_URL}{name}" for name in missing)
        raise DissectError(f"segmenter upp: cannot download {listed}; save them in {folder} "
                           "(or pass --segmenter-weights DIR, a folder holding all three files)")
    return folder


def weights_folder(weights: str | None, progress: bool) -> Path:
    """The folder of the files ``weights`` names: None (the default, downloaded into the
    cache) or a folder holding them."""
    if weights is None:
        return fetch_upp_files(progress=progress)
    folder = Path(weights).expanduser()
    if not folder.is_dir():
        raise DissectError(f"segmenter upp: weights {weights} must be a folder holding "
                           f"{', '.join(UPP_FILES)}")
    missing = [n for n in UPP_FILES if not (folder / n).is_file()]
    if missing:
        raise DissectError(f"segmenter upp: {folder} lacks {', '.join(missing)} (from {UPP_URL})")
    return folder


def _looks_like(state: dict) -> str | None:
    """What a checkpoint that is not the expected one holds, when it is recognizable."""
    stem = state.get("conv1.weight")
    if stem is not None and tuple(stem.shape[-2:]) == (7, 7):
        return "a ResNet with a 7x7 stem (torchvision's layout), not the deep-stem encoder"
    if "layer1.0.conv1.weight" in state and "conv3.weight" in state:
        return "encoder"
    if "ppm_last_conv.0.weight" in state:
        return "decoder"
    return None


def load_upp_network(folder: str | os.PathLike) -> tuple[UppEncoder, UPerNet, dict, str]:
    """Encoder, decoder, labels and the SHA-256 over the three files of a weights folder."""
    folder = Path(folder)
    labels = read_labels(folder / LABELS_FILE)
    with torch.device("meta"):  # no random init of 70M weights that are then overwritten
        encoder, decoder = UppEncoder(), UPerNet(num_classes(labels))
    encoder, decoder = encoder.to_empty(device="cpu"), decoder.to_empty(device="cpu")
    for module, fname, part in ((encoder, ENCODER_FILE, "encoder"), (decoder, DECODER_FILE, "decoder")):
        state = read_state_dict(folder / fname)
        looks = _looks_like(state)
        if looks not in (None, part):
            raise DissectError(f"segmenter upp: {folder / fname} holds {looks}, not the UPerNet {part}")
        apply_state_dict(module, state, fname, f"upp ({part})")
    digest = "".join(sha256_file(folder / n) for n in UPP_FILES)
    return encoder.eval(), decoder.eval(), labels, hashlib.sha256(digest.encode()).hexdigest()


class UnifiedParsingSegmenter(Segmenter):
    """The unified perceptual parsing network: objects, parts, materials, plus colors.

    ``encoder``, ``decoder``, ``labels`` as :func:`load_upp_network` gives them; ``sizes``:
    the square sizes the image is resized to (several: the multi-scale vote);
    ``part_owners``: the objects whose parts are labeled (None: all in ``object_part``).
    """

    name = "upp"

    def __init__(self, encoder: UppEncoder, decoder: UPerNet, labels: dict,
                 sizes: Sequence[int] = SEG_SIZES, part_owners: Sequence[str] | None = PART_OWNERS,
                 weights_sha256: str | None = None):
        self.encoder, self.decoder, self.labels = encoder, decoder, labels
        self.sizes = tuple(int(s) for s in sizes)
        self.weights_sha256 = weights_sha256
        objects, materials = labels["object"], labels["material"]
        object_number = {name: k for k, name in enumerate(objects)}
        # The part head's slices: one per object with parts, in order of object number.
        table = labels["object_part"]
        with_parts = sorted(table, key=lambda o: object_number[o])
        starts, head = {}, 0
        for owner in with_parts:
            starts[owner] = (head, head + len(table[owner]))
            head += len(table[owner])
        owners = [o for o in (with_parts if part_owners is None else part_owners) if o in table]
        first_part = len(objects) - 1 + len(materials) - 1 + 1
        part_names: list[str] = []
        part_number: dict[str, int] = {}
        self.part_slices = []  # (owner's object number, channel slice, label number of each channel)
        for owner in owners:
            numbers = []
            for part in table[owner]:
                if part in object_number:  # "-" -> 0 (no part); "door" -> the object door
                    numbers.append(object_number[part])
                else:
                    if part not in part_number:
                        part_number[part] = first_part + len(part_names)
                        part_names.append(part)
                    numbers.append(part_number[part])
            self.part_slices.append((object_number[owner], slice(*starts[owner]), torch.tensor(numbers)))
        self.material_offset = len(objects) - 1
        named = [(n, "object") for n in objects[1:]] + [(n, "material") for n in materials[1:]] \
            + [(n, "part") for n in part_names]
        seen: set[str] = set()
        self.concepts = []
        for concept, cat in named:
            if concept in seen:
                concept = f"{concept}-{cat[0]}"
            seen.add(concept)
            self.concepts.append((concept, cat))
        self.color_offset = len(self.concepts)
        self.concepts += [(f"{c}-c", "color") for c in COLOR_NAMES]
        self.layers = ["object", "part", "material", "color"]

    def to(self, device):
        """Move the network to ``device``."""
        self.encoder.to(device)
        self.decoder.to(device)
        return self

    def provenance(self) -> dict:
        """The base record plus the sizes the images were segmented at."""
        return {**super().provenance(), "sizes": list(self.sizes)}

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [0, 1] RGB -> the network's input: BGR, 0-255, minus the mean."""
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        return images.float().flip(1) * 255 - mean

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> dict[str, Tensor]:
        """Summed softmax probabilities at the image size over :attr:`sizes`: ``object``
        ``[N, objects, H, W]``, ``material``, and ``part`` (each owner's slice softmaxed
        on its own)."""
        dev = next(self.encoder.parameters()).device
        x = self.prepare(images.to(dev))
        h, w = x.shape[2:]
        total: dict[str, Tensor] = {}
        for s in self.sizes:
            resized = x if (s, s) == (h, w) else F.adaptive_avg_pool2d(x, (s, s))
            logits = self.decoder(self.encoder(resized))
            probs = {}
            for key in ("object", "material"):
                probs[key] = F.interpolate(logits[key], (h, w), mode="bilinear", align_corners=False).softmax(1)
            part = F.interpolate(logits["part"], (h, w), mode="bilinear", align_corners=False)
            probs["part"] = torch.cat([part[:, sl].softmax(1) for _, sl, _ in self.part_slices], 1) \
                if self.part_slices else part[:, :0]
            for key, p in probs.items():
                total[key] = total[key] + p if key in total else p
        return total

    def segment(self, images: Tensor) -> Tensor:
        """Object, part, material and color label numbers ``[N, 4, H, W]`` (computed
        :data:`SEGMENT_CHUNK` images at a time: the probabilities at the image size are large)."""
        return torch.cat([self._segment(chunk) for chunk in images.split(SEGMENT_CHUNK)])

    def _segment(self, images: Tensor) -> Tensor:
        probs = self.probabilities(images)
        obj = probs["object"].argmax(1)
        mat = probs["material"].argmax(1)
        mat = torch.where(mat > 0, mat + self.material_offset, torch.zeros_like(mat))
        part = torch.zeros_like(obj)
        head = 0
        for owner, sl, numbers in self.part_slices:
            width = sl.stop - sl.start
            choice = numbers.to(obj.device)[probs["part"][:, head:head + width].argmax(1)]
            part = torch.where(obj == owner, choice, part)
            head += width
        col = color_layer(images, self.color_offset).to(obj.device)
        return torch.stack([obj, part, mat, col], 1).to(images.device)


@register_segmenter("upp", files=upp_files, description="unified perceptual parsing (ResNet-50 UPerNet, Broden+ objects, "
                                       "parts and materials; the 2020 paper's) plus colors")
def unified_parsing_segmenter(weights: str | None, progress: bool) -> UnifiedParsingSegmenter:
    """The published network (downloaded into the cache), the folder ``weights`` holding
    its three files, or ``"none"``: random weights (the published labels, still needed)."""
    if weights is not None and weights.lower() == "none":
        labels = read_labels(fetch_upp_files(progress=progress, names=[LABELS_FILE]) / LABELS_FILE)
        return UnifiedParsingSegmenter(UppEncoder().eval(), UPerNet(num_classes(labels)).eval(), labels)
    encoder, decoder, labels, digest = load_upp_network(weights_folder(weights, progress))
    return UnifiedParsingSegmenter(encoder, decoder, labels, weights_sha256=digest)
