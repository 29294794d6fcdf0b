"""One layer's activations computed once, the rest of the network re-run many times.

Both interventions of METHOD.md work this way: the classifier ablation (section 2: many
unit masks over one set of images) and the generator interventions (section 3: many edits of
one batch of latents). :class:`LayerRunner` is the shared part; each experiment's runner
adds only what is its own (:class:`~dissect.experiments.ablation.AblationRunner`: class
labels and balanced accuracy; :class:`~dissect.experiments.generator.GeneratorRunner`:
images and their value range).

What an experiment removes or sets is a set of :class:`Directions` of the layer's unit space:
its units (each unit's value along its own axis, the paper's experiments) or the features of
a basis (:mod:`dissect.bases`: a feature's code at each position along its decoder
direction), so that one runner serves both.

The network is split after the layer with :func:`~dissect.hooks.split_tail`, so that a re-run
costs only the part after the layer. Where the graph cannot be split, every re-run is a full
forward pass of the inputs with the layer's output edited by an
:class:`~dissect.hooks.Intervene` hook instead: the results are the same, only slower.

Activations are maps ``[N, C, H, W]`` (:mod:`dissect.feature_maps`); the tail is given them
back in the layer's own layout (channels-last, tokens). A layer with a class token is always
re-run by full forward passes, which keep each image's own class token.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import DissectError
from ..feature_maps import MapLayout
from ..hooks import Intervene, Trace, split_tail


class Directions:
    """The directions of a layer's unit space that an experiment removes or sets.

    ``encode`` (a map ``[N, C, H, W]`` -> codes ``[N, F, H, W]``, a basis's encoder at each
    position) and ``decoder`` (``[F, C]``, each feature's direction in the unit space) for a
    basis's features; neither for the units themselves (a unit's code is its value, its
    direction its axis). Removing a set ``S`` of features from a map is
    ``a' = a - sum_{f in S} z_f(a) d_f`` at each position; for the units that is zeroing them.
    The edit is per position and linear in the codes, so a global average pool after it is
    the pool of the codes: ``pool(a') = pool(a) - sum_{f in S} pool(z_f) d_f``.
    """

    def __init__(self, encode: Callable[[Tensor], Tensor] | None = None, decoder: Tensor | None = None):
        if (encode is None) != (decoder is None):
            raise ValueError("Directions: give both an encoder and a decoder, or neither (the units)")
        self.encode, self.decoder = encode, decoder

    @property
    def units(self) -> bool:
        return self.decoder is None

    def count(self, units: int) -> int:
        """How many directions there are in a layer of ``units`` units."""
        return units if self.decoder is None else int(self.decoder.shape[0])

    def codes(self, a: Tensor) -> Tensor | None:
        """The codes ``[N, F, ...]`` of maps ``a`` ``[N, C, ...]`` (None for the units: ``a``)."""
        return None if self.decoder is None else self.encode(a).to(a.dtype)

    def keep(self, a: Tensor, z: Tensor | None, keep: Tensor) -> Tensor:
        """``a`` ``[B, C, ...]`` (codes ``z`` ``[B, F, ...]``) with the directions where
        ``keep`` ``[B, F]`` is 0 removed (1: kept)."""
        k = keep.to(a.dtype).view(*keep.shape, *([1] * (a.dim() - 2)))
        if self.decoder is None:
            return a * k
        return a - torch.einsum("bf...,fc->bc...", (1 - k) * z, self.decoder.to(a))

    def set(self, a: Tensor, z: Tensor | None, which: Tensor, values: Tensor, where: Tensor | None = None) -> Tensor:
        """``a`` ``[B, C, H, W]`` with the codes of directions ``which`` set to ``values`` (one
        per direction), where ``where`` (broadcastable to ``[B, 1, H, W]``, bool) holds, else
        everywhere: for the units, their values; for features, ``a + sum_f (v_f - z_f) d_f``."""
        which = which.to(a.device)
        v = values.to(a).view(1, -1, *([1] * (a.dim() - 2)))
        if self.decoder is None:
            out = a.clone()
            sel = out[:, which]
            out[:, which] = torch.broadcast_to(v, sel.shape) if where is None else torch.where(where.to(a.device), v, sel)
            return out
        delta = v - z[:, which]
        if where is not None:
            delta = delta * where.to(a)
        return a + torch.einsum("bf...,fc->bc...", delta, self.decoder.to(a)[which])


#: The layer's units (the default of every experiment).
UNITS = Directions()


class LayerRunner:
    """The network ``model`` around ``layer``: the layer's output, and re-runs from it.

    ``tail_from``: another runner on the same model and layer whose split is reused (two
    splits of one labeled set share one tail). ``method`` says how re-runs are made:
    ``"split (torch.fx)"``, or ``"full forward (<why the graph could not be split>)"``.
    """

    def __init__(self, model: nn.Module, layer: str, device: torch.device | str,
                 tail_from: LayerRunner | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.layer = layer
        self.layout: MapLayout | None = None   # known after the first layer_output
        if tail_from is not None:
            self.tail, self.method, self.layout = tail_from.tail, tail_from.method, tail_from.layout
        else:
            tail, self.method = split_tail(self.model, layer)
            self.tail = tail.to(self.device) if tail is not None else None

    def layer_output(self, inputs: Tensor, stop: bool = True) -> Tensor:
        """The layer's output for ``inputs`` (on the runner's device) as a float32 map;
        ``stop`` cuts the forward pass short once the layer has run."""
        with Trace(self.model, [self.layer], stop=stop) as tr:
            self.model(inputs)
        if self.layer not in tr.outputs:
            raise DissectError(f"layer {self.layer!r} did not run in the model's forward pass")
        if self.layout is None:
            self.layout = tr.layouts[self.layer]
            if self.layout.class_tokens and self.tail is not None:
                self.tail = None
                self.method = "full forward (the layer's class token is kept from each image's own pass)"
        return tr[self.layer].float()

    def rerun(self, edited: Tensor | None, inputs: Tensor | None = None,
              edit: Callable[[Tensor], Tensor] | None = None) -> Any:
        """The network's output with the layer's output edited.

        Split: ``tail(edited)``, the edited activations. Not split: a full forward pass of
        ``inputs`` (what the activations were computed from) with the layer's output replaced
        by ``edited``, or by ``edit(output)`` when given (for a caller whose edits are laid out
        in another batch order in the two cases, and which then passes only what its case
        needs). Call it under ``torch.no_grad()`` or ``torch.inference_mode()``.
        """
        if self.tail is not None:
            return self.tail(self.layout.from_map(edited) if self.layout is not None else edited)
        if edit is None:
            def edit(output: Tensor) -> Tensor:
                return edited.to(output.device, output.dtype)
        with Intervene(self.model, self.layer, edit):
            return self.model(inputs)
