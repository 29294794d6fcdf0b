"""Loading: a model by name (or ``package.module:callable``) plus a weights choice, and its layers.

:func:`load_model` turns a registered name (:mod:`dissect.models.registry`) or
``package.module:callable`` plus a weights choice (:mod:`dissect.models.weights`) into a
:class:`LoadedModel`, an ``nn.Module`` in eval mode together with everything a report needs
to say which network was dissected; :func:`from_module` wraps a module you already hold.
Random initialization (``--weights none``) is deterministic: seed 0, without touching the
global RNG. Layers are addressed by alias or dotted ``named_modules()`` path
(:func:`resolve_layer`); default layers are found by running the model on a dummy input
(:func:`find_last_spatial_layer`, :func:`find_generator_layer`).
"""

from __future__ import annotations

import importlib
import os
import sys
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dissect.errors import DissectError, unknown_choice
from dissect.feature_maps import infer_layout
from dissect.models.latents import output_range
from dissect.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, get_model_spec, is_registered
from dissect.models.lookalike import lookalike_hint
from dissect.models.weights import (WeightsSource, apply_state_dict, default_class_names, parse_class_names,
                                    resolve_weights, state_dict_sha256)

INIT_SEED = 0


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
    declared_range: str | None = None  # generators: "tanh"/"unit" as declared (then clamped), None: checked

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


# --------------------------------------------------------------------------- loading


def num_outputs(loaded: LoadedModel) -> int:
    """How many class scores a classifier returns (one forward pass of a blank image)."""
    p = next(loaded.module.parameters(), None)
    x = torch.zeros(1, 3, loaded.input_size, loaded.input_size, device=p.device if p is not None else "cpu")
    with torch.no_grad():
        out = loaded.module(x)
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise DissectError(f"model {loaded.name} returns {type(out).__name__}, not class scores [N, classes]")
    return int(out.shape[-1])


def with_class_names(loaded: LoadedModel, source: str | os.PathLike | Sequence[str]) -> LoadedModel:
    """``loaded`` with the class names of ``source`` (a list, or a text or JSON file: see
    :func:`~dissect.models.weights.parse_class_names`), checked against its number of outputs."""
    if loaded.kind != "classifier":
        raise DissectError(f"class names apply to classifiers; {loaded.name} is a {loaded.kind}")
    names = parse_class_names(source)
    where = f" in {source}" if isinstance(source, (str, os.PathLike)) else ""
    k = num_outputs(loaded)
    if len(names) != k:
        raise DissectError(f"{len(names)} class names{where}, but model {loaded.name} has {k} outputs; "
                           "give one name per output, in output order")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DissectError(f"the class names{where} name {dup!r} twice; each output needs its own name")
    return dataclasses.replace(loaded, class_names=names)


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
    if not is_registered(name) and ":" in name:
        return _load_callable(name, weights, num_classes, input_size, progress, kind or "classifier", z_dim)
    spec = get_model_spec(name)
    src = resolve_weights(spec, spec.name, weights, progress)
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
        _apply_or_explain(module, state, src, spec.name, exclude=spec.name)
    _no_inplace(module)
    module.eval()

    class_names = src.class_names
    if src.state is not None and class_names is None and n == spec.num_classes:
        class_names = default_class_names(spec)  # e.g. an ImageNet fine-tune of a torchvision model
    if class_names is not None and len(class_names) != n:
        class_names = None
    aliases = dict(spec.aliases)
    default = spec.default_layer
    return LoadedModel(
        name=spec.name,
        spec=spec,
        module=module,
        kind=spec.kind,
        # a generator built to fit its weights knows its output size (e.g. a smaller ProGAN)
        input_size=input_size or int(getattr(module, "output_size", 0) or spec.input_size),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        class_names=class_names,
        weights=src.label,
        weights_sha256=state_dict_sha256(module),
        weights_file_sha256=src.file_sha256,
        default_layers=[aliases.get(d, d) for d in ((default,) if isinstance(default, str) else (default or ()))],
        aliases=aliases,
        z_dim=int(getattr(module, "z_dim", None) or spec.z_dim) if spec.z_dim else None,
        declared_range=spec.declared_range,
    )


def _apply_or_explain(module: nn.Module, state: Mapping[str, Tensor], src: WeightsSource, name: str,
                      exclude: str | None = None) -> None:
    """:func:`apply_state_dict`; when the weights do not fit, its one-line error also names
    the registered model whose layout they do fit, if any (other than ``exclude``)."""
    try:
        apply_state_dict(module, state, src.label, name)
    except DissectError as exc:
        hint = lookalike_hint(src.state or state, exclude)
        if not hint:
            raise
        raise DissectError(f"{exc}{hint}") from exc


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
            raise unknown_choice("callable", attr, choices, where=f"in module {module_name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DissectError(f"{target} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    if kind == "generator" and not z_dim:
        raise DissectError(f"generator {target}: pass --z-dim N, the size of its latent vector")
    net = _seeded(lambda: obj(**kwargs))
    if not isinstance(net, nn.Module):
        raise DissectError(f"{target}() returned a {type(net).__name__}, not a torch.nn.Module")
    src = resolve_weights(None, target, weights, progress)
    if src.state is not None:
        _apply_or_explain(net, src.state, src, target)
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
    """``(dotted path, map shape)`` of every module whose output, on ``dummy``, read as a map
    (:mod:`dissect.feature_maps`: a 4-D map, channels-last, or a token sequence), has more
    than one spatial position, in the order they finish."""
    order: list[tuple[str, tuple[int, ...]]] = []

    def make_hook(path: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            layout = infer_layout(out.shape) if isinstance(out, Tensor) and out.dim() in (3, 4) else None
            if layout is not None and layout.kind != "other":
                shape = tuple(layout.to_map(out).shape[1:])
                if shape[-1] * shape[-2] > 1:
                    order.append((path, shape))

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
    """Dotted path of the last module to finish, on a dummy input, whose output is a map
    with more than one spatial position (see :func:`spatial_layers`); None if there is none."""
    order = spatial_layers(module, torch.zeros(1, 3, input_size, input_size))
    return order[-1][0] if order else None


def _generator_output_size(module: nn.Module, z_dim: int, name: str, declared_range: str | None = None) -> int:
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        try:
            out = module(torch.randn(2, z_dim, generator=torch.Generator().manual_seed(0)).to(device))
        except Exception as exc:
            raise DissectError(f"generator {name} failed on latents of size {z_dim} "
                               f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                               "check --z-dim") from exc
    output_range(out, f"generator {name}", declared_range)
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
    declared_range: str | None = None,
) -> LoadedModel:
    """Wrap a model object you already hold (it is put in eval mode, otherwise unchanged).

    ``kind="generator"``: the module maps latents ``[N, z_dim]`` to images ``[N, 3, H, W]``
    in [-1, 1] or [0, 1]; ``z_dim`` is then required. ``declared_range`` (``"tanh"`` or
    ``"unit"``) says which, for a generator that overshoots it a little: its output is then
    clamped rather than checked. Without ``default_layers``, the
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
        input_size = _generator_output_size(module, z_dim, name, declared_range)
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
        declared_range=declared_range if kind == "generator" else None,
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
    raise unknown_choice("layer", name, layer_names(loaded), hint=f"see `dissect layers {loaded.name}`")


def get_layer(loaded: LoadedModel, name: str) -> nn.Module:
    """The module for an alias or dotted path."""
    path, _ = resolve_layer(loaded, name)
    return loaded.module.get_submodule(path)
