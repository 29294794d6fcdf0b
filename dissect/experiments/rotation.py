"""The rotation experiment (Bau et al. 2017, section 3.2): is interpretability axis-aligned?

A layer's C units are one basis of its representation. Rotating that basis by an orthogonal
matrix keeps everything the layer carries (the rest of the network could undo it), yet the
2017 paper found that the number of unique detectors falls as the rotation grows: the
concepts sit on the units' own axes, not just in their span.

Here a random rotation ``Q`` (Haar-distributed, from a recorded seed, made proper:
``det Q = +1``) is reached from the identity along the geodesic of SO(C),
``R(t) = expm(t logm(Q))``: ``R(0)`` is exactly the identity and ``R(1) = Q``. The rotated
layer, ``a'[c] = sum_d R[c, d] a[d]`` at every position, is put in place by a hook
(:class:`dissect.hooks.Intervene`) and dissected; nothing else in the network changes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from dissect.errors import DissectError
from dissect.hooks import Intervene

#: The default seed of the random rotation (recorded in the results).
ROTATION_SEED = 0
#: How the rotations are built, as the results state it.
ROTATION_METHOD = ("R(t) = expm(t * logm(Q)): the geodesic in SO(C) from the identity (t = 0) to a "
                   "Haar-random rotation Q (t = 1; QR of a Gaussian matrix, signs fixed, det +1)")


def parse_rotations(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5,0.75,1"`` -> the rotation amounts, each from 0 to 1."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DissectError(f"--rotate takes comma-separated numbers from 0 to 1, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise DissectError(f"--rotate takes comma-separated numbers from 0 to 1, got {text!r}")
    return tuple(sorted(set(values)))


def random_rotation(n: int, seed: int) -> np.ndarray:
    """A Haar-random proper rotation of size ``n`` (float64), the same for the same seed."""
    rng = np.random.default_rng([int(seed), int(n)])
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    q = q * np.sign(np.diag(r))[None, :]   # Haar measure on O(n) (Mezzadri 2007)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]                 # into SO(n): a rotation has a real logarithm
    return q


def rotation_log(q: np.ndarray) -> np.ndarray:
    """The real skew-symmetric logarithm of the rotation ``q`` (its principal logarithm).

    ``q`` is normal, so it diagonalizes as ``V diag(exp(i theta)) V^-1``; the log takes
    ``i theta`` with theta in (-pi, pi]. A random rotation has no eigenvalue at exactly -1."""
    w, v = np.linalg.eig(q)
    log = (v @ np.diag(np.log(w.astype(np.complex128))) @ np.linalg.inv(v)).real
    return (log - log.T) / 2


def rotation_path(q: np.ndarray, amounts: Sequence[float]) -> list[torch.Tensor]:
    """``R(t)`` for each ``t`` in ``amounts`` (float32): exactly the identity at ``t = 0``."""
    log = torch.from_numpy(rotation_log(q))
    out = []
    for t in amounts:
        r = torch.eye(q.shape[0], dtype=torch.float64) if t == 0 else torch.linalg.matrix_exp(float(t) * log)
        out.append(r.to(torch.float32))
    return out


def rotate_layer(model: nn.Module, layer: str, rotation: torch.Tensor) -> Intervene:
    """Replace ``layer``'s output ``a`` (N, C, ...) by ``R a`` along the channel axis."""
    def edit(out: torch.Tensor) -> torch.Tensor:
        if out.shape[1] != rotation.shape[0]:
            raise DissectError(f"layer {layer!r} has {out.shape[1]} units, the rotation {rotation.shape[0]}")
        return rotate_map(rotation, out)

    return Intervene(model, layer, edit)


def rotate_map(rotation: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``R a`` along the channel axis of a map ``a`` (N, C, ...): the one place a rotation is
    applied (the rotation experiment's hook, and the ``rotation`` basis of :mod:`dissect.bases`)."""
    return torch.einsum("cd,nd...->nc...", rotation.to(out.device, out.dtype), out)
