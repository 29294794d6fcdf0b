"""Vision models of Hugging Face ``transformers`` by name: ``--model hf:ORG/NAME`` (a hub
model, e.g. ``hf:google/vit-base-patch16-224``, ``hf:facebook/dinov2-small``,
``hf:facebook/convnext-tiny-224``) or ``hf:DIR`` (a folder written by ``save_pretrained``);
the optional extra ``dissect[hf]``.

Only what ``transformers`` implements itself is loaded: a model whose ``config.json`` asks
for code from the hub (``auto_map``, or a ``model_type`` that ``transformers`` does not know)
is refused in one line and never run (``trust_remote_code=False`` always), and only
``model.safetensors`` is read (``use_safetensors=True``: no pickles). A config whose
``architectures`` name an image classifier is loaded with ``AutoModelForImageClassification``
(its class names are the config's ``id2label``), any other with ``AutoModel`` (a backbone:
DINOv2, a CLIP vision tower; no class names). ``--weights none`` builds it from its config,
randomly initialized (seed 0). Preprocessing (size, mean, std, crop) is read from the
model's ``preprocessor_config.json`` (the image processor's configuration). Hub files are
kept in the Hugging Face hub's cache (:mod:`dissect.models.hub`).

Layers: ``named_modules()`` paths (a ViT's ``vit.encoder.layer.11`` is read as a map of its
patch tokens, :mod:`dissect.feature_maps`); the default is found on a forward pass
(:func:`~dissect.models.loading.choose_default_layer`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from dissect.download import RemoteFile, ensure_files, verified_sha256
from dissect.errors import DissectError
from dissect.models.hub import cached_hub_file, hf_remote_file, require
from dissect.models.loading import LoadedModel, from_module, seeded
from dissect.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSource, register_source

PREFIX = "hf"
CONFIG, PREPROCESSOR, WEIGHTS = "config.json", "preprocessor_config.json", "model.safetensors"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def _local(name: str) -> Path | None:
    """The folder ``name`` names, if it is one (``hf:./mydir``, ``hf:/abs/dir``)."""
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _check_name(name: str) -> None:
    if _local(name) is None and not HUB_ID.match(name):
        raise DissectError(f"model {PREFIX}:{name}: not a folder written by save_pretrained nor a hub model id "
                           f"ORG/NAME (e.g. hf:google/vit-base-patch16-224)")


def _hub_files(name: str) -> list[RemoteFile]:
    instead = "or pass --model hf:DIR (a folder written by save_pretrained)"
    return [hf_remote_file(name, f, f"{f} of {PREFIX}:{name}", instead) for f in (CONFIG, PREPROCESSOR, WEIGHTS)]


def _file(name: str, filename: str) -> Path | None:
    """``filename`` of model ``name``: in its folder, or in the hub's cache; None if absent."""
    local = _local(name)
    if local is not None:
        path = local / filename
        return path if path.is_file() else None
    return cached_hub_file(name, filename)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DissectError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DissectError(f"{path} is not a JSON object")
    return data


def _config(name: str, transformers) -> dict:
    """The model's ``config.json``, refused in one line when it needs code from the hub."""
    path = _file(name, CONFIG)
    if path is None:
        where = f"{name} has no {CONFIG}" if _local(name) else f"{CONFIG} of {name} is not in the hub's cache"
        raise DissectError(f"model {PREFIX}:{name}: {where}; run `dissect fetch {PREFIX}:{name}`")
    cfg = _read_json(path)
    known = getattr(transformers, "CONFIG_MAPPING", None)
    if known is None:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING as known
    model_type = cfg.get("model_type")
    if cfg.get("auto_map") or model_type not in known:
        why = "its config.json asks for code from the hub (auto_map)" if cfg.get("auto_map") else \
            f"transformers does not implement its model_type {model_type!r}"
        raise DissectError(f"model {PREFIX}:{name} needs remote code ({why}); dissect never runs code from the "
                           "hub: choose a model that transformers implements itself")
    return cfg


