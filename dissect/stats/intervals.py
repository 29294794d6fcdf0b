"""95% intervals over images for a ratio of sums, by a streaming Poisson bootstrap.

The IoU of unit ``k`` with its best concept ``c`` is a ratio of sums over the probe images,
``IoU = sum_i I_i / sum_i U_i``, with ``I_i`` the intersection pixels of image ``i`` and
``U_i = A_i + L_i - I_i`` its union pixels (``A_i``: the unit's on-pixels when image ``i`` is
annotated in ``c``'s category, ``L_i``: ``c``'s pixels; see :mod:`dissect.stats.iou`). Its
sampling uncertainty over images comes from the Poisson bootstrap (Hanley & MacGibbon 2006;
Chamandy et al. 2012, "Estimating uncertainty for massive data streams"): replicate ``r``
weighs image ``i`` by ``w_ri ~ Poisson(1)`` and computes ``sum_i w_ri I_i / sum_i w_ri U_i``.
Unlike the classic bootstrap it needs no resampling of a fixed-size set, so it streams: each
replicate's two sums are tallied batch by batch (``W @ stats``), memory is
``replicates x units x 2`` whatever the probe set's size, and tallies of shards merge by
addition.

The weights are a function of ``(seed, image index over the whole probe set, replicate)``
only (:func:`poisson_weights`: a counter-based hash, splitmix64, turned into a Poisson(1)
draw by its inverse CDF), and every per-image count is an integer, so the float64 sums are
exact: the intervals are bitwise the same whatever the batching, the order, the sharding
across torchrun ranks or the device.

The interval is the percentile interval: the 2.5th and 97.5th percentiles of the replicate
IoUs (linear interpolation between order statistics, ``numpy.quantile``'s default). It is
conditional on the concept: it does not account for the best concept having been chosen
among many on the same images (docs/method.md).

Options: :class:`IntervalOptions` (``--bootstrap``, ``--bootstrap-seed``; the command-line
group is :func:`add_arguments`). Decisions against a threshold: :func:`decision`; when a
layer's sample is too small to separate detectors from chance: :func:`too_small`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DissectError

METHOD = "poisson bootstrap"
#: The layer banner's rule (:func:`too_small`): fewer probe images than this ...
MIN_IMAGES = 100
#: ... or more than this fraction of the labelled units have an interval straddling the threshold.
MAX_UNDECIDED = 0.5
DECISIONS = ("above", "straddles", "below")
#: What a layer's ``sample_warning`` means (the console and the layer page say it).
SAMPLE_WARNING = "the probe sample is too small to separate detectors from chance"


@dataclass(frozen=True)
class IntervalOptions:
    """The best-IoU intervals: ``replicates`` Poisson-bootstrap replicates (0: no intervals),
    weights drawn from ``seed``, a central ``level`` interval."""

    replicates: int = 1000
    seed: int = 0
    level: float = 0.95

    @property
    def enabled(self) -> bool:
        return self.replicates > 0

    def validate(self) -> None:
        if not isinstance(self.replicates, int) or isinstance(self.replicates, bool) or self.replicates < 0:
            raise DissectError(f"--bootstrap takes a whole number of replicates >= 0 (0: no intervals), "
                               f"got {self.replicates!r}")
        if 0 < self.replicates < 100:
            raise DissectError(f"--bootstrap {self.replicates} is too few replicates for the 2.5% and 97.5% "
                               "percentiles; use at least 100 (default 1000), or 0 for no intervals")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise DissectError(f"--bootstrap-seed takes a whole number >= 0, got {self.seed!r}")
        if not 0.0 < self.level < 1.0:
            raise DissectError(f"the interval level must be in (0, 1), got {self.level!r}")

    def key(self) -> dict:
        """What changes the intervals (part of the dissection's cache key)."""
        return {"replicates": self.replicates, **({"seed": self.seed, "level": self.level} if self.enabled else {})}

    def describe(self) -> dict | None:
        """The results' ``intervals`` block's settings (None when off)."""
        if not self.enabled:
            return None
        return {"method": METHOD, "replicates": self.replicates, "seed": self.seed, "level": self.level}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "IntervalOptions":
        opts = cls(replicates=args.bootstrap, seed=args.bootstrap_seed)
        opts.validate()
        return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's group of :class:`IntervalOptions`."""
    d = IntervalOptions()
    g = parser.add_argument_group("uncertainty", "95% intervals over images of each unit's best IoU")
    g.add_argument("--bootstrap", type=int, default=d.replicates, metavar="N",
                   help=f"Poisson-bootstrap replicates of each unit's best IoU (default {d.replicates}; "
                   "0: no intervals, and no extra pass)")
    g.add_argument("--bootstrap-seed", type=int, default=d.seed, metavar="S",
                   help=f"seed of the bootstrap weights (default {d.seed})")


# ----------------------------------------------------------------------------- weights

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _poisson1_cdf() -> np.ndarray:
    """P(X <= k) for X ~ Poisson(1), k = 0, 1, ..., until it is 1 in float64."""
    cdf, p, k = [], math.exp(-1.0), 0
    total = 0.0
    while total < 1.0 and k < 30:
        total += p
        cdf.append(total)
        k += 1
        p /= k
    return np.array(cdf)


_CDF = _poisson1_cdf()


def poisson_weights(seed: int, images: torch.Tensor | np.ndarray | list[int], replicates: int) -> torch.Tensor:
    """float64 ``[replicates, len(images)]``: the Poisson(1) weight of each image (by its
    index over the whole probe set) in each replicate; a function of ``(seed, image, r)``
    only, the same on every platform."""
    idx = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images, dtype=np.int64)
    with np.errstate(over="ignore"):
        base = _splitmix64(_splitmix64(np.uint64(seed) ^ np.uint64(0x5D1B5EC7)) + idx.astype(np.uint64))  # [B]
        r = np.arange(replicates, dtype=np.uint64)[:, None]
        bits = _splitmix64(base[None, :] + r * _GOLDEN)                                    # [R, B]
    u = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))                     # [0, 1)
    k = np.minimum(np.searchsorted(_CDF, u, side="right"), len(_CDF) - 1)
    return torch.from_numpy(k.astype(np.float64))


