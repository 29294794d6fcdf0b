"""Which registered model a state dict belongs to: for the error a wrong checkpoint gets.

:func:`closest_models` compares a state dict's keys and shapes with those of every
registered model, built on PyTorch's ``meta`` device (shapes only: no memory, no
initialization cost), so that "these weights do not fit vgg16-places365" can go on with
"they look like the weights of vgg16".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch
from torch import Tensor

from dissect.models.registry import ModelSpec, get_model_spec, list_models

MIN_SCORE = 0.9  # the fraction of keys (with their shapes) two layouts must share to look alike


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith(".num_batches_tracked")}


@lru_cache(maxsize=None)
def _default_layout(name: str) -> dict[str, tuple[int, ...]]:
    """The key shapes of registered model ``name`` as its builder makes it (cached: a
    model's default layout does not change)."""
    spec = get_model_spec(name)
    with torch.device("meta"):
        return _shapes(spec.builder(spec.num_classes).state_dict())


def _layout(spec: ModelSpec, state: Mapping[str, Tensor]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(the model's key shapes, the state's key shapes as the model would read them)."""
    fixed = dict(state)
    if spec.ignore_keys:
        fixed = {k: v for k, v in fixed.items() if not k.startswith(spec.ignore_keys)}
    if spec.fix_state_dict is not None:
        fixed = spec.fix_state_dict(fixed)
    if spec.builder_for_state is None:
        return _default_layout(spec.name), _shapes(fixed)
    with torch.device("meta"):
        return _shapes(spec.builder_for_state(fixed).state_dict()), _shapes(fixed)


def closest_models(state: Mapping[str, Tensor], exclude: str | None = None) -> list[str]:
    """The registered models (other than ``exclude``) whose layout ``state`` fits best, tied
    ones together: keys with the same shape, as a fraction of the larger of the two key sets
    (a key of another shape, e.g. another number of classes, counts half); empty when none
    shares at least :data:`MIN_SCORE`, or when ``exclude`` (the model the weights were
    given to) fits as well (then the layout is right, and something else is wrong)."""
    scores: dict[str, float] = {}
    for name in list_models():
        try:
            own, theirs = _layout(get_model_spec(name), state)
        except Exception:  # a builder that cannot run on the meta device, or on this state: skip it
            continue
        if not own or not theirs:
            continue
        same = sum(1 for k, shape in own.items() if theirs.get(k) == shape)
        named = sum(1 for k in own if k in theirs)
        scores[name] = (same + 0.5 * (named - same)) / max(len(own), len(theirs))
    own_score = scores.pop(exclude, 0.0) if exclude else 0.0
    best = max(scores.values(), default=0.0)
    if best < MIN_SCORE or own_score >= best:
        return []
    return [name for name, score in scores.items() if score == best]


def lookalike_hint(state: Mapping[str, Tensor], exclude: str | None = None) -> str:
    """``"; they look like the weights of model X (--model X)"``, or "" when none does."""
    names = closest_models(state, exclude)
    if not names:
        return ""
    more = f" (or {len(names) - 1} more of the same layout)" if len(names) > 1 else ""
    return f"; they look like the weights of model {names[0]}{more} (--model {names[0]})"
