"""Segmenters by name: each family registers a factory where it is defined.

A factory ``(weights, progress) -> Segmenter`` is registered with :func:`register_segmenter`
as a decorator; ``weights`` is None (the default weights), ``"none"`` (random) or a file,
``progress`` whether a download shows progress. :func:`load_segmenter` builds one by name,
or from a user's ``package.module:callable`` (called without arguments; it returns a
:class:`~dissect.segmenters.base.Segmenter` or any duck-typed one). A name can be
registered only once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from dissect.download import RemoteFile
from dissect.errors import DissectError, unknown_choice
from dissect.models.loading import import_user_module
from dissect.segmenters.base import Segmenter, as_segmenter

SegmenterFactory = Callable[[str | None, bool], Segmenter]

_FACTORIES: dict[str, SegmenterFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}
_FILES: dict[str, Callable[[], list[RemoteFile]]] = {}


def register_segmenter(name: str, description: str = "",
                       files: Callable[[], list[RemoteFile]] | None = None) -> Callable[[SegmenterFactory], SegmenterFactory]:
    """Decorator: register the decorated ``factory(weights, progress)`` as segmenter ``name``.

    ``files()``: the :class:`~dissect.download.RemoteFile` records its default weights need
    from the network (for ``dissect fetch`` and a report's offline check); none by default."""

    def decorate(factory: SegmenterFactory) -> SegmenterFactory:
        if name in _FACTORIES:
            raise ValueError(f"a segmenter named {name!r} is already registered")
        _FACTORIES[name] = factory
        _DESCRIPTIONS[name] = description
        if files is not None:
            _FILES[name] = files
        return factory

    return decorate


def segmenter_files(name: str) -> list[RemoteFile]:
    """What segmenter ``name`` needs from the network (none for ``package.module:callable``);
    an unknown name lists the nearest ones."""
    if name not in _FACTORIES and ":" not in name:
        raise unknown_segmenter(name)
    return list(_FILES[name]()) if name in _FILES else []


def list_segmenters() -> dict[str, str]:
    """Registered segmenter names, sorted, each with its description."""
    return {name: _DESCRIPTIONS[name] for name in sorted(_FACTORIES)}


def load_segmenter(name: str, weights: str | None = None, progress: bool = True) -> Segmenter:
    """A registered segmenter by name, or ``package.module:callable``."""
    factory = _FACTORIES.get(name)
    if factory is not None:
        return factory(weights, progress)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            mod = import_user_module(module_name)
        except ImportError as exc:
            raise DissectError(f"cannot import {module_name!r} for segmenter {name}: {exc}; "
                               "make sure it is on PYTHONPATH") from exc
        fn = getattr(mod, attr, None)
        if fn is None or not callable(fn):
            raise DissectError(f"{name}: {module_name} has no callable {attr!r}")
        return as_segmenter(fn(), name)
    raise unknown_segmenter(name)


def unknown_segmenter(name: str) -> DissectError:
    """The error for a segmenter name that is neither registered nor ``package.module:callable``."""
    return unknown_choice("segmenter", name, list_segmenters(),
                          hint="or give your own as package.module:callable")


def segmenter_key(seg: Segmenter) -> str:
    """What identifies a segmenter's labels (for caches)."""
    blob = json.dumps([seg.name, seg.weights_sha256, list(seg.layers), list(seg.concepts)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