# ----------------------------------------------------------------------------- the tally

class BootstrapTally:
    """Streaming, mergeable Poisson-bootstrap sums of a ratio ``sum I / sum U`` per unit.

    ``sums[r, k]`` holds ``(sum_i w_ri I_ik, sum_i w_ri U_ik)`` over the images tallied, and
    ``total[k]`` the unweighted sums (the point estimate).
    """

    def __init__(self, num_units: int, replicates: int, seed: int, device: torch.device | str = "cpu"):
        self.num_units = num_units
        self.replicates = replicates
        self.seed = seed
        self.device = torch.device(device)
        self.sums = torch.zeros((replicates, num_units, 2), dtype=torch.float64, device=self.device)
        self.total = torch.zeros((num_units, 2), dtype=torch.float64, device=self.device)
        self.images = 0

    def add(self, images: torch.Tensor, inter: torch.Tensor, union: torch.Tensor) -> None:
        """Tally a batch: ``images`` (long ``[B]``, indices over the whole probe set) and, per
        image and unit, the intersection and union pixel counts (``[B, units]``)."""
        if len(images) == 0:
            return
        stats = torch.stack([inter, union], dim=2).to(self.device, torch.float64)   # [B, units, 2]
        w = poisson_weights(self.seed, images, self.replicates).to(self.device)     # [R, B]
        self.sums += (w @ stats.flatten(1)).view(self.replicates, self.num_units, 2)
        self.total += stats.sum(dim=0)
        self.images += len(images)

    def merge(self, other: "BootstrapTally") -> None:
        self.sums += other.sums.to(self.device)
        self.total += other.total.to(self.device)
        self.images += other.images

    def replicate_ratios(self) -> torch.Tensor:
        """float64 ``[replicates, units]``: each replicate's ratio (0 where its union is 0,
        as the IoU is)."""
        i, u = self.sums[..., 0], self.sums[..., 1]
        return torch.where(u > 0, i / u.clamp(min=1e-300), torch.zeros_like(u))

    def point(self) -> torch.Tensor:
        """float64 ``[units]``: the ratio of the unweighted sums (the IoU itself)."""
        i, u = self.total[:, 0], self.total[:, 1]
        return torch.where(u > 0, i / u.clamp(min=1e-300), torch.zeros_like(u))

    def intervals(self, level: float = 0.95) -> torch.Tensor:
        """float64 ``[units, 2]``: the central ``level`` percentile interval of the replicates."""
        return percentile_interval(self.replicate_ratios(), level)

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "total": self.total.cpu(), "images": self.images,
                "replicates": self.replicates, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["replicates"]) != self.replicates or int(state["seed"]) != self.seed:
            raise ValueError("bootstrap tallies of different replicates or seeds cannot be merged")
        self.sums = state["sums"].to(self.device, torch.float64)
        self.total = state["total"].to(self.device, torch.float64)
        self.images = int(state["images"])


def percentile_interval(replicates: torch.Tensor | np.ndarray, level: float = 0.95) -> torch.Tensor:
    """``[units, 2]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles over axis 0
    of ``replicates`` (``[R, units]``), linear between order statistics."""
    a = np.asarray(replicates.cpu() if isinstance(replicates, torch.Tensor) else replicates, dtype=np.float64)
    lo, hi = np.quantile(a, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return torch.from_numpy(np.stack([lo, hi], axis=1))


# ----------------------------------------------------------------------------- decisions

def decision(interval: tuple[float, float] | list[float] | None, threshold: float) -> str | None:
    """Where ``interval`` lies against the detector rule ``IoU > threshold``: ``"above"``
    (its lower end is above the threshold), ``"below"`` (its upper end is not), else
    ``"straddles"``; None without an interval."""
    if interval is None:
        return None
    lo, hi = interval
    if lo > threshold:
        return "above"
    if hi <= threshold:
        return "below"
    return "straddles"


def too_small(num_images: int, labelled: int, straddling: int) -> str | None:
    """Why a layer's probe sample is too small to separate detectors from chance, or None:
    fewer than :data:`MIN_IMAGES` probe images, or the intervals of more than
    :data:`MAX_UNDECIDED` of its ``labelled`` units (``straddling`` of them) straddle the
    IoU threshold."""
    if num_images < MIN_IMAGES:
        return f"{num_images} probe images, fewer than {MIN_IMAGES}"
    if labelled and straddling > MAX_UNDECIDED * labelled:
        return (f"the intervals of {straddling} of the {labelled} labelled units straddle the "
                "IoU threshold, more than half")
    return None
