"""The per-unit top-quantile threshold ``T_k`` with ``P(a_k > T_k) = q``.

Two regimes, chosen once from the total number of values per unit ``n`` (known before the
pass, from the probe set's size):

* **exact** when the tail ``m = floor(q n) + 1`` values per unit fit the memory budget
  (``units * m <= max_values``): a running top-``m`` buffer per unit, so that
  ``T_k`` is exactly the ``m``-th largest value (``floor(q n)`` values lie strictly above it
  when there are no ties).
* **sketch** otherwise: a KLL-style compactor sketch (Karnin, Lang & Liberty 2016; the
  scheme of NetDissect's running quantile), vectorised over units, whose memory grows only
  with ``log(n)``. Rank error is about ``1 / capacity``; with the default capacity of
  8192 it stays well under 1e-3 (see ``tests/test_stats.py``).

Both regimes merge (``merge``) so shards can be combined; randomness is drawn from a seeded
generator so results are reproducible.
"""

from __future__ import annotations

import math

import torch


class TopQuantile:
    """Tallies values per unit and returns each unit's top-``q`` threshold.

    ``add`` takes a tensor of shape ``[units, n]`` (or ``[n, units]`` with
    ``units_last=True``).
    """

    def __init__(self, num_units: int, q: float, total_per_unit: int,
                 max_values: int = 32 * 1024 * 1024, capacity: int = 8192, seed: int = 1,
                 device: torch.device | str = "cpu"):
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        self.num_units = num_units
        self.q = q
        self.total = int(total_per_unit)
        self.tail = int(math.floor(q * self.total)) + 1
        self.exact = num_units * self.tail <= max_values
        self.capacity = capacity
        self.device = torch.device(device)
        self.count = 0
        self.min = torch.full((num_units,), math.inf, device=self.device)
        self.max = torch.full((num_units,), -math.inf, device=self.device)
        self.top = torch.empty((num_units, 0), device=self.device)  # exact mode
        self.levels: list[torch.Tensor] = []                          # sketch mode
        self._gen = torch.Generator(device="cpu").manual_seed(seed)

    # ---------------------------------------------------------------- adding data
    def add(self, values: torch.Tensor) -> None:
        """Add ``values`` of shape ``[units, n]``."""
        values = values.detach().to(self.device, torch.float32)
        if values.dim() != 2 or values.shape[0] != self.num_units:
            raise ValueError(f"expected [units={self.num_units}, n], got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        self.count += values.shape[1]
        self.min = torch.minimum(self.min, values.min(dim=1).values)
        self.max = torch.maximum(self.max, values.max(dim=1).values)
        if self.exact:
            if self.top.shape[1] == self.tail:
                # only values above a unit's current tail minimum can enter its tail
                above = values > self.top.min(dim=1).values.unsqueeze(1)
                counts = above.sum(dim=1)
                kmax = int(counts.max())
                if kmax == 0:
                    return
                if kmax < values.shape[1]:
                    # pack each unit's candidates into a [units, kmax] block padded with -inf
                    row, col = above.nonzero(as_tuple=True)      # row-major: grouped by unit
                    start = torch.cumsum(counts, 0) - counts
                    pos = torch.arange(row.numel(), device=row.device) - start[row]
                    packed = torch.full((self.num_units, kmax), -math.inf, device=values.device)
                    packed[row, pos] = values[row, col]
                    values = packed
            both = torch.cat([self.top, values], dim=1)
            if both.shape[1] > self.tail:
                both = torch.topk(both, self.tail, dim=1, sorted=False).values
            self.top = both
        else:
            self._push(0, values)

    def _push(self, level: int, values: torch.Tensor) -> None:
        while len(self.levels) <= level:
            self.levels.append(torch.empty((self.num_units, 0), device=self.device))
        buf = torch.cat([self.levels[level], values], dim=1)
        if buf.shape[1] <= self.capacity:
            self.levels[level] = buf
            return
        buf = torch.sort(buf, dim=1).values
        keep = buf.shape[1] % 2           # an odd item out stays at this level, weight intact
        self.levels[level] = buf[:, :keep]
        offset = int(torch.randint(0, 2, (1,), generator=self._gen))
        self._push(level + 1, buf[:, keep + offset::2])

    # ---------------------------------------------------------------- merging
    def merge(self, other: "TopQuantile") -> None:
        """Fold ``other`` (same units, q, total and regime) into this tally."""
        if (other.num_units, other.q, other.exact) != (self.num_units, self.q, self.exact):
            raise ValueError("cannot merge quantile tallies with different settings")
        self.count += other.count
        self.min = torch.minimum(self.min, other.min.to(self.device))
        self.max = torch.maximum(self.max, other.max.to(self.device))
        if self.exact:
            both = torch.cat([self.top, other.top.to(self.device)], dim=1)
            if both.shape[1] > self.tail:
                both = torch.topk(both, self.tail, dim=1, sorted=False).values
            self.top = both
        else:
            for level, buf in enumerate(other.levels):
                if buf.shape[1]:
                    self._push(level, buf.to(self.device))

    # ---------------------------------------------------------------- results
    def thresholds(self) -> torch.Tensor:
        """``T_k`` per unit: the value with ``floor(q n)`` values above it."""
        if self.count == 0:
            raise ValueError("no data")
        if self.exact:
            m = min(int(math.floor(self.q * self.count)) + 1, self.top.shape[1])
            return torch.topk(self.top, m, dim=1).values[:, -1]
        return self.quantiles(1.0 - self.q)

    def quantiles(self, p: float) -> torch.Tensor:
        """Sketch estimate of the ``p`` quantile per unit (sketch mode only)."""
        vals, weights = [], []
        for level, buf in enumerate(self.levels):
            vals.append(buf)
            weights.append(torch.full((buf.shape[1],), float(2 ** level), device=self.device,
                                      dtype=torch.float64))
        v = torch.cat(vals, dim=1)
        w = torch.cat(weights)
        order = torch.argsort(v, dim=1, stable=True)
        v = torch.gather(v, 1, order)
        cw = torch.cumsum(w[order], dim=1)
        total = cw[:, -1:]
        # the value with (1-p) * total weight strictly above: first index whose cumulative
        # weight exceeds p * total
        target = (p * total).clamp(max=total - 0.5)
        idx = torch.searchsorted(cw, target, right=True).clamp(max=v.shape[1] - 1)
        return torch.gather(v, 1, idx).squeeze(1)

    def state_dict(self) -> dict:
        return {"count": self.count, "min": self.min.cpu(), "max": self.max.cpu(),
                "top": self.top.cpu(), "levels": [b.cpu() for b in self.levels],
                "exact": self.exact, "q": self.q, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        """The inverse of :meth:`state_dict` (a tally made with the same settings)."""
        if (state["q"], state["total"], state["exact"]) != (self.q, self.total, self.exact):
            raise ValueError("cannot load a quantile tally with different settings")
        self.count = int(state["count"])
        self.min, self.max = state["min"].to(self.device), state["max"].to(self.device)
        self.top = state["top"].to(self.device)
        self.levels = [b.to(self.device) for b in state["levels"]]
