"""CLIP models of open_clip by name: ``--model openclip:ARCH/PRETRAINED`` dissects the image
tower (e.g. ``openclip:ViT-B-16/openai``); the same names choose the CLIP model of the
open-vocabulary labeler (``--clip-model``, :mod:`dissect.labelers.clip`). The optional extra
``dissect[clip]`` (``open_clip_torch``).

``ARCH`` is one of ``open_clip.list_models()`` (a model config, including any added with
``open_clip.add_model_config``), ``PRETRAINED`` one of its pretrained tags
(``open_clip.list_pretrained_tags_by_model``). Weights: the tag's, through open_clip's own
download (the hub's ``open_clip_model.safetensors`` when it has one, kept in the Hugging Face
hub's cache; :mod:`dissect.models.hub`), read with ``weights_only``; ``--weights none``:
randomly initialized (seed 0; then ``/PRETRAINED`` may be left out). Preprocessing (size,
mean, std, interpolation, resize mode) from the tower's ``preprocess_cfg``. The tower's
output is the image embedding; it has no class names. Layers: ``named_modules()`` paths of
the tower (``transformer.resblocks.11`` of a ViT, read as a map of its patch tokens).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from dissect.download import RemoteFile, verified_sha256
from dissect.errors import DissectError, unknown_choice
from dissect.models.hub import cached_hub_file, hf_remote_file, require
from dissect.models.loading import LoadedModel, from_module, seeded
from dissect.models.registry import ModelSource, register_source
from dissect.models.weights import hub_file

PREFIX = "openclip"
SAFE_WEIGHTS = "open_clip_model.safetensors"


def _open_clip(name: str, what: str = "model"):
    return require("clip", f"{what} {PREFIX}:{name}")


def parse_name(name: str, weights: str | None, what: str = "model") -> tuple[str, str | None]:
    """``(arch, tag)`` of ``ARCH/PRETRAINED`` checked against open_clip's lists (the tag is
    None for random weights); unknown names list the nearest."""
    open_clip = _open_clip(name, what)
    arch, _, tag = name.partition("/")
    if arch not in open_clip.list_models():
        raise unknown_choice("open_clip model", arch, open_clip.list_models(),
                             hint="write it as openclip:ARCH/PRETRAINED (see open_clip.list_pretrained())")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if weights == "none":
        return arch, None
    if not tag:
        raise DissectError(f"{what} {PREFIX}:{name}: name its pretrained weights, {PREFIX}:{arch}/TAG "
                           f"(one of {', '.join(tags) or 'none published'}), or pass --weights none")
    if tag not in tags:
        raise unknown_choice(f"pretrained tag of open_clip model {arch}", tag, tags,
                             hint="or pass --weights none for random weights")
    if weights is not None:
        raise DissectError(f"{what} {PREFIX}:{name}: --weights takes only none (random weights) for openclip: "
                           "models")
    return arch, tag


def _hub_location(arch: str, tag: str) -> tuple[str, str] | None:
    """``(repo, file)`` of the tag's weights on the hub (open_clip reads the safetensors
    alternative of a ``.bin`` first); None for weights published only at a URL."""
    hub = _open_clip(f"{arch}/{tag}").get_pretrained_cfg(arch, tag).get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or SAFE_WEIGHTS
    return repo, SAFE_WEIGHTS if filename.endswith(".bin") else filename


def _weights_file(arch: str, tag: str) -> RemoteFile | None:
    what = f"weights of {PREFIX}:{arch}/{tag}"
    hub = _hub_location(arch, tag)
    if hub is not None:
        return hf_remote_file(*hub, what, "or pass --weights none for random weights")
    url = _open_clip(f"{arch}/{tag}").get_pretrained_cfg(arch, tag).get("url")
    return hub_file(url, what) if url else None


def openclip_files(name: str, weights: str | None, what: str = "model") -> list[RemoteFile]:
    """What ``openclip:ARCH/PRETRAINED`` needs from the network (its weights file)."""
    arch, tag = parse_name(name, weights, what)
    rf = _weights_file(arch, tag) if tag else None
    return [rf] if rf is not None else []


@dataclass
class ClipModel:
    """A whole open_clip model (both towers), its tokenizer and provenance."""

    name: str
    model: nn.Module
    tokenizer: Any
    preprocess: dict[str, Any]
    weights: str
    weights_file_sha256: str | None


def load_clip(name: str, weights: str | None = None, input_size: int | None = None,
              what: str = "model") -> ClipModel:
    """open_clip model ``name`` (``ARCH/PRETRAINED``) with both towers and its tokenizer."""
    open_clip = _open_clip(name, what)
    arch, tag = parse_name(name, weights, what)
    options: dict[str, Any] = {"force_image_size": input_size} if input_size else {}
    try:
        model = seeded(lambda: open_clip.create_model(arch, pretrained=tag, weights_only=True, **options))
    except (RuntimeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DissectError(f"open_clip cannot build {arch}/{tag} ({first}); see "
                           f"`dissect fetch {PREFIX}:{name}`") from None
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = list(size) if isinstance(size, (tuple, list)) else [int(size), int(size)]
    preprocess = {"source": "open_clip preprocess_cfg", "input_size": size,
                  "interpolation": cfg.get("interpolation"), "resize_mode": cfg.get("resize_mode"),
                  "mean": list(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                  "std": list(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))}
    file_sha = None
    if tag:
        hub = _hub_location(arch, tag)
        rf = None if hub is not None else _weights_file(arch, tag)
        path = cached_hub_file(*hub) if hub is not None else (rf.dest if rf is not None and rf.dest.is_file() else None)
        file_sha = verified_sha256(path) if path is not None else None
    return ClipModel(f"{PREFIX}:{arch}/{tag}" if tag else f"{PREFIX}:{arch}", model, open_clip.get_tokenizer(arch),
                     preprocess, f"{PREFIX}:{arch}/{tag}" if tag else "none", file_sha)


def load_openclip(name: str, weights: str | None = None, num_classes: int | None = None,
                  input_size: int | None = None, progress: bool = True) -> LoadedModel:
    """The image tower of ``openclip:ARCH/PRETRAINED`` as the model to dissect."""
    if num_classes is not None:
        raise DissectError(f"model {PREFIX}:{name} is an image tower (it outputs embeddings): it takes no "
                           "number of classes")
    clip = load_clip(name, weights, input_size)
    tower = clip.model.visual
    size = input_size or clip.preprocess["input_size"][0]
    loaded = from_module(tower, name=clip.name, input_size=size, mean=clip.preprocess["mean"],
                         std=clip.preprocess["std"], weights=clip.weights,
                         weights_file_sha256=clip.weights_file_sha256)
    return dataclasses.replace(loaded, preprocess=clip.preprocess)


register_source(ModelSource(PREFIX, load_openclip, openclip_files, extra="clip",
                            description="the image tower of an open_clip model (openclip:ARCH/PRETRAINED)",
                            example="openclip:ViT-B-16/openai"))
