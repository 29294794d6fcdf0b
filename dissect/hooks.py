"""Addressing and intercepting the modules of a model.

:class:`Trace` records the outputs of named modules during a forward pass; :class:`Intervene`
replaces or edits them (ablation, insertion). Both see a layer's output as a map of units
``[N, C, H, W]`` whatever the layer's own layout (token sequences, channels-last; see
:mod:`dissect.feature_maps`), and an edit is written back in the layer's layout. Both register on ``__enter__`` and remove
every handle on ``__exit__``, even when an exception flies, and both nest.
:func:`split_tail` cuts a model after a layer, so that the rest of the network can run on
edited activations without the part before the layer.

A module that runs more than once per forward pass (one activation object reused at the
stem and the head) is named one call at a time: ``NAME#K`` is its K-th call (1-based) in each
call of the model (:func:`split_call`). Hooks on ``NAME#K`` act on that call only (they
count the module's calls from the start of each call of the model); a hook on a plain
``NAME`` sees every call, so name a module that runs several times with ``#K``
(:func:`dissect.models.resolve_layer` refuses it otherwise).
"""

from __future__ import annotations

import operator
from typing import Callable, Iterable

import torch
import torch.fx
from torch import nn

from .errors import DissectError, unknown_choice
from .feature_maps import MapLayout, infer_layout


def split_call(name: str) -> tuple[str, int | None]:
    """``"_swish#2"`` -> ``("_swish", 2)``; ``"features.3"`` -> ``("features.3", None)``."""
    base, sep, k = name.rpartition("#")
    if not sep:
        return name, None
    if not base or not k.isdigit() or int(k) < 1:
        raise DissectError(f"layer {name!r}: write NAME#K with K a call number from 1 "
                           "(see `dissect layers MODEL`)")
    return base, int(k)


def call_name(name: str, call: int | None) -> str:
    """The layer name of call ``call`` of ``name`` (``name`` itself for None)."""
    return name if call is None else f"{name}#{call}"


