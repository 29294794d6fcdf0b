"""A plain reference of compexp's search (Mu and Andreas 2020): every candidate formula's
mask is made and compared with the unit's masks, one mask operation per candidate. Slow by
design; the checks of :mod:`dissect.formulas.search` (tests) and the side-by-side timing of
``benchmarks/compose.py`` use it. Same grammar, IoU rule and tie order as the fast search."""

from __future__ import annotations

import numpy as np
import torch

from ..stats.formula_counts import AND, AND_NOT, OR, Formula
from .search import canonical


class Reference:
    """The probe set held in memory as masks: ``present`` bool ``[N, labels, H*W]`` (concept
    c at each pixel; a whole-image concept covers its image), ``annotated`` bool ``[N,
    categories]`` (the images annotated in each category), ``prim[c]`` (c's category)."""

    def __init__(self, present: torch.Tensor, annotated: torch.Tensor, prim: torch.Tensor, valid: np.ndarray):
        self.present, self.annotated, self.prim = present, annotated, prim.long()
        self.valid = np.asarray(valid, dtype=bool).copy()
        self.valid[0] = False

    @classmethod
    def from_batches(cls, batches, num_labels: int, prim: torch.Tensor, valid) -> Reference:
        """From prepared label batches (:class:`~dissect.stats.iou.LabelBatch`)."""
        pres, ann = [], []
        for lb in batches:
            b, nlay, hw = lb.pixel.shape
            p = torch.zeros((b, num_labels, hw), dtype=torch.bool)
            for j in range(nlay):
                p.scatter_(1, lb.pixel[:, j].cpu().view(b, 1, hw), True)
            for j in range(lb.image.shape[1]):
                p[torch.arange(b), lb.image[:, j].cpu()] = True
            p[:, 0] = False
            pres.append(p)
            ann.append(lb.has_cat.cpu() > 0)
        return cls(torch.cat(pres), torch.cat(ann), prim, valid)

    def mask(self, f: Formula) -> torch.Tensor:
        leaves, ops = f
        m = self.present[:, leaves[0]]
        for op, c in zip(ops, leaves[1:]):
            p = self.present[:, c]
            m = m | p if op == OR else (m & p if op == AND else m & ~p)
        return m

    def iou(self, unit: torch.Tensor, f: Formula, m: torch.Tensor | None = None) -> float:
        """The IoU of the unit's masks ``unit`` (bool ``[N, H*W]``) with formula ``f`` over
        the images annotated in any of its concepts' categories (the formula's pixels lie in
        those images: only the unit's pixels need the restriction)."""
        m = self.mask(f) if m is None else m
        cats = sorted({int(self.prim[c]) for c in f[0]})
        images = self.annotated[:, cats].any(dim=1)
        inter = int((unit & m).sum())
        union = int(unit.sum(dim=1)[images].sum()) + int(m.sum()) - inter
        return inter / union if union else 0.0

    def best_of_length_two(self, unit: torch.Tensor):
        """The best IoU over every formula of length <= 2: each formula's mask made (all
        second concepts of one first concept and operator at once) and counted against the
        unit's masks ``unit`` (bool ``[N, H*W]``; or ``[U, N, H*W]`` for several units at
        once, the masks made once for all: a list of U values)."""
        units = unit.unsqueeze(0) if unit.dim() == 2 else unit
        cs = [c for c in range(self.present.shape[1]) if self.valid[c]]
        best = [max(self.iou(u, ((c,), ())) for c in cs) for u in units]
        on = units.sum(dim=2).double()                                           # [U, N]
        uf = units.to(torch.float32)                                             # [U, N, HW]
        others = self.present[:, cs]                                             # [N, C, HW]
        cats = self.prim[cs]
        for i, a in enumerate(cs):
            pa = self.present[:, a:a + 1]
            images = self.annotated[:, cats] | self.annotated[:, int(self.prim[a])].view(-1, 1)   # [N, C]
            pixels = on @ images.double()                                        # [U, C]
            for op in (OR, AND, AND_NOT):
                m = (pa | others if op == OR else (pa & others if op == AND else pa & ~others)).to(torch.float32)
                # exact: the counts per image are below 2^24
                inter = torch.einsum("unh,nch->unc", uf, m).double().sum(dim=1)     # [U, C]
                lab = m.sum(dim=2).double().sum(dim=0)                           # [C]
                union = pixels + lab - inter
                iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
                iou[:, i] = 0.0                                                  # a op a
                best = [max(b, float(v)) for b, v in zip(best, iou.max(dim=1).values)]
        return best[0] if unit.dim() == 2 else best

    def search(self, unit: torch.Tensor, length: int, beam: int) -> list[tuple[Formula, float]]:
        """The beam of compexp's search for one unit: start from the best ``beam`` single
        concepts, extend each with every concept by OR, AND, AND NOT, keep the best ``beam``."""
        nl = self.present.shape[1]
        singles = [(((c,), ()), self.iou(unit, ((c,), ()))) if self.valid[c] else (((c,), ()), 0.0)
                   for c in range(nl)]
        cur = [fv for fv in sorted(singles, key=lambda fv: -fv[1]) if fv[1] > 0][:beam]
        for _ in range(length - 1):
            cand = list(cur)
            for f, _ in cur:
                fm = self.mask(f)
                for op in (OR, AND, AND_NOT):
                    for c in range(nl):
                        if not self.valid[c] or c in f[0]:
                            continue
                        p = self.present[:, c]
                        m = fm | p if op == OR else (fm & p if op == AND else fm & ~p)
                        g = (f[0] + (c,), f[1] + (op,))
                        cand.append((g, self.iou(unit, g, m)))
            keep: dict = {}
            for g, v in sorted(cand, key=lambda fv: -fv[1]):
                if v > 0 and canonical(g) not in keep:
                    keep[canonical(g)] = v
                if len(keep) == beam:
                    break
            cur = list(keep.items())
        return cur