def hf_files(name: str, weights: str | None) -> list[RemoteFile]:
    """What ``hf:NAME`` needs from the network: its config, preprocessor config and
    safetensors weights (none for a folder). The config comes first, so that a model that
    needs remote code is refused before its weights are downloaded."""
    _check_name(name)
    transformers = require("hf", f"model {PREFIX}:{name}")
    if _local(name) is not None:
        _config(name, transformers)   # refused before any work when it needs remote code
        return []
    config, *rest = _hub_files(name)
    if not config.is_present():
        try:
            ensure_files([config], progress=False)
        except DissectError:        # offline: list every file
            return [config, *rest]
    _config(name, transformers)
    return rest if weights != "none" else rest[:1]


def _preprocess(name: str, cfg: dict) -> dict[str, Any]:
    """Size, mean, std and crop from ``preprocessor_config.json`` (else the config's
    ``image_size`` and ImageNet's mean and std, said so)."""
    path = _file(name, PREPROCESSOR)
    pre = _read_json(path) if path is not None else {}

    def side(value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("height") or value.get("shortest_edge")
        return int(value) if isinstance(value, (int, float)) else None

    size = side(pre.get("crop_size")) if pre.get("do_center_crop") else None
    size = size or side(pre.get("size")) or side(cfg.get("image_size")) or 224
    return {"source": f"transformers image processor ({PREPROCESSOR})" if pre else
            "the model config's image_size and ImageNet's mean and std (no preprocessor_config.json)",
            "input_size": [size, size], "resize": pre.get("size"), "crop_size": pre.get("crop_size"),
            "do_center_crop": pre.get("do_center_crop"), "resample": pre.get("resample"),
            "mean": list(pre.get("image_mean", IMAGENET_MEAN)), "std": list(pre.get("image_std", IMAGENET_STD))}


def load_hf(name: str, weights: str | None = None, num_classes: int | None = None,
            input_size: int | None = None, progress: bool = True) -> LoadedModel:
    """``hf:NAME`` loaded (see the module docstring)."""
    _check_name(name)
    transformers = require("hf", f"model {PREFIX}:{name}")
    if weights not in (None, "none"):
        raise DissectError(f"model {PREFIX}:{name}: --weights takes only none (random weights) for hf: models; "
                           "for other weights pass --model hf:DIR, a folder written by save_pretrained")
    cfg = _config(name, transformers)
    classifier = any(a.endswith("ForImageClassification") for a in cfg.get("architectures") or [])
    auto = transformers.AutoModelForImageClassification if classifier else transformers.AutoModel
    source = str(_local(name) or name)
    options: dict[str, Any] = {"trust_remote_code": False}
    if num_classes is not None and classifier:
        options.update(num_labels=num_classes, ignore_mismatched_sizes=True)
    try:
        if weights == "none":
            config = transformers.AutoConfig.from_pretrained(source, **options)
            module = seeded(lambda: auto.from_config(config, trust_remote_code=False))
        else:
            module = auto.from_pretrained(source, use_safetensors=True, **options)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DissectError(f"transformers cannot load {PREFIX}:{name} ({first}); it needs {WEIGHTS} "
                           f"(safetensors only): see `dissect fetch {PREFIX}:{name}`") from None
    weights_path = _file(name, WEIGHTS) if weights is None else None
    id2label = getattr(module.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)] if classifier else None
    if names and all(GENERIC_LABEL.match(n) for n in names):
        names = None   # transformers' placeholders, not class names
    pre = _preprocess(name, cfg)
    size = input_size or pre["input_size"][0]
    loaded = from_module(module, name=f"{PREFIX}:{name}", input_size=size, class_names=names,
                         mean=pre["mean"], std=pre["std"],
                         weights="none" if weights == "none" else f"{PREFIX}:{name}",
                         weights_file_sha256=verified_sha256(weights_path) if weights_path else None)
    return dataclasses.replace(loaded, preprocess=pre)


register_source(ModelSource(PREFIX, load_hf, hf_files, extra="hf",
                            description="a vision model of Hugging Face transformers (hf:ORG/NAME or hf:DIR)",
                            example="hf:google/vit-base-patch16-224"))
