"""Hooks into models, as context managers that own their handles.

:class:`Trace` records the outputs of named modules during a forward pass; :class:`Intervene`
replaces or edits them (ablation, insertion). Both register on ``__enter__`` and remove
every handle on ``__exit__``, even when an exception flies, and both nest.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .errors import unknown_choice


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at dotted ``path``; unknown paths list the valid ones."""
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        raise unknown_choice("layer", path, [n for n in modules if n])
    return modules[path]


class StopForward(Exception):
    """Raised by a :class:`Trace` with ``stop=True`` once every traced layer has run."""


class Trace:
    """Record the outputs of one or more layers.

    >>> with Trace(model, ["features.29"]) as tr:
    ...     model(x)
    >>> tr["features.29"]   # a detached clone of that layer's output

    With ``stop=True`` the forward pass is cut short (by :class:`StopForward`, caught on
    exit) once all traced layers have produced output, which saves the rest of the network.
    Outputs are cloned so that a later in-place op (``ReLU(inplace=True)``) cannot change
    them.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], stop: bool = False,
                 detach: bool = True):
        self.model = model
        self.layers = list(layers)
        self.modules = [get_module(model, name) for name in self.layers]
        self.stop = stop
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            out = output.detach() if self.detach else output
            self.outputs[name] = out.clone()
            if self.stop and len(self.outputs) == len(self.layers):
                raise StopForward()
        return hook

    def __enter__(self) -> "Trace":
        self.outputs = {}
        try:
            for name, module in zip(self.layers, self.modules):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.outputs[name]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return exc_type is not None and issubclass(exc_type, StopForward)


class Intervene:
    """Edit a layer's output during the forward pass.

    ``edit(output) -> new_output`` is applied to the layer's output; everything after the
    layer runs as usual. Use :func:`ablate` and :func:`set_units` for the common cases.
    """

    def __init__(self, model: nn.Module, layer: str, edit: Callable[[torch.Tensor], torch.Tensor]):
        self.module = get_module(model, layer)
        self.layer = layer
        self.edit = edit
        self._handle = None

    def __enter__(self) -> "Intervene":
        self._handle = self.module.register_forward_hook(lambda m, i, o: self.edit(o))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False


def ablate(model: nn.Module, layer: str, units: Iterable[int]) -> Intervene:
    """Zero the given units (channels) of ``layer`` for the whole forward pass."""
    idx = torch.as_tensor(sorted(set(int(u) for u in units)), dtype=torch.long)

    def edit(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, idx.to(out.device)] = 0
        return out

    return Intervene(model, layer, edit)


def set_units(model: nn.Module, layer: str, units: Iterable[int], values, mask=None) -> Intervene:
    """Set the given units of ``layer`` to ``values`` (scalar or one per unit), optionally
    only where ``mask`` (broadcastable to the spatial map, 1 = set) is true. Per-unit values
    follow the order of ``units``."""
    order = [int(u) for u in units]
    if len(set(order)) != len(order):
        raise ValueError(f"set_units: a unit is listed twice in {order}")
    idx = torch.as_tensor(order, dtype=torch.long)
    vals = torch.as_tensor(values, dtype=torch.float32)

    def edit(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        v = vals.to(out.device, out.dtype)
        v = v.view(-1, *([1] * (out.dim() - 2))) if v.dim() == 1 else v
        sel = out[:, idx.to(out.device)]
        if mask is None:
            new = torch.broadcast_to(v, sel.shape)
        else:
            m = torch.as_tensor(mask, device=out.device, dtype=torch.bool)
            new = torch.where(m, v, sel)
        out[:, idx.to(out.device)] = new
        return out

    return Intervene(model, layer, edit)
