"""Models by name: a registry of specs, weights loading, and layer names.

A :class:`ModelSpec` describes a model as data: how to build it (random init), where its
default weights come from, its input size and normalization, its default layer and the
paper's names for its layers. :func:`load_model` turns a name (or ``package.module:callable``)
plus a weights choice into a :class:`LoadedModel`, an ``nn.Module`` in eval mode together
with everything a report needs to say which network was dissected.

Weights are never unpickled with code execution: ``.pth``/``.pt``/``.bin`` files go through
``torch.load(..., weights_only=True)`` and ``.safetensors`` through safetensors.

Weights choices (``--weights``):

* ``None``: the model's default weights (torchvision's, downloaded into
  ``torch.hub.get_dir()/checkpoints`` and checked against the hash in the file name; or the
  weights that ship inside the package for built-in models);
* ``"none"``: random initialization, deterministic (seed 0, without touching the global RNG);
* ``"torchvision:ENUM"`` (e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V2``) or
  ``"builtin:NAME"``;
* a file path: a state dict in ``.safetensors``, ``.pth``, ``.pt`` or ``.bin``, optionally
  wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``, ``module.`` prefixes stripped.
  Class names are read from a ``.json`` file beside it (``{"class_names": [...]}``) if any.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import json
import os
import sys
import pickle
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dissect.download import download, sha256_file
from dissect.errors import DissectError, unknown_choice
from dissect.models.toy import TOY_ALIASES, TOY_DEFAULT_LAYER, TOY_INPUT_SIZE, ToyClassifier
from dissect.models.toygan import TOYGAN_DEFAULT_LAYER, TOYGAN_Z_DIM, ToyGenerator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHT_FILE_TYPES = (".safetensors", ".pth", ".pt", ".bin")
HASH_REGEX = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: name-<sha256 prefix>.ext
INIT_SEED = 0


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A registered model, described as data."""

    name: str
    builder: Callable[[int], nn.Module]  # builder(num_classes) -> randomly initialized module
    kind: str = "classifier"
    default_weights: str | None = None  # "torchvision:VGG16_Weights.IMAGENET1K_V1", "builtin:toy_classifier"
    input_size: int = 224
    default_layer: str | tuple[str, ...] | None = None  # alias(es) or dotted path(s)
    aliases: Mapping[str, str] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    head: str | None = None  # dotted path of the final nn.Linear (number of classes = its rows)
    ignore_keys: tuple[str, ...] = ()  # state-dict key prefixes dropped before loading (aux heads)
    fix_state_dict: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    missing_weights_hint: str = ""  # what to do when built-in weights are missing
    description: str = ""
    z_dim: int | None = None  # generators: size of the latent vector
    segmenter: str | None = None  # generators: the segmenter that labels their outputs
    experiments: Mapping[str, Any] = field(default_factory=dict)  # generators: default concepts
    # builds the module that fits a given state dict (e.g. a generator's width read from its
    # weights); used instead of ``builder`` whenever there are weights to load
    builder_for_state: Callable[[Mapping[str, Tensor]], nn.Module] | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def add_model_spec(spec: ModelSpec) -> ModelSpec:
    """Register ``spec``; a name can be registered only once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_model(name: str, **fields: Any) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator: register the decorated ``builder(num_classes)`` as model ``name``."""

    def decorate(builder: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        add_model_spec(ModelSpec(name=name, builder=builder, **fields))
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the (case-insensitive) ``fnmatch`` pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n.lower(), pattern.lower()))


def get_model_spec(name: str) -> ModelSpec:
    spec = _REGISTRY.get(name) or _REGISTRY.get(name.lower())
    if spec is None:
        raise unknown_choice("model", name, list_models(), hint="Or give your own as package.module:callable")
    return spec


@dataclass
class LoadedModel:
    """A network ready to dissect, with its provenance."""

    name: str
    spec: ModelSpec | None
    module: nn.Module = field(repr=False)
    kind: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str] | None
    weights: str  # "builtin:toy_classifier", "torchvision:<ENUM>", "file:<basename>", "none", "object"
    weights_sha256: str  # state_dict_sha256(module)
    weights_file_sha256: str | None
    default_layers: list[str]  # dotted paths
    aliases: dict[str, str]
    z_dim: int | None = None  # generators: latent size (input is z, output an image batch)

    def provenance(self) -> dict[str, Any]:
        """What a report records about the model (JSON-serializable)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "weights_file_sha256": self.weights_file_sha256,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": len(self.class_names) if self.class_names else None,
            "z_dim": self.z_dim,
        }


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


def _read_class_names(json_path: Path) -> list[str] | None:
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


# --------------------------------------------------------------------------- weights sources


def checkpoint_dir() -> Path:
    """Where downloaded weights are kept: torch hub's checkpoints folder."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_weights(enum_name: str) -> Any:
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
    return _fetch_torchvision_weights(enum_name, progress)[0]


