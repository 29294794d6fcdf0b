"""Any model of timm by name: ``--model timm:NAME`` (``timm:resnet50.a1_in1k``,
``timm:vit_base_patch16_224.augreg2_in21k_ft_in1k``; the optional extra ``dissect[timm]``).

``NAME`` is timm's own: an architecture (its default pretrained tag) or ``ARCH.TAG``. The
model is built by ``timm.create_model``; its default weights are timm's pretrained weights,
``model.safetensors`` of the hub model ``timm/ARCH.TAG`` (kept in the Hugging Face hub's
cache, :mod:`dissect.models.hub`), or the release URL for the few weights that are not on the
hub (kept in torch hub's checkpoints folder); ``--weights none`` builds it randomly
initialized (seed 0), ``--weights FILE`` reads a state dict (safetensors, or a ``.pth`` read
with ``weights_only``). Preprocessing (input size, mean, std, crop, interpolation) comes from
the model's ``pretrained_cfg`` (``timm.data.resolve_data_config``), and the class names from
timm's ImageNet metadata (``infer_imagenet_subset``: ImageNet-1k's, -12k's or -22k's synset
descriptions). ``--input-size`` rebuilds a ViT-like model whose input size is fixed
(``fixed_input_size``) at that size (its position embeddings resampled by timm).

Layers: every ``named_modules()`` path, and timm's ``feature_info`` (the maps its
``features_only`` mode returns) as aliases ``feat0``, ``feat1``, ... (the indices of timm's
``out_indices``); the default layer is the last of them (a ViT's last block, read as a map
of its patch tokens, :mod:`dissect.feature_maps`). An unknown name lists the nearest of
timm's names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dissect.download import RemoteFile, verified_sha256
from dissect.errors import DissectError, unknown_choice
from dissect.models.hub import cached_hub_file, hf_remote_file, require
from dissect.models.loading import LoadedModel, from_module, seeded
from dissect.models.registry import ModelSource, register_source
from dissect.models.weights import apply_state_dict, hub_file, resolve_weights

PREFIX = "timm"
WEIGHTS_FILE = "model.safetensors"   # timm's first choice on the hub


def _timm(name: str):
    return require("timm", f"model {PREFIX}:{name}")


def _pretrained_cfg(timm, name: str):
    """timm's ``PretrainedCfg`` of ``name`` (``ARCH`` or ``ARCH.TAG``); an unknown name is a
    one-line error listing the nearest architectures or tags."""
    arch, _, tag = name.partition(".")
    if not arch or not timm.is_model(arch):
        raise unknown_choice("timm model", arch, timm.list_models(),
                             hint="see timm.list_models() (or `timm:ARCH.TAG` for a pretrained tag)")
    if tag and f"{arch}.{tag}" not in set(timm.list_pretrained(f"{arch}.*")):
        raise unknown_choice(f"pretrained tag of timm model {arch}", f"{arch}.{tag}",
                             timm.list_pretrained(f"{arch}.*"), hint="or pass --weights none for random weights")
    return timm.models.get_pretrained_cfg(name)


def _weights_file(name: str, cfg) -> RemoteFile | None:
    """The file timm reads the pretrained weights of ``name`` from (None: none published)."""
    what = f"weights of {PREFIX}:{name}"
    instead = "or pass --weights FILE (a copy of it), or --weights none for random weights"
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        return hf_remote_file(repo, cfg.hf_hub_filename or WEIGHTS_FILE, what, instead, revision or None)
    if cfg.url:
        return hub_file(cfg.url, what)
    return None


def timm_files(name: str, weights: str | None) -> list[RemoteFile]:
    """What ``timm:NAME`` with ``weights`` needs from the network (its pretrained weights)."""
    if weights is not None:
        return []
    timm = _timm(name)
    rf = _weights_file(name, _pretrained_cfg(timm, name))
    return [rf] if rf is not None else []


def _class_names(timm, module) -> list[str] | None:
    """The class names timm's metadata gives the model's outputs (ImageNet subsets)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if not subset:
        return None
    names = ImageNetInfo(subset).label_descriptions()
    return list(names) if len(names) == getattr(module, "num_classes", None) else None


def feature_aliases(module) -> dict[str, str]:
    """``feat{i}`` -> the module path of timm's ``feature_info[i]`` (those that name a module)."""
    info = getattr(module, "feature_info", None) or []
    paths = {p for p, _ in module.named_modules() if p}
    aliases = {}
    for i, entry in enumerate(info):
        path = entry.get("module") if isinstance(entry, dict) else None
        for candidate in (path, (path or "").replace("_", ".")):
            if candidate in paths:
                aliases[f"feat{i}"] = candidate
                break
    return aliases


def load_timm(name: str, weights: str | None = None, num_classes: int | None = None,
              input_size: int | None = None, progress: bool = True) -> LoadedModel:
    """``timm:NAME`` loaded (see the module docstring)."""
    timm = _timm(name)
    cfg = _pretrained_cfg(timm, name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if input_size and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = input_size
    pretrained = weights is None
    rf = _weights_file(name, cfg) if pretrained else None
    if pretrained and rf is None:
        raise DissectError(f"timm publishes no weights for {name}; pass --weights FILE or --weights none")
    try:
        module = seeded(lambda: timm.create_model(name, pretrained=pretrained, **kwargs))
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DissectError(f"timm cannot build {name} ({first}); see `dissect fetch {PREFIX}:{name}`"
                           if pretrained else f"timm cannot build {name} ({first})") from None
    label, file_sha = "none", None
    if pretrained:
        label = f"{PREFIX}:{cfg.hf_hub_id or cfg.url}"
        if cfg.hf_hub_id:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            cached = cached_hub_file(repo, rf.dest.name, revision or None)
        else:
            cached = rf.dest if rf.dest.is_file() else None
        file_sha = verified_sha256(cached) if cached is not None else None
    elif weights != "none":
        src = resolve_weights(None, f"{PREFIX}:{name}", weights, progress)
        if src.state is not None:
            apply_state_dict(module, src.state, src.label, f"{PREFIX}:{name}")
        label, file_sha = src.label, src.file_sha256
    data = timm.data.resolve_data_config({}, model=module)
    size = int(data["input_size"][-1])
    aliases = feature_aliases(module)
    last = list(aliases)[-1] if aliases else None
    loaded = from_module(module, name=f"{PREFIX}:{name}", input_size=input_size or size,
                         class_names=_class_names(timm, module), mean=data["mean"], std=data["std"],
                         aliases=aliases, default_layers=[aliases[last]] if last else None,
                         weights=label, weights_file_sha256=file_sha)
    reason = (f"the last of timm's feature_info ({last}: {aliases[last]})" if last else loaded.default_reason)
    preprocess = {"source": "timm pretrained_cfg (timm.data.resolve_data_config)",
                  "input_size": list(data["input_size"][1:]), "interpolation": data.get("interpolation"),
                  "crop_pct": data.get("crop_pct"), "crop_mode": data.get("crop_mode"),
                  "mean": list(data["mean"]), "std": list(data["std"])}
    return dataclasses.replace(loaded, default_reason=reason, preprocess=preprocess)


register_source(ModelSource(PREFIX, load_timm, timm_files, extra="timm",
                            description="any timm model by name (timm:ARCH or timm:ARCH.TAG)",
                            example="timm:resnet50.a1_in1k"))
