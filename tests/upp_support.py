"""Files in the published layout of the ``upp`` segmenter (encoder_epoch_40.pth,
decoder_epoch_40.pth, labels.json), from random weights: for the tests of any model whose
probe set ``upp`` labels (``write_upp_files(folder)``, then ``--segmenter-weights folder``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A small Broden+ vocabulary: "hair" is a part and a material, "sky" an object and a material,
# "door" an object and a part of buildings; "tree" has parts but is not one of the reference's
# three part owners. object_part is listed out of object-number order on purpose.
LABELS = {
    "object": ["-", "wall", "sky", "building", "person", "door", "tree"],
    "part": ["-", "cloud", "window", "door", "head", "leg", "hair", "trunk"],
    "material": ["-", "wood", "sky", "hair"],
    "scene": ["kitchen", "street", "bedroom"],
    "object_part": {"person": ["-", "head", "leg", "hair"], "tree": ["-", "trunk"],
                    "sky": ["-", "cloud"], "building": ["-", "window", "door"]},
}


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}


def published_shapes(labels: dict) -> tuple[dict, dict]:
    """Key -> shape of encoder_epoch_40.pth and decoder_epoch_40.pth, written down from the
    reference (unifiedparsing models/resnet.py, models/models.py Resnet and UPerNet with
    fc_dim 2048, fpn_dim 512), independently of dissect's modules."""
    enc = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "conv2.weight": (64, 64, 3, 3),
           **_bn("bn2", 64), "conv3.weight": (128, 64, 3, 3), **_bn("bn3", 128)}
    inplanes = 128
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            cin = inplanes if b == 0 else planes * 4
            enc.update({f"{p}.conv1.weight": (planes, cin, 1, 1), **_bn(f"{p}.bn1", planes),
                        f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn(f"{p}.bn2", planes),
                        f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn(f"{p}.bn3", planes * 4)})
            if b == 0:
                enc.update({f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1),
                            **_bn(f"{p}.downsample.1", planes * 4)})
        inplanes = planes * 4
    n_part = sum(len(v) for v in labels["object_part"].values())
    dec = {}
    for k in range(4):
        dec.update({f"ppm_conv.{k}.0.weight": (512, 2048, 1, 1), **_bn(f"ppm_conv.{k}.1", 512)})
    dec.update({"ppm_last_conv.0.weight": (512, 2048 + 4 * 512, 3, 3), **_bn("ppm_last_conv.1", 512)})
    for i, c in enumerate((256, 512, 1024)):
        dec.update({f"fpn_in.{i}.0.weight": (512, c, 1, 1), **_bn(f"fpn_in.{i}.1", 512),
                    f"fpn_out.{i}.0.0.weight": (512, 512, 3, 3), **_bn(f"fpn_out.{i}.0.1", 512)})
    dec.update({"conv_fusion.0.weight": (512, 2048, 3, 3), **_bn("conv_fusion.1", 512)})
    dec.update({"scene_head.0.0.weight": (512, 512, 3, 3), **_bn("scene_head.0.1", 512),
                "scene_head.2.weight": (len(labels["scene"]), 512, 1, 1),
                "scene_head.2.bias": (len(labels["scene"]),)})
    for head, n in (("object", len(labels["object"])), ("part", n_part), ("material", len(labels["material"]))):
        dec.update({f"{head}_head.0.0.weight": (512, 512, 3, 3), **_bn(f"{head}_head.0.1", 512),
                    f"{head}_head.1.weight": (n, 512, 1, 1), f"{head}_head.1.bias": (n,)})
    return enc, dec


def random_state(shapes: dict, seed: int) -> dict:
    """Random weights of a trained-looking scale (BatchNorm statistics positive), as a
    PyTorch 0.4.0 state dict (no num_batches_tracked)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("running_var"):
            t = 1 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean") or key.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # BatchNorm weight
            t = 0.5 + 0.5 * torch.rand(shape, generator=gen)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=gen) / fan_in ** 0.5
        state[key] = t
    return state



def write_upp_files(folder: Path, labels: dict = LABELS) -> Path:
    """The three published files with random weights (full architecture) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc, dec = published_shapes(labels)
    torch.save(random_state(enc, 1), folder / "encoder_epoch_40.pth")
    torch.save(random_state(dec, 2), folder / "decoder_epoch_40.pth")
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder
