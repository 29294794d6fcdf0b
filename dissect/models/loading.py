"""Loading: a model by name (or ``package.module:callable``) plus a weights choice, and its layers.

:func:`load_model` turns a registered name (:mod:`dissect.models.registry`) or
``package.module:callable`` plus a weights choice (:mod:`dissect.models.weights`) into a
:class:`LoadedModel`, an ``nn.Module`` in eval mode together with everything a report needs
to say which network was dissected; :func:`from_module` wraps a module you already hold.
Random initialization (``--weights none``) is deterministic: seed 0, without touching the
global RNG. Layers are addressed by alias or dotted ``named_modules()`` path
(:func:`resolve_layer`), and a module that runs more than once per forward pass by one of
its calls, ``NAME#K``. Every call of every module is read off one forward pass on a dummy
input (:func:`module_calls`, :meth:`LoadedModel.layer_calls`); default layers are found from
it (:func:`choose_default_layer`), never a module that runs more than once, with the reason
they were chosen.
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
from dissect.hooks import call_name, split_call
from dissect.models.latents import output_range
from dissect.models.registry import (IMAGENET_MEAN, IMAGENET_STD, ModelSpec, get_model_spec, is_registered,
                                     model_source)
from dissect.models.lookalike import lookalike_hint
from dissect.models.weights import (WeightsSource, apply_state_dict, default_class_names, parse_class_names,
                                    resolve_weights, state_dict_sha256)

INIT_SEED = 0


@dataclass(frozen=True)
class LayerCall:
    """One call of one module in a forward pass on a dummy input."""

    path: str           # dotted named_modules() path
    call: int           # 1-based number of this call of the module in the forward pass
    calls: int          # how many times the module runs in the forward pass
    started: int        # the order in which the calls started (a container before its parts)
    shape: tuple[int, ...] | None   # the output as a tensor, else None (a tuple, a dict, ...)
    map_shape: tuple[int, ...] | None  # the output read as a map (C, H, W), None if it is not one

    @property
    def spatial(self) -> bool:
        """A map with more than one spatial position."""
        return self.map_shape is not None and len(self.map_shape) == 3 and self.map_shape[1] * self.map_shape[2] > 1

    @property
    def name(self) -> str:
        """The layer name of this call: ``path``, or ``path#K`` for a module that runs more than once."""
        return call_name(self.path, self.call if self.calls > 1 else None)

    @property
    def shape_text(self) -> str:
        """``C x H x W`` of a map, the tensor's shape otherwise (without the batch), ``-`` for no tensor."""
        shape = self.map_shape or (self.shape[1:] if self.shape else None)
        return "x".join(str(d) for d in shape) if shape else "-"


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
    default_reason: str = ""  # why default_layers are the default, one sentence
    calls: list[LayerCall] | None = field(default=None, repr=False)  # module_calls, once known
    # how the model's own library says its images are prepared (size, mean, std, crop,
    # interpolation, and where that was read: "timm pretrained_cfg", ...); None: not stated
    preprocess: dict[str, Any] | None = None

    def dummy_input(self) -> Tensor:
        """One input of the model's size: an image (classifiers) or a latent (generators)."""
        if self.kind == "generator":
            return torch.zeros(1, self.z_dim or 1)
        return torch.zeros(1, 3, self.input_size, self.input_size)

    def layer_calls(self) -> list[LayerCall]:
        """Every call of every module in one forward pass on :meth:`dummy_input`, in the
        order they finish (computed once)."""
        if self.calls is None:
            self.calls = module_calls(self.module, self.dummy_input(), "pass --layer with a module "
                                      "that runs once, or --input-size")
        return self.calls

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
            "preprocess": self.preprocess,
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


def seeded(fn: Callable[[], Any]) -> Any:
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
    prefixed = model_source(name)
    if prefixed is not None:   # timm:NAME, hf:ORG/NAME, openclip:ARCH/PRETRAINED
        source, rest = prefixed
        return source.load(rest, weights=weights, num_classes=num_classes, input_size=input_size,
                           progress=progress)
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
        module = seeded(lambda: spec.builder_for_state(state))
    else:
        module = seeded(lambda: spec.builder(n))
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
    defaults = (default,) if isinstance(default, str) else tuple(default or ())
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
        default_layers=[aliases.get(d, d) for d in defaults],
        aliases=aliases,
        z_dim=int(getattr(module, "z_dim", None) or spec.z_dim) if spec.z_dim else None,
        declared_range=spec.declared_range,
        default_reason=f"the registered default{'s' if len(defaults) > 1 else ''} of {spec.name}",
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
    net = seeded(lambda: obj(**kwargs))
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


