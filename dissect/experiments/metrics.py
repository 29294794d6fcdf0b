"""The numbers the experiments report, and how results.json rounds them.

:func:`balanced_accuracy` scores a classifier's decisions per class (the ablation's measure,
METHOD.md section 2); :func:`spearman` correlates two per-unit quantities; :func:`rounded` is
the one rounding rule for the floats written into the results.
"""

from __future__ import annotations

import math
from typing import Sequence

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


# =============================================================================== intervals
#: Resamples drawn for every bootstrap interval of the ablation (METHOD.md section 4).
BOOTSTRAP_DRAWS = 1000
#: Coverage of the intervals.
INTERVAL_LEVEL = 0.95


def resample_counts(labels: np.ndarray | Tensor, draws: int, seed: int) -> np.ndarray:
    """Stratified bootstrap resamples of ``N`` labeled images: ``[draws, N]`` counts, row b the
    number of times each image is drawn in resample b.

    Within each class the class's ``n_c`` images are drawn ``n_c`` times with replacement (a
    multinomial over them), so every resample keeps each class's image count: the balanced
    accuracy's denominators stay fixed and never vanish. Deterministic for ``seed``; classes in
    increasing label order."""
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    out = np.zeros((draws, len(y)), dtype=np.int32)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=draws)
    return out


def _ba_coefficients(preds: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per row p, the weights ``q_p [N]`` with ``balanced accuracy = 1/2 + q_p . w`` for any
    resample counts ``w`` that keep the class counts: ``(tp / n_c + 1 - fp / neg_c) / 2``
    is linear in ``w``. NaN rows where class c or its complement has no image."""
    y = labels[None, :]
    c = classes[:, None]
    n_pos = np.bincount(labels, minlength=int(classes.max(initial=0)) + 1)[classes].astype(np.float64)
    n_neg = len(labels) - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        pos_w, neg_w = 0.5 / n_pos, 0.5 / n_neg
    hit = preds == c
    q = np.where(hit & (y == c), pos_w[:, None], 0.0) - np.where(hit & (y != c), neg_w[:, None], 0.0)
    q[~np.isfinite(pos_w) | ~np.isfinite(neg_w)] = np.nan
    return q


def balanced_accuracy_intervals(preds: Tensor | np.ndarray, labels: Tensor | np.ndarray, rows: Sequence[int],
                                classes: Sequence[int], counts: np.ndarray, base_rows: Sequence[int] | None = None,
                                level: float = INTERVAL_LEVEL, chunk_elems: int = 2 ** 22) -> np.ndarray:
    """Percentile bootstrap intervals ``[P, 2]`` of balanced accuracies, or of drops.

    ``preds [M, N]``: predicted classes of M ablations on N images; pair p is ablation
    ``rows[p]`` scored for class ``classes[p]``. Without ``base_rows`` the interval is of its
    balanced accuracy; with them, of the drop ``BA(base_rows[p]) - BA(rows[p])``, *paired*:
    both sides are scored on the same resampled images (the rows of ``counts``, from
    :func:`resample_counts`). Vectorised: a balanced accuracy is linear in the resample counts
    (class counts fixed), so each pair is one sparse row times the ``[N, draws]`` counts; a
    drop's row is non-zero only on the images whose prediction the ablation changed. NaN
    where the balanced accuracy is undefined (a class with no image, or no other image)."""
    p_all = np.asarray(preds.cpu() if isinstance(preds, Tensor) else preds)
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).astype(np.int64)
    rows_a, cls_a = np.asarray(rows, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    base_a = None if base_rows is None else np.asarray(base_rows, dtype=np.int64)
    P, N = len(rows_a), len(y)
    out = np.full((P, 2), np.nan)
    if P == 0 or N == 0:
        return out
    wt = torch.from_numpy(np.ascontiguousarray(counts.T, dtype=np.float64))   # [N, draws]
    alpha = (1.0 - level) / 2
    step = max(1, chunk_elems // max(1, N))
    for p0 in range(0, P, step):
        sl = slice(p0, min(P, p0 + step))
        q = _ba_coefficients(p_all[rows_a[sl]], y, cls_a[sl])
        if base_a is not None:
            q = _ba_coefficients(p_all[base_a[sl]], y, cls_a[sl]) - q
        bad = np.isnan(q).any(1)
        q[bad] = 0.0
        stat = torch.sparse.mm(torch.from_numpy(q).to_sparse(), wt).numpy()      # [p, draws]
        if base_a is None:
            stat = stat + 0.5
        lo_hi = np.quantile(stat, [alpha, 1.0 - alpha], axis=1).T
        lo_hi[bad] = np.nan
        out[sl] = lo_hi
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties given their mean rank (0-based), for ``[..., n]``."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="mergesort")
    s = np.take_along_axis(x, order, -1)
    pos = np.broadcast_to(np.arange(n), s.shape)
    new = np.ones(s.shape, dtype=bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    last_new = np.ones(s.shape, dtype=bool)
    last_new[..., :-1] = new[..., 1:]
    last = np.flip(np.minimum.accumulate(np.flip(np.where(last_new, pos, n), -1), axis=-1), -1)
    r = np.empty(s.shape)
    np.put_along_axis(r, order, (first + last) / 2.0, -1)
    return r


def spearman_interval(x: np.ndarray, y: np.ndarray, draws: int, seed: int,
                      level: float = INTERVAL_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of :func:`spearman` over the points (resampled pairs);
    resamples where either side is constant are left out. None with fewer than 3 points or
    fewer than half the resamples defined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 3:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    rx, ry = average_ranks(x[idx]), average_ranks(y[idx])
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
    ok = den > 0
    if ok.sum() < draws / 2:
        return None
    rho = (rx * ry).sum(1)[ok] / den[ok]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(rho, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
