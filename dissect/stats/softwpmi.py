"""SoftWPMI: CLIP-Dissect's score of how well a concept describes a unit (Oikarinen and
Weng, ICLR 2023; ``soft_wpmi`` of Trustworthy-ML-Lab/CLIP-dissect's ``similarity.py``).

Inputs: ``similarity[i, c]``, the cosine similarity of image i's and concept c's CLIP
embeddings, and ``activations[i, u]``, unit u's activation on image i (its map's spatial
mean). Then, exactly as the published code computes it:

* ``P[i, c] = softmax_c(a * similarity[i, c])``: the probability CLIP gives concept c for
  image i, over the concept list;
* unit u's top ``top_k`` images by activation, ``x_1 ... x_k`` (rank 1 the highest), each
  counted with its own probability of being in the unit's example set,
  ``p_j = p_start - (j - 1) / k * (p_start - p_end)`` (0.998 down towards 0.97: the
  "soft" in SoftWPMI);
* ``log p(c | u) = sum_j log(1 + p_j * (P[x_j, c] - 1) + min_prob)`` (the probability that
  every example is described by c, each example only softly in the set);
* ``log p(c) = log mean_u p(c | u)`` over the units of the layer scored together
  (``logsumexp`` minus ``log U``);
* ``SoftWPMI(u, c) = log p(c | u) - lam * log p(c)``.

Defaults as published: ``top_k=100, a=10, lam=1, p_start=0.998, p_end=0.97,
min_prob=1e-7``. A unit's label is its concept of highest SoftWPMI. With fewer than
``top_k`` images, all of them are used (the published code would fail); the weights then
run over that many ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dissect.errors import DissectError


@dataclass(frozen=True)
class SoftWPMIParams:
    """The constants of SoftWPMI (CLIP-Dissect's defaults)."""

    top_k: int = 100
    a: float = 10.0
    lam: float = 1.0
    p_start: float = 0.998
    p_end: float = 0.97
    min_prob: float = 1e-7

    def validate(self) -> None:
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            raise DissectError(f"--clip-top-k takes a whole number of images >= 1, got {self.top_k!r}")
        for name in ("a", "lam"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DissectError(f"SoftWPMI's {name} must be a finite number >= 0, got {value!r}")


def example_weights(k: int, p_start: float, p_end: float, device=None) -> Tensor:
    """``p_j`` for ranks 1..k: ``p_start - (j - 1) / k * (p_start - p_end)``."""
    return p_start - torch.arange(k, dtype=torch.float64, device=device) / k * (p_start - p_end)


def soft_wpmi(similarity: Tensor, activations: Tensor, params: SoftWPMIParams = SoftWPMIParams(),
              chunk: int = 64) -> Tensor:
    """SoftWPMI ``[units, concepts]`` from ``similarity [images, concepts]`` (cosine of CLIP
    embeddings) and ``activations [images, units]``, computed in float64, ``chunk`` units at
    a time (memory ``chunk * top_k * concepts``)."""
    if similarity.dim() != 2 or activations.dim() != 2 or similarity.shape[0] != activations.shape[0]:
        raise DissectError(f"SoftWPMI needs similarities [images, concepts] and activations [images, units] "
                           f"over the same images, got {list(similarity.shape)} and {list(activations.shape)}")
    params.validate()
    device = similarity.device
    probs = torch.softmax(params.a * similarity.double(), dim=1)                 # P[i, c]
    k = min(params.top_k, activations.shape[0])
    top = torch.topk(activations.to(device).double(), k=k, dim=0).indices        # [k, units]
    p = example_weights(k, params.p_start, params.p_end, device).view(k, 1, 1)
    log_c_given_u = []
    for lo in range(0, top.shape[1], chunk):
        examples = probs[top[:, lo:lo + chunk]]                                   # [k, chunk, concepts]
        log_c_given_u.append(torch.log(1 + p * (examples - 1) + params.min_prob).sum(0))
    log_c_given_u = torch.cat(log_c_given_u)                                      # [units, concepts]
    log_c = torch.logsumexp(log_c_given_u, dim=0, keepdim=True) - math.log(log_c_given_u.shape[0])
    return log_c_given_u - params.lam * log_c