def _fetch_torchvision_weights(enum_name: str, progress: bool) -> tuple[Path, str]:
    weights = _torchvision_weights(enum_name)
    url = weights.url
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    dest = checkpoint_dir() / filename
    match = HASH_REGEX.search(filename)
    prefix = match.group(1) if match else None
    if dest.is_file():
        digest = sha256_file(dest)
        if prefix is None or digest.startswith(prefix):
            return dest, digest
    hint = (
        f"pass --weights FILE (a copy of {filename}; or save it as {dest}) "
        f"or --weights none for random weights"
    )
    download(url, dest, hash_prefix=prefix, progress=progress, hint=hint)
    return dest, sha256_file(dest)


@dataclass
class _Weights:
    label: str  # LoadedModel.weights
    state: dict[str, Tensor] | None  # None: random init
    file_sha256: str | None = None
    class_names: list[str] | None = None


def _resolve_weights(spec: ModelSpec | None, model_name: str, weights: str | None, progress: bool) -> _Weights:
    if weights is None:
        if spec is None:
            return _Weights("object", None)
        if spec.default_weights is None:
            raise DissectError(f"model {model_name} has no default weights; pass --weights FILE or --weights none")
        weights = spec.default_weights
    if weights.lower() == "none":
        return _Weights("none", None)
    if weights.startswith("torchvision:"):
        enum_name = weights.removeprefix("torchvision:")
        path, digest = _fetch_torchvision_weights(enum_name, progress)
        categories = _torchvision_weights(enum_name).meta.get("categories")
        return _Weights(f"torchvision:{enum_name}", read_state_dict(path), digest, list(categories) if categories else None)
    if weights.startswith("builtin:"):
        stem = weights.removeprefix("builtin:")
        path = WEIGHTS_DIR / f"{stem}.safetensors"
        if not path.is_file():
            hint = (spec.missing_weights_hint if spec else "") or "reinstall dissect"
            raise DissectError(
                f"the built-in weights of model {model_name} are missing ({path}); {hint}, "
                f"or pass --weights none for random weights"
            )
        return _Weights(f"builtin:{stem}", read_state_dict(path), sha256_file(path), _read_class_names(path.with_suffix(".json")))
    path = Path(weights).expanduser()
    state = read_state_dict(path)
    return _Weights(f"file:{path.name}", state, sha256_file(path), _read_class_names(path.with_suffix(".json")))


def _default_class_names(spec: ModelSpec) -> list[str] | None:
    """Class names of the spec's default weights, without downloading anything."""
    src = spec.default_weights or ""
    if src.startswith("torchvision:"):
        categories = _torchvision_weights(src.removeprefix("torchvision:")).meta.get("categories")
        return list(categories) if categories else None
    if src.startswith("builtin:"):
        return _read_class_names(WEIGHTS_DIR / f"{src.removeprefix('builtin:')}.json")
    return None


# --------------------------------------------------------------------------- loading


def _no_inplace(module: nn.Module) -> None:
    """Turn off in-place activations so a hook's captured output is never overwritten later."""
    for m in module.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False


def _seeded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the CPU RNG seeded to INIT_SEED, restoring the global RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return fn()


