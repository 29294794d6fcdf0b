"""Weights: reading, checking and hashing state dicts, and where they come from.

Weights are never unpickled with code execution: ``.pth``/``.pt``/``.bin`` files go through
``torch.load(..., weights_only=True)`` and ``.safetensors`` through safetensors.

Weights choices (``--weights``), resolved by :func:`resolve_weights`:

* ``None``: the model's default weights (torchvision's, downloaded into
  ``torch.hub.get_dir()/checkpoints`` and checked against the hash in the file name; or the
  weights that ship inside the package, in :data:`WEIGHTS_DIR`, for built-in models);
* ``"none"``: random initialization;
* ``"torchvision:ENUM"`` (e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V2``),
  ``"builtin:NAME"``, or ``"url:URL"`` (a published checkpoint, e.g. the Places365 models
  of ``https://dissect.csail.mit.edu/models/``: downloaded like torchvision's, resumed after
  an interruption, and refused and fetched again when its SHA-256 does not start with the
  hex after the last ``-`` of its file name);
* a file path: a state dict in ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``, optionally
  wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``, ``module.`` prefixes stripped.
  Class names are read from a ``.json`` file beside it (``{"class_names": [...]}``) if any.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn

from dissect.download import RemoteFile, fetch_file, sha256_file, verified_sha256
from dissect.errors import DissectError
from dissect.models.registry import ModelSpec

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHT_FILE_TYPES = (".safetensors", ".pth", ".pt", ".bin")
HASH_REGEX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: name-<sha256 prefix>.ext
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # "url:", "hf:" (not a drive letter "C:")


# --------------------------------------------------------------------------- hashing


def state_dict_sha256(obj: nn.Module | Mapping[str, Tensor]) -> str:
    """Canonical SHA-256 of a state dict, independent of file format, device and key order.

    For each key in sorted order the hash takes ``key``, the dtype name (``float32``), the
    shape, the number of bytes (fields separated by NUL bytes), then the raw bytes of the
    tensor as a contiguous CPU tensor (native byte order, little-endian in practice).
    Buffers (BatchNorm running statistics) are included, as they are in the state dict.
    """
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        dtype = str(t.dtype).removeprefix("torch.")
        h.update(f"{key}\0{dtype}\0{tuple(t.shape)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------- state dicts


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or (weights-only) ``.pth``/``.pt``/``.bin``."""
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_FILE_TYPES:
        raise DissectError(
            f"cannot read weights file {path}: unknown type {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(WEIGHT_FILE_TYPES)}, or --weights none"
        )
    if not path.is_file():
        raise DissectError(f"weights file {path} not found; pass an existing file, or --weights none")
    if suffix == ".safetensors":
        import safetensors.torch
        from safetensors import SafetensorError

        try:
            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise DissectError(f"cannot read weights file {path}: not a valid safetensors file ({exc})") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DissectError(
                f"refusing to load {path}: it is not a plain weights file and loading it could run "
                f"code (torch.load weights_only: {first}); save model.state_dict() instead"
            ) from exc
        except Exception as exc:  # a corrupt file fails in many ways (struct.error, KeyError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DissectError(f"cannot read weights file {path}: {first}") from exc
    return _as_state_dict(obj, path)


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    for _ in range(2):  # {"state_dict": ...}, {"model": ...}, or one nested in the other
        if isinstance(obj, Mapping):
            wrapped = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
            if wrapped is not None:
                obj = wrapped
    if not isinstance(obj, Mapping) or not obj:
        raise DissectError(f"weights file {path} does not hold a state dict (got {type(obj).__name__}); save model.state_dict()")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise DissectError(
                f"weights file {path} does not hold a plain state dict: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor; save model.state_dict()"
            )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _few(keys: Sequence[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def apply_state_dict(module: nn.Module, state: Mapping[str, Tensor], source: str, model_name: str) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch is a one-line DissectError."""
    own = module.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 (several of torchvision's) have no BatchNorm
    # num_batches_tracked counters; BatchNorm itself loads them as 0, so do the same.
    state = {**{k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model) {_few(shapes)}")
    if problems:
        raise DissectError(
            f"weights {source} do not fit model {model_name}: {'; '.join(problems)}; "
            f"check that the weights belong to this model (and --num-classes)"
        )
    module.load_state_dict(state, strict=True)


def read_class_names(json_path: Path) -> list[str] | None:
    """The ``class_names`` of a weights file's JSON record, or None without a record."""
    if not json_path.is_file():
        return None
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DissectError(f"cannot read {json_path}: {exc}; fix or remove it") from exc
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DissectError(f"{json_path}: 'class_names' must be a list of strings")
    return names


def parse_class_names(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names given by the user: a list of names, or a file of them: text with one
    name per line (blank lines left out), or JSON holding a list, a dict ``{index: name}``
    with every index from 0, or ``{"class_names": [...]}``."""
    if not isinstance(source, (str, os.PathLike)):
        names = list(source)
        if not all(isinstance(n, str) for n in names):
            raise DissectError("class names must be strings (or a file of them)")
        return names
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DissectError(f"cannot read the class names {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DissectError(f"the class names {path} are not valid JSON ({exc}); give a list of names, "
                           "a dict of index to name, or a text file with one name per line") from None
    if isinstance(data, dict) and isinstance(data.get("class_names"), list):
        data = data["class_names"]
    if isinstance(data, dict):
        try:
            index = {int(k): v for k, v in data.items()}
        except (TypeError, ValueError):
            raise DissectError(f"the class names {path}: a dict's keys must be class indices 0, 1, …") from None
        missing = sorted(set(range(len(index))) - set(index))
        if missing:
            raise DissectError(f"the class names {path}: indices run from 0 to {len(index) - 1} without gaps; "
                               f"missing {missing[:5]}")
        data = [index[i] for i in range(len(index))]
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise DissectError(f"the class names {path} must be a JSON list of strings or a dict of index to name")
    return data


# --------------------------------------------------------------------------- torchvision's weights


def checkpoint_dir() -> Path:
    """Where downloaded weights are kept: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_weights(enum_name: str) -> Any:
    """torchvision's weights entry ``Enum.MEMBER`` (its URL and ``meta``), downloading nothing."""
    try:
        return torchvision.models.get_weight(enum_name)
    except (ValueError, KeyError) as exc:
        raise DissectError(
            f"unknown torchvision weights {enum_name!r}; give them as Enum.MEMBER, e.g. "
            f"ResNet50_Weights.IMAGENET1K_V1"
        ) from exc


def fetch_torchvision_weights(enum_name: str, progress: bool = True) -> Path:
    """Path of the checkpoint for torchvision weights ``enum_name``, downloaded if needed.

    A file already in :func:`checkpoint_dir` is reused when its SHA-256 starts with the hash
    prefix in its name; otherwise it is downloaded (and checked) again.
    """
    return fetch_torchvision_checkpoint(enum_name, progress)[0]


def fetch_torchvision_checkpoint(enum_name: str, progress: bool = True) -> tuple[Path, str]:
    """``(path, SHA-256 of the file)`` of torchvision weights ``enum_name``, as
    :func:`fetch_torchvision_weights` finds or downloads them."""
    rf = torchvision_file(enum_name)
    path = fetch_file(rf, progress)
    return path, verified_sha256(path)


def hub_file(url: str, what: str, size: int | None = None, flag: str = "--weights FILE") -> RemoteFile:
    """The checkpoint at ``url`` as torch hub keeps it: in :func:`checkpoint_dir`, under its
    own file name, checked against the SHA-256 prefix in that name (``name-<hex>.pth``);
    ``flag``: the option that takes a copy of it instead (``--segmenter-weights FILE`` for a
    segmenter's)."""
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    if not filename:
        raise DissectError(f"weights URL {url!r} names no file")
    match = HASH_REGEX.search(filename)
    dest = checkpoint_dir() / filename
    instead = f"or pass {flag} (a copy of {filename})" + (
        ", or --weights none for random weights" if flag.startswith("--weights ") else "")
    return RemoteFile(what=what, url=url, dest=dest, hash_prefix=match.group(1) if match else None,
                      size=size, instead=instead, flag=flag)


def torchvision_file(enum_name: str, flag: str = "--weights FILE") -> RemoteFile:
    """torchvision weights ``enum_name`` as a :class:`RemoteFile` (size from its metadata;
    ``flag``: see :func:`hub_file`)."""
    weights = torchvision_weights(enum_name)
    megabytes = weights.meta.get("_file_size")
    size = int(megabytes * 2 ** 20) if isinstance(megabytes, (int, float)) else None
    return hub_file(weights.url, f"torchvision weights {enum_name}", size, flag)


def weights_files(spec: ModelSpec | None, weights: str | None) -> list[RemoteFile]:
    """The files that the weights choice ``weights`` of model ``spec`` needs from the network
    (none for a file, built-in weights or random ones)."""
    if weights is None:
        weights = spec.default_weights if spec is not None else None
    if not weights:
        return []
    name = spec.name if spec is not None else "the model"
    if weights.startswith("torchvision:"):
        rf = torchvision_file(weights.removeprefix("torchvision:"))
        return [dataclasses.replace(rf, what=f"weights of {name} ({rf.what})")]
    if weights.startswith("url:"):
        return [hub_file(weights.removeprefix("url:"), f"weights of {name}")]
    return []


# --------------------------------------------------------------------------- weights sources


@dataclass
class WeightsSource:
    """Weights resolved from a ``--weights`` choice, with what a report says about them."""

    label: str  # LoadedModel.weights
    state: dict[str, Tensor] | None  # None: random init
    file_sha256: str | None = None
    class_names: list[str] | None = None


def resolve_weights(spec: ModelSpec | None, model_name: str, weights: str | None, progress: bool) -> WeightsSource:
    """Read the weights chosen by ``weights`` (see the module docstring) for ``model_name``;
    ``spec`` is None for a user's ``package.module:callable``."""
    if weights is None:
        if spec is None:
            return WeightsSource("object", None)
        if spec.default_weights is None:
            raise DissectError(f"model {model_name} has no default weights; pass --weights FILE or --weights none")
        weights = spec.default_weights
    if weights.lower() == "none":
        return WeightsSource("none", None)
    if weights.startswith("torchvision:"):
        enum_name = weights.removeprefix("torchvision:")
        path, digest = fetch_torchvision_checkpoint(enum_name, progress)
        categories = torchvision_weights(enum_name).meta.get("categories")
        return WeightsSource(f"torchvision:{enum_name}", read_state_dict(path), digest, list(categories) if categories else None)
    if weights.startswith("url:"):
        path = fetch_file(weights_files(spec, weights)[0], progress)
        names = list(spec.class_names) if spec is not None and spec.class_names else None
        return WeightsSource(f"url:{path.name}", read_state_dict(path), verified_sha256(path), names)
    if weights.startswith("builtin:"):
        stem = weights.removeprefix("builtin:")
        path = WEIGHTS_DIR / f"{stem}.safetensors"
        if not path.is_file():
            hint = (spec.missing_weights_hint if spec else "") or "reinstall dissect"
            raise DissectError(
                f"the built-in weights of model {model_name} are missing ({path}); {hint}, "
                f"or pass --weights none for random weights"
            )
        return WeightsSource(f"builtin:{stem}", read_state_dict(path), sha256_file(path), read_class_names(path.with_suffix(".json")))
    path = Path(weights).expanduser()
    scheme = _SCHEME.match(weights)
    if scheme and not path.exists():
        raise DissectError(
            f"cannot get the weights {weights} of model {model_name}: this version of dissect does not "
            f"know the weights source {scheme.group(0)!r}; download the file yourself and pass "
            f"--weights FILE (or --weights none for random weights)"
        )
    state = read_state_dict(path)
    return WeightsSource(f"file:{path.name}", state, sha256_file(path), read_class_names(path.with_suffix(".json")))


def default_class_names(spec: ModelSpec) -> list[str] | None:
    """Class names of the spec's default weights, without downloading anything."""
    if spec.class_names is not None:
        return list(spec.class_names)
    src = spec.default_weights or ""
    if src.startswith("torchvision:"):
        categories = torchvision_weights(src.removeprefix("torchvision:")).meta.get("categories")
        return list(categories) if categories else None
    if src.startswith("builtin:"):
        return read_class_names(WEIGHTS_DIR / f"{src.removeprefix('builtin:')}.json")
    return None
