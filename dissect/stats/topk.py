"""Top-k images per unit by maximum activation, with the unit's map for each."""

from __future__ import annotations

import torch


class TopK:
    """Keeps, per unit, the ``k`` images with the largest maximum activation.

    Ties go to the lower image index, so the result does not depend on batching.
    Along with each image's score it keeps that unit's activation map (``h x w``) so
    unit images can be drawn without running the model again.
    """

    def __init__(self, num_units: int, k: int, map_shape: tuple[int, int],
                 device: torch.device | str = "cpu"):
        self.k = k
        self.num_units = num_units
        self.device = torch.device(device)
        self.values = torch.empty((num_units, 0), device=self.device)
        self.indices = torch.empty((num_units, 0), dtype=torch.long, device=self.device)
        self.maps = torch.empty((num_units, 0, *map_shape), device=self.device)

    def add(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        """``acts``: ``[B, units, h, w]``; ``indices``: ``[B]`` global image indices (increasing)."""
        acts = acts.detach().to(self.device, torch.float32)
        score = acts.flatten(2).max(dim=2).values.t()                   # [units, B]
        if self.values.shape[1] == self.k and not (score > self.values[:, -1:]).any():
            return  # nothing beats any unit's current k-th image (ties go to lower indices)
        # the batch's own best k per unit first (a stable sort keeps lower indices first
        # on ties, as indices increase along the batch), so only 2k maps are merged
        keep = torch.argsort(score, dim=1, descending=True, stable=True)[:, : self.k]
        score = score.gather(1, keep)
        idx = indices.to(self.device)[keep]
        unit = torch.arange(self.num_units, device=self.device).unsqueeze(1)
        maps = acts[keep, unit]                                         # [units, k, h, w]
        self._fold(score, idx, maps)

    def _fold(self, score, idx, maps) -> None:
        values = torch.cat([self.values, score], dim=1)
        indices = torch.cat([self.indices, idx], dim=1)
        allmaps = torch.cat([self.maps, maps], dim=1)
        # order by index first, then a stable sort on value keeps lower index first on ties
        o1 = torch.argsort(indices, dim=1, stable=True)
        values, indices = values.gather(1, o1), indices.gather(1, o1)
        o2 = torch.argsort(values, dim=1, descending=True, stable=True)[:, : self.k]
        order = o1.gather(1, o2)
        self.values = values.gather(1, o2)
        self.indices = indices.gather(1, o2)
        gidx = order.view(*order.shape, 1, 1).expand(-1, -1, *allmaps.shape[2:])
        self.maps = allmaps.gather(1, gidx)

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "indices": self.indices.cpu(), "maps": self.maps.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.values = state["values"].to(self.device)
        self.indices = state["indices"].to(self.device)
        self.maps = state["maps"].to(self.device)

    def merge(self, other: "TopK") -> None:
        self._fold(other.values.to(self.device), other.indices.to(self.device),
                   other.maps.to(self.device))
