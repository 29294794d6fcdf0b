"""The numbers the experiments report, and how results.json rounds them.

:func:`balanced_accuracy` scores a classifier's decisions per class (the ablation's measure,
METHOD.md section 2); :func:`spearman` correlates two per-unit quantities; :func:`rounded` is
the one rounding rule for the floats written into the results.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def balanced_accuracy(preds: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per class c, ``(recall + TNR) / 2`` of "predicted == c": ``[M, K]`` for ``preds [M, N]``.

    NaN for a class with no image (recall undefined) or no other image (TNR undefined)."""
    preds = preds.long()
    M, N = preds.shape
    K = num_classes
    offs = (torch.arange(M, device=preds.device) * K).view(M, 1)
    predicted = torch.bincount((preds + offs).flatten(), minlength=M * K).view(M, K).double()
    hit = preds == labels.view(1, N)
    tp_idx = torch.where(hit, labels.view(1, N) + offs, torch.full_like(preds, M * K))
    tp = torch.bincount(tp_idx.flatten(), minlength=M * K + 1)[: M * K].view(M, K).double()
    pos = torch.bincount(labels, minlength=K).double().view(1, K)
    neg = N - pos
    recall = tp / pos
    tnr = (neg - (predicted - tp)) / neg
    return (recall + tnr) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation of ``x`` and ``y`` (ties get their mean rank); None when
    there are fewer than 3 points or either side is constant."""
    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # average ranks of ties
            sel = v == val
            r[sel] = r[sel].mean()
        return r
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def rounded(x: float | None, digits: int = 6) -> float | None:
    """``x`` rounded to ``digits`` decimals for the results; None for None, NaN and infinity."""
    if x is None or not math.isfinite(float(x)):
        return None
    return round(float(x), digits)