def get_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at dotted ``path`` (``path#K`` names the same module); unknown
    paths list the valid ones."""
    base, _ = split_call(path)
    modules = dict(model.named_modules(remove_duplicate=False))   # a module shared by two paths: both
    if base not in modules or base == "":
        raise unknown_choice("layer", base, [n for n in modules if n])
    return modules[base]


class _CallCounter:
    """Which call of a module this is, for a layer named ``NAME#K``: calls are counted from
    the start of each call of ``model`` (by a forward pre-hook on it)."""

    def __init__(self, model: nn.Module, call: int):
        self.call = call
        self.seen = 0
        self._handle = model.register_forward_pre_hook(self._start)

    def _start(self, module, inputs) -> None:
        self.seen = 0

    def wanted(self) -> bool:
        """Count one call of the module; True when it is call K."""
        self.seen += 1
        return self.seen == self.call

    def remove(self) -> None:
        self._handle.remove()


def _counter(model: nn.Module, name: str) -> _CallCounter | None:
    """A :class:`_CallCounter` for ``NAME#K``; None for a plain name (every call)."""
    call = split_call(name)[1]
    return _CallCounter(model, call) if call is not None else None


class StopForward(Exception):
    """Raised by a :class:`Trace` with ``stop=True`` once every traced layer has run."""


class Trace:
    """Record the outputs of one or more layers.

    >>> with Trace(model, ["features.29"]) as tr:
    ...     model(x)
    >>> tr["features.29"]   # a detached clone of that layer's output

    With ``stop=True`` the forward pass is cut short (by :class:`StopForward`, caught on
    exit) once all traced layers have produced output, which saves the rest of the network.
    ``NAME#K`` records the K-th call of a module that runs several times (and stops after it).
    Outputs are cloned so that a later in-place op (``ReLU(inplace=True)``) cannot change
    them. They are read as maps ``[N, C, H, W]`` (``tr.layouts[name]`` says how, see
    :mod:`dissect.feature_maps`); ``maps=False`` keeps them as the layer gave them.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], stop: bool = False,
                 detach: bool = True, maps: bool = True):
        self.model = model
        self.layers = list(layers)
        self.modules = [get_module(model, name) for name in self.layers]
        self.stop = stop
        self.detach = detach
        self.maps = maps
        self.outputs: dict[str, torch.Tensor] = {}
        self.layouts: dict[str, MapLayout] = {}
        self._handles: list = []

    def _hook(self, name: str, counter: _CallCounter | None):
        def hook(module, inputs, output):
            if counter is not None and not counter.wanted():
                return
            if not isinstance(output, torch.Tensor):
                raise DissectError(f"layer {name!r} returns a {type(output).__name__}, not one tensor; "
                                   "choose a layer that returns a feature map, e.g. one of its "
                                   "submodules (see `dissect layers MODEL`)")
            out = output.detach() if self.detach else output
            layout = infer_layout(out.shape) if self.maps else MapLayout("other")
            self.layouts[name] = layout
            self.outputs[name] = layout.to_map(out).clone()
            if self.stop and len(self.outputs) == len(self.layers):
                raise StopForward()
        return hook

    def __enter__(self) -> "Trace":
        self.outputs = {}
        try:
            for name, module in zip(self.layers, self.modules):
                counter = _counter(self.model, name)
                if counter is not None:
                    self._handles.append(counter)
                self._handles.append(module.register_forward_hook(self._hook(name, counter)))
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

    ``edit(output) -> new_output`` is applied to the layer's output read as a map ``[N, C,
    H, W]`` (:mod:`dissect.feature_maps`), and the result is written back in the layer's own
    layout (a class token kept as it was); everything after the layer runs as usual.
    ``NAME#K`` edits only the K-th call of a module that runs several times. Use
    :func:`ablate` and :func:`set_units` for the common cases.
    """

    def __init__(self, model: nn.Module, layer: str, edit: Callable[[torch.Tensor], torch.Tensor]):
        self.model = model
        self.module = get_module(model, layer)
        self.layer = layer
        self.edit = edit
        self._handle = None
        self._counter: _CallCounter | None = None

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if self._counter is not None and not self._counter.wanted():
            return None
        layout = infer_layout(output.shape)
        if layout.identity:
            return self.edit(output)
        return layout.from_map(self.edit(layout.to_map(output)), output)

    def __enter__(self) -> "Intervene":
        self._counter = _counter(self.model, self.layer)
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for h in (self._handle, self._counter):
            if h is not None:
                h.remove()
        self._handle = self._counter = None
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


class _LeafTracer(torch.fx.Tracer):
    """An fx tracer that keeps the layer to split at as one call (its output = the node's)."""

    def __init__(self, leaf: nn.Module):
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return m is self.leaf or super().is_leaf_module(m, qualname)


def split_tail(model: nn.Module, layer: str) -> tuple[nn.Module | None, str]:
    """The part of ``model`` after ``layer``, as a module ``tail(activation) -> output``.

    Traces the model with ``torch.fx`` (the layer kept as one call) and keeps what the output
    needs after the layer; ``NAME#K`` splits after the K-th call of a module that runs several
    times. Returns ``(tail, "split (torch.fx)")``, or ``(None, reason)`` when
    the graph cannot be split: tracing fails, a plain name runs more than once, or the network
    after the layer also reads values computed before it (a skip connection around it). The
    batch size read from the input (``x.size(0)``, ``x.shape[0]``, as in ``out.view(bs, -1)``)
    is not such a value: the tail reads it from the activation, whose first dimension it is too.
    """
    module = get_module(model, layer)
    _, call = split_call(layer)
    tracer = _LeafTracer(module)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types on untraceable code; any of them means "fall back"
        first = (str(e).strip().splitlines() or [""])[0][:120]
        return None, f"full forward (torch.fx could not trace the model: {type(e).__name__}: {first})"
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and model.get_submodule(n.target) is module]
    if call is None and len(calls) != 1 or call is not None and not 1 <= call <= len(calls):
        return None, f"full forward (the layer is called {len(calls)} times in the traced graph)"
    at = calls[(call or 1) - 1]
    inputs = {n for n in nodes if n.op == "placeholder"}
    batch = {n for n in nodes if _is_batch_size(n, inputs)}
    from_input: set = set()
    from_layer: set = {at}
    for n in nodes:
        if n in batch:
            continue
        ins = n.all_input_nodes
        if n.op == "placeholder" or any(i in from_input for i in ins):
            from_input.add(n)
        if n is not at and any(i in from_layer for i in ins):
            from_layer.add(n)
    output = next(n for n in nodes if n.op == "output")
    needed, stack = set(), [output]
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        if n is not at and n not in batch:
            stack.extend(n.all_input_nodes)
    if at not in needed:
        return None, "full forward (the model's output does not depend on the layer)"
    if any(n in from_input and n not in from_layer for n in needed):
        return None, "full forward (the network after the layer also reads earlier values, e.g. a skip connection)"
    new = torch.fx.Graph()
    env = {at: new.placeholder("activation")}
    for n in nodes:
        if n in needed and n in batch:
            env[n] = new.call_method("size", (env[at], 0))
        elif n in needed and n is not at:
            env[n] = new.node_copy(n, lambda a: env[a])
    tail = torch.fx.GraphModule(tracer.root, new, class_name="Tail")
    tail.train(model.training)
    return tail, "split (torch.fx)"


def _is_batch_size(n: torch.fx.Node, inputs: set) -> bool:
    """Whether fx node ``n`` is the batch size of a model input: ``x.size(0)`` or ``x.shape[0]``."""
    if n.op == "call_method" and n.target == "size" and n.args and n.args[0] in inputs:
        return (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")) == 0
    if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2 and n.args[1] == 0:
        src = n.args[0]
        return (isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target is getattr
                and src.args[0] in inputs and src.args[1] == "shape")
    return False


def pools_first(tail: nn.Module | None) -> bool:
    """True when a :func:`split_tail` tail reads the layer's activation only through a global
    average pool (``AdaptiveAvgPool2d(1)``, as ResNets and the toy classifier end): then
    ``tail(a * mask) == tail(pool(a) * mask)`` for a per-unit 0/1 ``mask``, and an ablation
    can keep one number per unit and image instead of a whole map."""
    graph = getattr(tail, "graph", None)
    if graph is None:
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    # the batch size the tail reads from the activation (split_tail) is the pooled map's too
    users = [u for u in inputs[0].users if not (u.op == "call_method" and u.target == "size")]
    if len(users) != 1:
        return False
    (user,) = users
    if user.op == "call_module":
        mod = tail.get_submodule(user.target)
        size = mod.output_size if isinstance(mod, nn.AdaptiveAvgPool2d) else None
    elif user.op == "call_function" and user.target is torch.nn.functional.adaptive_avg_pool2d:
        size = user.args[1] if len(user.args) > 1 else user.kwargs.get("output_size")
    else:
        return False
    return size in (1, (1, 1), [1, 1]) and user.args[0] is inputs[0]
