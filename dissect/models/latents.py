"""The generator contract: latents in, images out.

A generator maps latents ``z`` ``[N, z_dim]`` (drawn by :func:`sample_z`) to an image batch
``[N, 3, H, W]`` with values in [-1, 1] (tanh) or [0, 1]; :func:`output_range` tells which
(and rejects anything else), :func:`to_unit` maps the output to [0, 1] and :func:`quantize`
rounds it to the 8 bits a PNG holds, so that what is labeled is exactly what is shown.
A registered generator may declare its range (ProGAN's output is [-1, 1] but unclamped, so a
little outside it): the declared range is taken as is, and :func:`to_unit` clamps to it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dissect.errors import DissectError


def sample_z(n: int, seed: int, z_dim: int, start: int = 0) -> Tensor:
    """Latents ``start .. start + n - 1`` (each of size ``z_dim``) of the probe sequence for ``seed``.

    Each latent is drawn from its own generator seeded by ``(seed, index)``, so any slice of
    the sequence is reproducible on its own and independent of the batch size.
    """
    out = np.empty((n, z_dim), np.float32)
    for i in range(n):
        out[i] = np.random.default_rng([int(seed), int(start + i)]).standard_normal(z_dim)
    return torch.from_numpy(out)


VALUE_RANGES = ("tanh", "unit")


def output_range(images: Tensor, what: str = "the generator", declared: str | None = None) -> str:
    """``"tanh"`` for images in [-1, 1], ``"unit"`` for [0, 1]; a clear error otherwise.

    ``declared``: the range the generator declares (its model spec's ``declared_range``);
    then only the shape and finiteness are checked, and values outside the range are left
    for :func:`to_unit` to clamp."""
    if declared is not None and declared not in VALUE_RANGES:
        raise DissectError(f"{what} declares the output range {declared!r}; use one of {', '.join(VALUE_RANGES)}")
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DissectError(f"{what} returned {shape}; a generator must return an image batch "
                           "[N, 3, H, W] with values in [-1, 1] or [0, 1]")
    if not torch.isfinite(images).all():
        raise DissectError(f"{what} returned NaN or infinite values; check its weights")
    if declared is not None:
        return declared
    lo, hi = float(images.min()), float(images.max())
    tol = 1e-3
    if lo >= -tol and hi <= 1 + tol:
        return "unit"
    if lo >= -1 - tol and hi <= 1 + tol:
        return "tanh"
    raise DissectError(f"{what} returned values in [{lo:.3g}, {hi:.3g}]; images must be in "
                       "[-1, 1] (tanh) or [0, 1]: rescale its output")


def to_unit(images: Tensor, value_range: str) -> Tensor:
    """Generator output -> [0, 1], clamped (a declared range may be overshot a little)."""
    x = (images + 1) / 2 if value_range == "tanh" else images
    return x.clamp(0, 1)


def quantize(images01: Tensor) -> Tensor:
    """[0, 1] float -> the same values rounded to 8 bits (what a PNG holds)."""
    return (images01 * 255).round() / 255