def load_model(
    name: str,
    weights: str | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    progress: bool = True,
    kind: str | None = None,
    z_dim: int | None = None,
) -> LoadedModel:
    """Load a registered model, or ``package.module:callable``, with the chosen weights.

    ``weights``: None (the default weights), ``"none"`` (random init), a file path, or
    ``"torchvision:ENUM"``/``"builtin:NAME"``. ``num_classes`` defaults to what the weights
    hold (or the model's usual number). ``input_size`` overrides the model's default.
    """
    if name not in _REGISTRY and ":" in name:
        return _load_callable(name, weights, num_classes, input_size, progress, kind or "classifier", z_dim)
    spec = get_model_spec(name)
    src = _resolve_weights(spec, spec.name, weights, progress)
    if src.state is not None:
        state = {k: v for k, v in src.state.items() if not k.startswith(spec.ignore_keys)} if spec.ignore_keys else src.state
        if spec.fix_state_dict is not None:
            state = spec.fix_state_dict(state)
        if num_classes is None and spec.head and f"{spec.head}.weight" in state:
            num_classes = int(state[f"{spec.head}.weight"].shape[0])
    else:
        state = None
    n = num_classes if num_classes is not None else spec.num_classes
    if state is not None and spec.builder_for_state is not None:
        module = _seeded(lambda: spec.builder_for_state(state))
    else:
        module = _seeded(lambda: spec.builder(n))
    if state is not None:
        apply_state_dict(module, state, src.label, spec.name)
    _no_inplace(module)
    module.eval()

    class_names = src.class_names
    if src.state is not None and class_names is None and n == spec.num_classes:
        class_names = _default_class_names(spec)  # e.g. an ImageNet fine-tune of a torchvision model
    if class_names is not None and len(class_names) != n:
        class_names = None
    aliases = dict(spec.aliases)
    default = spec.default_layer
    return LoadedModel(
        name=spec.name,
        spec=spec,
        module=module,
        kind=spec.kind,
        input_size=input_size or spec.input_size,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        class_names=class_names,
        weights=src.label,
        weights_sha256=state_dict_sha256(module),
        weights_file_sha256=src.file_sha256,
        default_layers=[aliases.get(d, d) for d in ((default,) if isinstance(default, str) else (default or ()))],
        aliases=aliases,
        z_dim=int(getattr(module, "z_dim", None) or spec.z_dim) if spec.z_dim else None,
    )


