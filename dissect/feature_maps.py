"""How a layer's output is read as a map of units ``[N, C, H, W]``, and written back.

Convolutional layers give maps already. Transformers give token sequences ``[N, T, C]``
(ViT: a class token then one token per patch, in row-major order of the patch grid), and
some networks keep their maps channels-last ``[N, H, W, C]`` (torchvision's Swin). A
:class:`MapLayout` says which, converts an output to a map (:meth:`MapLayout.to_map`) and an
edited map back to the layer's own layout (:meth:`MapLayout.from_map`, the class token
kept as it was), so that dissection reads and ablation switches off units the same way on
every architecture. :func:`infer_layout` tells the layout from an output's shape;
:class:`dissect.hooks.Trace` and :class:`dissect.hooks.Intervene` apply it where layer
outputs are read and edited, the one place this happens.

Rules (:func:`infer_layout`): a 4-D output is a map unless its dimensions 1 and 2 are equal
and the last differs (``[N, 7, 7, 768]``: channels-last); a 3-D output ``[N, T, C]`` is a
token sequence when ``T`` is a square (``g x g`` patches) or a square plus one (a class
token first, dropped); anything else (``[N, C]`` vectors) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MapLayout:
    """One layer output's layout: ``map`` (``[N, C, H, W]``, nothing to do), ``tokens``
    (``[N, T, C]`` with ``class_tokens`` leading tokens and a ``grid`` of patches),
    ``channels_last`` (``[N, H, W, C]``) or ``other`` (left as it is)."""

    kind: str = "map"
    grid: tuple[int, int] | None = None
    class_tokens: int = 0
    raw_shape: tuple[int, ...] = ()     # the output's shape without the batch dimension

    @property
    def identity(self) -> bool:
        return self.kind in ("map", "other")

    def to_map(self, out: torch.Tensor) -> torch.Tensor:
        """The output as ``[N, C, H, W]`` (a view where possible)."""
        if self.kind == "tokens":
            h, w = self.grid
            patches = out[:, self.class_tokens:, :]
            return patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        if self.kind == "channels_last":
            return out.permute(0, 3, 1, 2)
        return out

    def from_map(self, maps: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """A map ``[N, C, H, W]`` in the layer's own layout; ``like`` (the original output)
        gives the class tokens, which no unit map holds and which are kept unchanged."""
        if self.kind == "tokens":
            tokens = maps.flatten(2).transpose(1, 2)
            if not self.class_tokens:
                return tokens
            if like is None:
                raise ValueError("from_map: the class token comes from the original output; pass like=")
            return torch.cat([like[:, :self.class_tokens, :].to(tokens.dtype), tokens], 1)
        if self.kind == "channels_last":
            return maps.permute(0, 2, 3, 1)
        return maps

    def describe(self) -> str:
        """How the layer was read, for the report ("" for a plain map)."""
        if self.kind == "tokens":
            t, c = self.raw_shape
            h, w = self.grid
            dropped = {0: "", 1: ", class token dropped"}.get(self.class_tokens, f", {self.class_tokens} class tokens dropped")
            return f"tokens {t}x{c} -> {h}x{w} map{dropped}"
        if self.kind == "channels_last":
            h, w, c = self.raw_shape
            return f"channels-last {h}x{w}x{c} transposed to {c}x{h}x{w}"
        return ""


def _square(n: int) -> int | None:
    g = math.isqrt(n) if n > 0 else 0
    return g if g >= 2 and g * g == n else None


def infer_layout(shape: tuple[int, ...] | torch.Size) -> MapLayout:
    """The layout of an output of ``shape`` (with its batch dimension); see the module doc."""
    shape = tuple(int(s) for s in shape)
    rest = shape[1:]
    if len(shape) == 4:
        _, a, b, c = shape
        if a == b and c != b:
            return MapLayout("channels_last", (a, b), 0, rest)
        return MapLayout("map", (b, c), 0, rest)
    if len(shape) == 3:
        t = shape[1]
        for class_tokens in (0, 1):
            g = _square(t - class_tokens)
            if g is not None:
                return MapLayout("tokens", (g, g), class_tokens, rest)
    return MapLayout("other", None, 0, rest)
