"""Models by name: the registry of :class:`ModelSpec` records (name bookkeeping only).

A :class:`ModelSpec` describes a model as data: how to build it (random init), where its
default weights come from, its input size and normalization, its default layer and the
paper's names for its layers. Each family registers its specs where it is defined (the
files of :mod:`dissect.models.zoo`), with :func:`register_model` as a decorator on the
builder; a name can be registered only once. Building and loading are
:mod:`dissect.models.loading`'s; this module does not import torch.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from dissect.errors import unknown_choice

if TYPE_CHECKING:
    from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    # class names that ship with the spec (e.g. Places365's 365), used when the weights
    # carry none; torchvision's come from its weights' metadata instead
    class_names: tuple[str, ...] | None = None
    # the probe set a report uses when --data is not given: "toyworld", "broden1_224",
    # "broden1_227" (None: the kind's default, the toy world for classifiers)
    default_data: str | None = None
    # the class-labeled images the classifier ablation uses by default ("places_val"); None:
    # the ablation needs --ablation-data DIR (or runs on the probe set's own labels, toys)
    ablation_data: str | None = None
    # generators: the range their output is declared to be in ("tanh" for [-1, 1], "unit"
    # for [0, 1]); a declared range is clamped to (ProGAN overshoots a little), an
    # undeclared one is checked by latents.output_range
    declared_range: str | None = None


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


def is_registered(name: str) -> bool:
    """Whether ``name`` is exactly a registered model's name."""
    return name in _REGISTRY


@dataclass(frozen=True, eq=False)
class ModelSource:
    """A library whose models are named with a prefix (``timm:NAME``, ``hf:ORG/NAME``,
    ``openclip:ARCH/PRETRAINED``): how to load one and which files it needs from the network.

    ``load(rest, weights, num_classes, input_size, progress)`` returns a LoadedModel for the
    name after the prefix; ``files(rest, weights)`` lists the RemoteFile records of its
    default weights (``dissect fetch`` and the offline check). Each library is an optional
    extra (``extra``), imported only when one of its names is used."""

    prefix: str
    load: Callable[..., Any]
    files: Callable[[str, str | None], list]
    extra: str
    description: str = ""
    example: str = ""


_SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Register a prefixed family of names (once per prefix)."""
    if source.prefix in _SOURCES:
        raise ValueError(f"a model source {source.prefix!r} is already registered")
    _SOURCES[source.prefix] = source
    return source


def model_source(name: str) -> tuple[ModelSource, str] | None:
    """``(source, rest)`` for a name ``PREFIX:REST`` of a registered source, else None."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in _SOURCES or is_registered(name):
        return None
    return _SOURCES[prefix], rest


def list_sources() -> list[ModelSource]:
    """The registered prefixed families, by prefix."""
    return [_SOURCES[p] for p in sorted(_SOURCES)]


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name`` (or its lower case); unknown names list the nearest."""
    spec = _REGISTRY.get(name) or _REGISTRY.get(name.lower())
    if spec is None:
        raise unknown_choice("model", name, list_models(), hint="or give your own as package.module:callable")
    return spec
