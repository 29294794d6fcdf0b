"""The segmenter interface: images in, per-pixel label numbers over named concepts out.

* ``concepts``: the concepts it can name, as ``(name, category)`` pairs; concept ``i`` of the
  list is label number ``i + 1`` (0 = no label), the Broden convention;
* ``layers``: the category of each label layer it outputs (e.g. ``["object", "part",
  "color"]``); a pixel can hold one concept per layer;
* ``segment(images)``: images ``[N, 3, H, W]`` float in [0, 1] -> label numbers
  ``[N, len(layers), H, W]`` int64 at the same size.

A user's segmenter need not subclass :class:`Segmenter`: :func:`as_segmenter` checks a
duck-typed one and gives it the helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dissect.errors import DissectError, unknown_choice


class Segmenter:
    """Base class: subclasses set ``name``, ``concepts`` and ``layers`` and implement
    :meth:`segment`."""

    name: str = "segmenter"
    concepts: list[tuple[str, str]] = []
    layers: list[str] = []
    weights_sha256: str | None = None

    def segment(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        """Label numbers ``[N, len(layers), H, W]`` for images ``[N, 3, H, W]`` in [0, 1]."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Segmenter":
        """Move the segmenter's network (if any) to ``device``; returns the segmenter."""
        return self

    # ------------------------------------------------------------------ helpers
    def number(self, concept: str) -> int:
        """Label number of ``concept`` (a name, or ``name-category`` never needed here)."""
        for i, (name, _) in enumerate(self.concepts):
            if name == concept:
                return i + 1
        raise unknown_choice("concept", concept, [n for n, _ in self.concepts],
                             where=f"of segmenter {self.name!r}")

    def category_of(self, concept: str) -> str:
        """The category of ``concept``."""
        return self.concepts[self.number(concept) - 1][1]

    def layer_of(self, concept: str) -> int:
        """Index of the output layer that holds ``concept``."""
        return self.layers.index(self.category_of(concept))

    def provenance(self) -> dict:
        """What a report records about the segmenter (JSON-serializable)."""
        return {"name": self.name, "layers": list(self.layers), "num_concepts": len(self.concepts),
                "weights_sha256": self.weights_sha256}


def as_segmenter(obj: Any, target: str) -> Segmenter:
    """``obj`` (named ``target`` in errors) checked to be a segmenter; a duck-typed one is
    wrapped in a :class:`Segmenter` so that it has the helpers."""
    for attr in ("concepts", "layers", "segment"):
        if not hasattr(obj, attr):
            raise DissectError(f"segmenter {target} has no {attr!r}: it must provide concepts "
                               "[(name, category)], layers [category] and segment(images)")
    cats = {c for _, c in obj.concepts}
    if not obj.concepts or not obj.layers or not cats <= set(obj.layers):
        raise DissectError(f"segmenter {target}: every concept's category must be one of its "
                           f"layers ({list(obj.layers)}), and it needs at least one concept")
    if not isinstance(obj, Segmenter):  # give duck-typed segmenters the helpers
        wrapped = Segmenter()
        wrapped.name = target
        wrapped.concepts = [tuple(c) for c in obj.concepts]
        wrapped.layers = list(obj.layers)
        wrapped.segment = obj.segment  # type: ignore[method-assign]
        if hasattr(obj, "to"):
            wrapped.to = lambda d: (obj.to(d), wrapped)[1]  # type: ignore[method-assign]
        return wrapped
    return obj