def import_user_module(module_name: str) -> Any:
    """Import ``module_name`` for a ``package.module:callable`` argument, looking in the
    current folder too (as ``python -m`` does; the ``dissect`` script alone would not)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(module_name)


def _load_callable(target: str, weights: str | None, num_classes: int | None, input_size: int | None,
                   progress: bool, kind: str = "classifier", z_dim: int | None = None) -> LoadedModel:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise DissectError(f"cannot load model {target!r}: write it as package.module:callable")
    try:
        py_module = import_user_module(module_name)
    except ImportError as exc:
        raise DissectError(
            f"cannot import {module_name!r} for model {target}: {exc}; make sure it is on PYTHONPATH "
            f"(or run from its folder)"
        ) from exc
    obj: Any = py_module
    for part in attr.split("."):
        if not hasattr(obj, part):
            choices = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            raise unknown_choice("callable", attr, choices, hint=f"in module {module_name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DissectError(f"{target} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if kind == "generator" and not z_dim:
        raise DissectError(f"generator {target}: pass --z-dim N, the size of its latent vector")
    net = _seeded(lambda: obj(**kwargs))
    if not isinstance(net, nn.Module):
        raise DissectError(f"{target}() returned a {type(net).__name__}, not a torch.nn.Module")
    src = _resolve_weights(None, target, weights, progress)
    if src.state is not None:
        apply_state_dict(net, src.state, src.label, target)
    _no_inplace(net)
    return from_module(
        net,
        name=target,
        input_size=input_size or 224,
        class_names=src.class_names,
        weights="object" if src.label == "none" else src.label,
        weights_file_sha256=src.file_sha256,
        kind=kind,
        z_dim=z_dim,
    )


def spatial_layers(module: nn.Module, dummy: Tensor, what: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """``(dotted path, output shape)`` of every module whose output, on ``dummy``, is a 4-D
    tensor with more than one spatial position, in the order they finish."""
    order: list[tuple[str, tuple[int, ...]]] = []

    def make_hook(path: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append((path, tuple(out.shape[1:])))

        return hook

    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    handles = []
    try:
        for path, m in module.named_modules():
            if path:
                handles.append(m.register_forward_hook(make_hook(path)))
        with torch.no_grad():
            module(dummy.to(device=device, dtype=dtype))
    except Exception as exc:  # the user's model failed on a dummy input; say so in one line
        shape = "x".join(str(d) for d in dummy.shape)
        raise DissectError(
            f"could not run the model on a {shape} input to find its default "
            f"layer ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{what or 'pass --input-size or --layer'}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return order


def find_last_spatial_layer(module: nn.Module, input_size: int = 224) -> str | None:
    """Dotted path of the last module to finish, on a dummy input, whose output is a 4-D
    tensor with more than one spatial position; None if there is none."""
    order = spatial_layers(module, torch.zeros(1, 3, input_size, input_size))
    return order[-1][0] if order else None


def _generator_output_size(module: nn.Module, z_dim: int, name: str) -> int:
    from ..data.generated import output_range
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        try:
            out = module(torch.randn(2, z_dim, generator=torch.Generator().manual_seed(0)).to(device))
        except Exception as exc:
            raise DissectError(f"generator {name} failed on latents of size {z_dim} "
                               f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                               "check --z-dim") from exc
    output_range(out, f"generator {name}")
    return int(out.shape[-1])


def find_generator_layer(module: nn.Module, z_dim: int) -> str | None:
    """A generator's default layer: the first with a spatial map of at least 8x8 that has
    more than 3 channels (GAN dissection's featured layer4 of a Progressive GAN is 8x8)."""
    order = spatial_layers(module, torch.zeros(1, z_dim), "pass --z-dim N (the latent size) or --layer")
    for i, (path, shape) in enumerate(order):
        if len(shape) == 3 and shape[0] > 3 and min(shape[1:]) >= 8:
            while i + 1 < len(order) and order[i + 1][1] == shape:  # conv, norm, relu, block:
                i += 1                                            # take the block's output
            return order[i][0]
    return order[-1][0] if order else None


def from_module(
    module: nn.Module,
    name: str = "object",
    input_size: int = 224,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    default_layers: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    kind: str = "classifier",
    weights: str = "object",
    weights_file_sha256: str | None = None,
    z_dim: int | None = None,
) -> LoadedModel:
    """Wrap a model object you already hold (it is put in eval mode, otherwise unchanged).

    ``kind="generator"``: the module maps latents ``[N, z_dim]`` to images ``[N, 3, H, W]``
    in [-1, 1] or [0, 1]; ``z_dim`` is then required. Without ``default_layers``, the
    default is :func:`find_last_spatial_layer` (classifiers) or
    :func:`find_generator_layer` (generators).
    """
    module.eval()
    if kind not in ("classifier", "generator"):
        raise DissectError(f"--kind must be classifier or generator, not {kind!r}")
    if kind == "generator":
        if not z_dim or z_dim < 1:
            raise DissectError(f"generator {name}: pass --z-dim N, the size of its latent vector")
        if default_layers is None:
            found = find_generator_layer(module, z_dim)
            default_layers = [found] if found else []
        input_size = _generator_output_size(module, z_dim, name)
    if default_layers is None:
        found = find_last_spatial_layer(module, input_size)
        default_layers = [found] if found else []
    return LoadedModel(
        name=name,
        spec=None,
        module=module,
        kind=kind,
        input_size=input_size,
        mean=tuple(mean),
        std=tuple(std),
        class_names=list(class_names) if class_names is not None else None,
        weights=weights,
        weights_sha256=state_dict_sha256(module),
        weights_file_sha256=weights_file_sha256,
        default_layers=list(default_layers),
        aliases=dict(aliases or {}),
        z_dim=z_dim if kind == "generator" else None,
    )


# --------------------------------------------------------------------------- layers


def _module_paths(loaded: LoadedModel) -> list[str]:
    return [path for path, _ in loaded.module.named_modules() if path]


def layer_names(loaded: LoadedModel) -> list[str]:
    """Valid layer names: aliases first, then dotted ``named_modules()`` paths."""
    return list(loaded.aliases) + _module_paths(loaded)


def resolve_layer(loaded: LoadedModel, name: str) -> tuple[str, str | None]:
    """``(dotted path, alias or None)`` for an alias or a dotted module path."""
    if name in loaded.aliases:
        return loaded.aliases[name], name
    if name and name in set(_module_paths(loaded)):
        return name, None
    raise unknown_choice("layer", name, layer_names(loaded), hint=f"See `dissect layers {loaded.name}`")


def get_layer(loaded: LoadedModel, name: str) -> nn.Module:
    """The module for an alias or dotted path."""
    path, _ = resolve_layer(loaded, name)
    return loaded.module.get_submodule(path)


# --------------------------------------------------------------------------- the zoo


def _vgg_aliases(convs_per_block: Sequence[int]) -> dict[str, str]:
    """conv{block}_{i} -> the ReLU after that conv in torchvision's VGG ``features``."""
    aliases, index = {}, 0
    for block, n in enumerate(convs_per_block, start=1):
        for conv in range(1, n + 1):
            aliases[f"conv{block}_{conv}"] = f"features.{index + 1}"
            index += 2
        index += 1  # max-pool
    return aliases


_RESNET_ALIASES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4", "res5c": "layer4"}
_TV = "torchvision:"

register_model(
    "toy",
    default_weights="builtin:toy_classifier",
    input_size=TOY_INPUT_SIZE,
    default_layer=TOY_DEFAULT_LAYER,
    aliases=TOY_ALIASES,
    num_classes=6,
    head="classifier.3",
    missing_weights_hint="run `dissect train toy-classifier` to create them",
    description="small VGG-style scene classifier for the 64x64 toy world (weights ship with dissect)",
)(lambda n: ToyClassifier(num_classes=n))

register_model(
    "toygan",
    kind="generator",
    default_weights="builtin:toy_generator",
    input_size=64,
    default_layer=TOYGAN_DEFAULT_LAYER,
    num_classes=0,
    z_dim=TOYGAN_Z_DIM,
    segmenter="toy",
    experiments={"ablate": ("tree",), "insert": ("door",), "layers": ("layer2",)},
    builder_for_state=ToyGenerator.for_state_dict,
    missing_weights_hint="run `dissect train toy-generator` to create them",
    description="DCGAN-style generator of 64x64 toy-world scenes (weights ship with dissect)",
)(lambda n: ToyGenerator())

for _name, _blocks in {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}.items():
    register_model(
        _name,
        default_weights=f"{_TV}{_name.upper()}_Weights.IMAGENET1K_V1",
        default_layer="conv5_3" if _name == "vgg16" else "conv5_4",
        aliases=_vgg_aliases(_blocks),
        head="classifier.6",
        description=f"{_name.upper()} (Simonyan & Zisserman 2014), ImageNet",
    )(lambda n, _f=getattr(torchvision.models, _name): _f(weights=None, num_classes=n))

register_model(
    "alexnet",
    default_weights=f"{_TV}AlexNet_Weights.IMAGENET1K_V1",
    default_layer="conv5",
    aliases={"conv1": "features.1", "conv2": "features.4", "conv3": "features.7", "conv4": "features.9", "conv5": "features.11"},
    head="classifier.6",
    description="AlexNet (Krizhevsky et al. 2012), ImageNet",
)(lambda n: torchvision.models.alexnet(weights=None, num_classes=n))

for _name, _enum in {"resnet18": "ResNet18", "resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}.items():
    register_model(
        _name,
        default_weights=f"{_TV}{_enum}_Weights.IMAGENET1K_V1",
        default_layer="layer4",
        aliases=_RESNET_ALIASES,
        head="fc",
        description=f"{_enum} (He et al. 2016), ImageNet",
    )(lambda n, _f=getattr(torchvision.models, _name): _f(weights=None, num_classes=n))

register_model(
    "googlenet",
    default_weights=f"{_TV}GoogLeNet_Weights.IMAGENET1K_V1",
    default_layer="inception5b",
    aliases={f"inception_{s}": f"inception{s}" for s in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")},
    head="fc",
    ignore_keys=("aux1.", "aux2."),
    description="GoogLeNet / Inception v1 (Szegedy et al. 2015), ImageNet",
)(lambda n: torchvision.models.googlenet(weights=None, num_classes=n, aux_logits=False, init_weights=True, transform_input=True))

register_model(
    "inception_v3",
    default_weights=f"{_TV}Inception_V3_Weights.IMAGENET1K_V1",
    input_size=299,
    default_layer="Mixed_7c",
    aliases={m.lower(): m for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")},
    head="fc",
    ignore_keys=("AuxLogits.",),
    description="Inception v3 (Szegedy et al. 2016), ImageNet, 299x299 input",
)(  # init_weights=False: PyTorch's default init; torchvision's truncated-normal one takes ~5 s
    lambda n: torchvision.models.inception_v3(weights=None, num_classes=n, aux_logits=False, init_weights=False, transform_input=True)
)


class _DenseNet(torchvision.models.DenseNet):
    """torchvision's DenseNet with the final ReLU not in place, so the output of ``features``
    that a hook captured is not overwritten by the classifier's ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x))
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


_DENSE_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _densenet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the old 'norm.1' style keys of torchvision's DenseNet checkpoints ('norm1')."""
    out = {}
    for key, value in state.items():
        m = _DENSE_OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


register_model(
    "densenet161",
    default_weights=f"{_TV}DenseNet161_Weights.IMAGENET1K_V1",
    default_layer="features",
    aliases={f"denseblock{i}": f"features.denseblock{i}" for i in range(1, 5)},
    head="classifier",
    fix_state_dict=_densenet_keys,
    description="DenseNet-161 (Huang et al. 2017), ImageNet",
)(lambda n: _DenseNet(growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96, num_classes=n))

register_model(
    "mobilenet_v2",
    default_weights=f"{_TV}MobileNet_V2_Weights.IMAGENET1K_V1",
    default_layer="features",
    head="classifier.1",
    description="MobileNetV2 (Sandler et al. 2018), ImageNet",
)(lambda n: torchvision.models.mobilenet_v2(weights=None, num_classes=n))