def module_calls(module: nn.Module, dummy: Tensor, what: str = "") -> list[LayerCall]:
    """Every call of every named module in one forward pass of ``module`` on ``dummy``, in the
    order the calls finish; a failing model is a one-line :class:`DissectError` ending in
    ``what`` (what to do instead)."""
    found: list[tuple[str, int, Any, Any]] = []   # (path, started, shape, map shape)
    stack: dict[str, list[int]] = {}                # path -> start numbers of the calls running
    counter = [0]

    def make_pre(path: str) -> Callable[..., None]:
        def pre(_m: nn.Module, _inp: Any) -> None:
            counter[0] += 1
            stack.setdefault(path, []).append(counter[0])
        return pre

    def make_hook(path: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            shape = map_shape = None
            if isinstance(out, Tensor):
                shape = tuple(out.shape)
                layout = infer_layout(out.shape) if out.dim() in (3, 4) else None
                if layout is not None and layout.kind != "other":
                    map_shape = tuple(layout.to_map(out).shape[1:])
                elif out.dim() == 4:
                    map_shape = shape[1:]
            found.append((path, stack[path].pop(), shape, map_shape))
        return hook

    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    handles = []
    try:
        for path, m in module.named_modules(remove_duplicate=False):
            if path:
                handles.append(m.register_forward_pre_hook(make_pre(path)))
                handles.append(m.register_forward_hook(make_hook(path)))
        with torch.no_grad():
            module(dummy.to(device=device, dtype=dtype))
    except Exception as exc:  # the user's model failed on a dummy input; say so in one line
        shape = "x".join(str(d) for d in dummy.shape)
        raise DissectError(
            f"could not run the model on a {shape} input to find its layers "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"{what or 'pass --input-size or --layer'}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    total: dict[str, int] = {}
    for path, *_ in found:
        total[path] = total.get(path, 0) + 1
    seen: dict[str, int] = {}
    calls = []
    for path, start, shape, map_shape in found:
        seen[path] = seen.get(path, 0) + 1
        calls.append(LayerCall(path, seen[path], total[path], start, shape, map_shape))
    return calls


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


def spatial_layers(module: nn.Module, dummy: Tensor, what: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """``(dotted path, map shape)`` of every module that runs once on ``dummy`` and whose
    output, read as a map (:mod:`dissect.feature_maps`: a 4-D map, channels-last, or a token
    sequence), has more than one spatial position, in the order they finish."""
    return [(c.path, c.map_shape) for c in module_calls(module, dummy, what) if c.spatial and c.calls == 1]


def _skipped(calls: Sequence[LayerCall]) -> str:
    """What a default skipped among ``calls`` (those after it): the modules that run more
    than once with a spatial output there, each with its last such call."""
    last: dict[str, LayerCall] = {}
    for c in calls:
        if c.calls > 1 and c.spatial:
            last[c.path] = c
    names = list(last.values())
    shown = "".join(f"; {c.path} runs {c.calls} times and was skipped (use {c.path}#{c.call})" for c in names[:3])
    return shown + (f"; {len(names) - 3} more modules that run several times were skipped" if len(names) > 3 else "")


def choose_default_layer(calls: Sequence[LayerCall], kind: str = "classifier") -> tuple[str | None, str]:
    """``(default layer, why)`` from a forward pass's :func:`module_calls`; a module that runs
    more than once is never a default.

    A classifier's: the last module to finish whose output is a map with more than one
    spatial position. A generator's: the first such map of at least 8x8 with more than 3
    channels (GAN dissection's featured layer4 of a Progressive GAN is 8x8), taken at the end
    of its block (the modules after it with the same shape), else the last map."""
    calls = list(calls)
    once = [i for i, c in enumerate(calls) if c.spatial and c.calls == 1]
    if not once:
        return None, "no module that runs once per forward pass outputs a spatial map"

    def shape(i: int) -> str:
        return "x".join(str(d) for d in calls[i].map_shape)

    if kind == "generator":
        for j, i in enumerate(once):
            s = calls[i].map_shape
            if s[0] > 3 and min(s[1:]) >= 8:
                while j + 1 < len(once) and calls[once[j + 1]].map_shape == s:  # conv, norm, relu, block:
                    j += 1                                                      # take the block's output
                i = once[j]
                return calls[i].path, (f"the first module whose output is a map of at least 8x8 with more "
                                       f"than 3 channels, at the end of its block ({shape(i)}), in one "
                                       f"forward pass on a latent")
    i = once[-1]
    return calls[i].path, (f"the last module whose output is a spatial map ({shape(i)}) in one forward "
                           f"pass{_skipped(calls[i + 1:])}")


def find_last_spatial_layer(module: nn.Module, input_size: int = 224) -> str | None:
    """Dotted path of a classifier's default layer (:func:`choose_default_layer`) on a dummy
    image; None if no module that runs once outputs a spatial map."""
    return choose_default_layer(module_calls(module, torch.zeros(1, 3, input_size, input_size)))[0]


def find_generator_layer(module: nn.Module, z_dim: int) -> str | None:
    """A generator's default layer (:func:`choose_default_layer`) on a dummy latent."""
    calls = module_calls(module, torch.zeros(1, z_dim), "pass --z-dim N (the latent size) or --layer")
    return choose_default_layer(calls, "generator")[0]


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
    clamped rather than checked. Without ``default_layers``, the default is found on one
    forward pass of a dummy input (:func:`choose_default_layer`; never a module that runs
    more than once), and ``default_reason`` says why.
    """
    module.eval()
    if kind not in ("classifier", "generator"):
        raise DissectError(f"--kind must be classifier or generator, not {kind!r}")
    calls, reason = None, "given by the caller (from_module's default_layers)"
    if kind == "generator":
        if not z_dim or z_dim < 1:
            raise DissectError(f"generator {name}: pass --z-dim N, the size of its latent vector")
        dummy, what = torch.zeros(1, z_dim), "pass --z-dim N (the latent size) or --layer"
        input_size = _generator_output_size(module, z_dim, name, declared_range)
    else:
        dummy, what = torch.zeros(1, 3, input_size, input_size), "pass --input-size or --layer"
    if default_layers is None:
        calls = module_calls(module, dummy, what)
        found, reason = choose_default_layer(calls, kind)
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
        default_reason=reason,
        calls=calls,
    )


# --------------------------------------------------------------------------- layers


def _module_paths(loaded: LoadedModel) -> list[str]:
    return [path for path, _ in loaded.module.named_modules(remove_duplicate=False) if path]


def layer_names(loaded: LoadedModel) -> list[str]:
    """Valid layer names: aliases first, then dotted ``named_modules()`` paths (a module that
    runs more than once is named one call at a time, ``NAME#K``)."""
    return list(loaded.aliases) + _module_paths(loaded)


def _calls_text(calls: Sequence[LayerCall]) -> str:
    return ", ".join(f"call {c.call}: {c.shape_text}" for c in calls)


def _check_call(loaded: LoadedModel, path: str, call: int | None, shown: str) -> int | None:
    """``call`` checked against the calls of ``path`` in a forward pass (``shown``: the name
    the user gave, without ``#K``): None for a module that runs once, K for one that runs
    several times; a plain name of a module that runs several times, or a K out of range,
    is a one-line error listing the calls."""
    mine = [c for c in loaded.layer_calls() if c.path == path]
    n = len(mine)
    if call is None and n > 1:
        options = ", ".join(f"{shown}#{k}" for k in range(1, n)) + f" or {shown}#{n}"
        raise DissectError(f"layer {shown!r} runs {n} times per forward pass ({_calls_text(mine)}); "
                           f"name one call: {options}")
    if call is not None and call > max(n, 1):
        runs = f"runs {n} times per forward pass ({_calls_text(mine)})" if n else \
            "does not run in a forward pass on a dummy input"
        raise DissectError(f"layer {shown}#{call}: {shown!r} {runs}; K goes from 1 to {max(n, 1)}")
    return call if n > 1 else None


def resolve_layer(loaded: LoadedModel, name: str) -> tuple[str, str | None]:
    """``(layer, alias or None)`` for an alias or a dotted module path, optionally with
    ``#K``, the K-th call of a module that runs several times per forward pass (then the
    layer is ``path#K`` and the alias ``alias#K``). A module that runs several times must be
    named with ``#K``; ``#1`` of one that runs once is the module itself."""
    base, call = split_call(name)
    alias = None
    if base in loaded.aliases:
        alias = base
        path, fixed = split_call(loaded.aliases[base])
        if fixed is not None:       # an alias of one call
            if call not in (None, fixed):
                raise DissectError(f"layer {name!r}: {base!r} names call {fixed} of {path}; write {base}")
            return call_name(path, _check_call(loaded, path, fixed, path)), base
    elif base and base in set(_module_paths(loaded)):
        path = base
    else:
        raise unknown_choice("layer", base, layer_names(loaded), hint=f"see `dissect layers {loaded.name}`")
    call = _check_call(loaded, path, call, base)
    return call_name(path, call), call_name(alias, call) if alias else None


def paper_name(loaded: LoadedModel, layer: str) -> str | None:
    """The alias of ``layer`` (a resolved ``path`` or ``path#K``): the first alias given for
    that module (with the same ``#K``), or for that very call; None without one."""
    path, call = split_call(layer)
    for alias, target in loaded.aliases.items():
        if target == layer:
            return alias
    for alias, target in loaded.aliases.items():
        if target == path:
            return call_name(alias, call)
    return None


def get_layer(loaded: LoadedModel, name: str) -> nn.Module:
    """The module for an alias or dotted path (``#K`` names the same module)."""
    path, _ = split_call(resolve_layer(loaded, name)[0])
    return loaded.module.get_submodule(path)
