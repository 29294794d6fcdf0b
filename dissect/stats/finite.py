"""Non-finite activations (NaN, +inf, -inf), found as they are tallied.

A NaN compares false with everything, so a quantile, a top-k or an IoU over it is silently
wrong (a threshold of NaN makes a unit look dead; +inf makes it look constant). Every batch
of activations goes through :meth:`FiniteCheck.check` before it is tallied:

* policy ``"error"`` (the default): the first batch holding one stops the run with one line
  naming the layer, the units and the first images concerned;
* policy ``"invalid"``: the units that ever hold one are recorded (:meth:`FiniteCheck.units`)
  and reported as invalid, with no threshold, IoU or label; their non-finite values are
  replaced by 0 before tallying, so that the other units' statistics stay exact (a unit's
  statistics never depend on another unit's values).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import DissectError

NONFINITE_POLICIES = ("error", "invalid")
_SHOWN = 8   # units and images named in the error


class FiniteCheck:
    """Watches every batch of activations of a dissection for non-finite values.

    ``image_name(i)`` names the probe image at dataset position ``i`` (for the message).
    """

    def __init__(self, policy: str, image_name: Callable[[int], str]):
        if policy not in NONFINITE_POLICIES:
            raise DissectError(f"--nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {policy!r}")
        self.policy = policy
        self.image_name = image_name
        self._units: dict[str, set[int]] = {}

    def check(self, acts: dict[str, torch.Tensor], positions: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
        """``acts`` (per layer, ``[B, units, h, w]``) of the images at dataset ``positions``,
        with non-finite values replaced by 0 under policy ``invalid``; raises under ``error``."""
        out = {}
        for layer, a in acts.items():
            if a.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(a))).all()):
                out[layer] = a     # the usual case, in one reduction: aminmax passes NaN and infinities on
                continue
            finite = torch.isfinite(a)
            bad = ~finite
            units = bad.flatten(2).any(dim=2).any(dim=0).nonzero().flatten().tolist()
            images = bad.flatten(1).any(dim=1).nonzero().flatten().tolist()
            if self.policy == "error":
                pos = [int(positions[i]) for i in images[:_SHOWN]]
                names = ", ".join(self.image_name(p) for p in pos)
                more_u = f" and {len(units) - _SHOWN} more" if len(units) > _SHOWN else ""
                more_i = f" and {len(images) - _SHOWN} more in this batch" if len(images) > _SHOWN else ""
                raise DissectError(
                    f"layer {layer!r} gives non-finite activations (NaN or infinity) in unit(s) "
                    f"{', '.join(map(str, units[:_SHOWN]))}{more_u} on image(s) {names}{more_i}; "
                    "check the model and its weights, or pass --nonfinite invalid to report "
                    "those units as invalid")
            self._units.setdefault(layer, set()).update(units)
            out[layer] = torch.where(finite, a, torch.zeros((), dtype=a.dtype, device=a.device))
        return out

    def units(self, layer: str) -> list[int]:
        """The units of ``layer`` that held a non-finite value (policy ``invalid``), sorted."""
        return sorted(self._units.get(layer, ()))
