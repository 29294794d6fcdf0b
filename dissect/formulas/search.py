"""Compositional labels: the beam search of Mu and Andreas (2020) over formulas of concepts,
with exact counts (:mod:`dissect.stats.formula_counts`) and an exact length-2 optimum.

Start from each unit's best ``beam`` single concepts (the dissection's IoUs); at each step
extend every formula ``f`` in the beam with every concept ``c`` not in it as ``f OR c``,
``f AND c`` and ``f AND NOT c``, and keep the best ``beam`` formulas, old and new together,
up to ``length`` concepts. A formula's IoU is restricted to the images annotated in at least
one category of its concepts (``docs/method.md``), so a single concept's is dissection's.
For length 2 the IoU of every pair and operator follows from the pairwise counts: the exact
optimum (``search="exact"`` seeds the beam with the exact best formulas of length <= 2; with
``"beam"`` it is computed as a check when it fits ``PAIR_BUDGET``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DissectError
from ..experiments.metrics import rounded
from ..stats.formula_counts import AND, OPS, OR, Formula, FormulaCounts

SEARCHES = ("beam", "exact")
MAX_LENGTH = 4
#: The exact length-2 check runs when units x concepts^2 counts fit this (float64 entries).
PAIR_BUDGET = 2 ** 25
#: Which images a formula is scored on (results.json ``formulas.images``).
IMAGE_RULE = ("the images annotated in at least one category of the formula's concepts "
              "(for one concept: dissection's category restriction)")
#: The toy classifier's deepest layer gets formulas of this length when none is asked for.
DEFAULT_TOY_LENGTH = 3


@dataclass(frozen=True)
class FormulaOptions:
    """Compositional labels (``--formula-length``, ``--beam``, ``--formula-search``).

    ``length`` None: 1 (single concepts, no extra pass), except the built-in toy classifier's
    deepest dissected layer, which gets ``DEFAULT_TOY_LENGTH`` (the default report)."""

    length: int | None = None
    beam: int = 5
    search: str = "beam"

    def validate(self) -> None:
        if self.length is not None and not (isinstance(self.length, int) and 1 <= self.length <= MAX_LENGTH):
            raise DissectError(f"--formula-length must be a whole number from 1 to {MAX_LENGTH} "
                               f"(1: single concepts), got {self.length!r}")
        if not (isinstance(self.beam, int) and self.beam >= 1):
            raise DissectError(f"--beam must be a whole number of at least 1, got {self.beam!r}")
        if self.search not in SEARCHES:
            raise DissectError(f"--formula-search must be one of {', '.join(SEARCHES)}, got {self.search!r}")

    def length_for(self, layer_index: int, num_layers: int, toy_classifier: bool) -> int:
        """The formula length of the ``layer_index``-th of ``num_layers`` dissected layers."""
        if self.length is not None:
            return self.length
        return DEFAULT_TOY_LENGTH if toy_classifier and layer_index == num_layers - 1 else 1

    def check_probe(self, num_concepts: int, lengths: list[int]) -> None:
        """Refuse formulas on a probe set with fewer than two concepts (before any work)."""
        if max(lengths, default=1) > 1 and num_concepts < 2:
            raise DissectError(f"--formula-length {max(lengths)} needs a probe set with at least two concepts; "
                               f"this one has {num_concepts} (use --formula-length 1)")

    def describe(self, length: int) -> dict:
        return {"length": length, "beam": self.beam, "search": self.search, "images": IMAGE_RULE}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "FormulaOptions":
        opts = cls(length=args.formula_length, beam=args.beam, search=args.formula_search)
        opts.validate()
        return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's group of :class:`FormulaOptions`."""
    d = FormulaOptions()
    g = parser.add_argument_group("formulas", "compositional labels: logical formulas of concepts "
                                  "(Mu and Andreas 2020)")
    g.add_argument("--formula-length", type=int, default=None, metavar="N",
                   help=f"label units with formulas of up to N concepts joined by OR, AND, AND NOT "
                   f"(1 to {MAX_LENGTH}; default 1: single concepts, except {DEFAULT_TOY_LENGTH} for the toy "
                   "classifier's last layer; the compexp setting is 3)")
    g.add_argument("--beam", type=int, default=d.beam, metavar="B",
                   help=f"formulas kept per unit at each step of the search (default {d.beam})")
    g.add_argument("--formula-search", choices=SEARCHES, default=d.search,
                   help="beam: the beam search (with the exact length-2 optimum as a check when it fits); "
                   "exact: start the beam from the exact best formulas of length 2 (default beam)")


# ----------------------------------------------------------------------------- formulas

def canonical(f: Formula) -> Formula:
    """One spelling per formula for commutative operators: the operands of a chain of one
    commutative operator, or of the first one, in label order."""
    leaves, ops = f
    if ops and all(o == ops[0] for o in ops) and ops[0] in (OR, AND):
        return tuple(sorted(leaves)), ops
    if ops and ops[0] in (OR, AND):
        return tuple(sorted(leaves[:2])) + leaves[2:], ops
    return f


def formula_text(f: Formula, names) -> str:
    """``(a OR b) AND NOT c``: ``names[label]`` is a concept's display name."""
    leaves, ops = f
    text = names[leaves[0]]
    for i, (op, c) in enumerate(zip(ops, leaves[1:])):
        text = f"{'(' + text + ')' if i else text} {OPS[op]} {names[c]}"
    return text


def formula_iou(counts_inter, counts_label, unit_pixels):
    """IoU from the counts: ``inter / (unit_pixels + label - inter)``, 0 where the union is
    empty (the same expression as :meth:`IoUTally.iou`)."""
    union = unit_pixels + counts_label - counts_inter
    return torch.where(union > 0, counts_inter / union.clamp(min=1), torch.zeros_like(union))


# ----------------------------------------------------------------------------- search

@dataclass
class LayerFormulas:
    """One layer's result: per unit the best formula, its IoU and the best IoU at each
    length (None for units without a label), and the exact length-2 check."""

    formulas: list[Formula | None]
    ious: list[float]
    by_length: list[list[float]]
    exact: list[tuple[Formula | None, float]] | None   # the exact optimum of length <= 2, per unit
    single_iou: np.ndarray | None = None                # [units, labels] from the formula counts


class LayerSearch:
    """The beam search of one layer as a sequence of counting passes: :meth:`counter` gives
    the tally to feed one pass over the probe set (None when done), :meth:`absorb` takes it."""

    def __init__(self, num_units: int, num_labels: int, primary_category: torch.Tensor,
                 valid: np.ndarray, skip: np.ndarray, length: int, options: FormulaOptions,
                 initial_iou: np.ndarray | None = None, device: torch.device | str = "cpu"):
        self.units, self.nl = num_units, num_labels
        self.prim = primary_category.to(torch.long).cpu()
        self.valid = np.asarray(valid, dtype=bool).copy()
        self.valid[0] = False
        self.skip = np.asarray(skip, dtype=bool)
        self.length, self.options, self.device = length, options, torch.device(device)
        self.steps = 0                            # formula length reached
        self.beams: list[list[tuple[Formula, float]]] = [[] for _ in range(num_units)]
        self.by_length: list[list[float]] = [[] for _ in range(num_units)]
        self.exact = None
        self.single_iou = None
        pairs_fit = num_units * num_labels ** 2 <= PAIR_BUDGET
        if options.search == "exact" and length >= 2 and not pairs_fit:
            raise DissectError(f"--formula-search exact needs {num_units} x {num_labels}^2 pair counts, "
                               f"more than {PAIR_BUDGET}; use --formula-search beam")
        self.want_pairs = length >= 2 and pairs_fit
        if initial_iou is not None:
            self._seed(initial_iou)

    @property
    def done(self) -> bool:
        return self.steps >= self.length

    def _seed(self, iou: np.ndarray) -> None:
        """The beams of length 1: each unit's best single concepts (ties to the lower label)."""
        iou = np.where(self.valid[None, :], iou, 0.0)
        for k in range(self.units):
            if self.skip[k]:
                continue
            order = np.lexsort((np.arange(self.nl), -iou[k]))[: self.options.beam]
            self.beams[k] = [(((int(c),), ()), float(iou[k, c])) for c in order if iou[k, c] > 0]
            self.by_length[k].append(self.beams[k][0][1] if self.beams[k] else 0.0)
        self.steps = 1

    def counter(self) -> FormulaCounts | None:
        """The tally of the next pass (None when the search is done)."""
        if self.done:
            return None
        distinct: dict[Formula, int] = {}
        width = self.options.beam if self.steps else 0
        beam = torch.full((self.units, width), -1, dtype=torch.long)
        for k, b in enumerate(self.beams):
            for j, (f, _) in enumerate(b):
                beam[k, j] = distinct.setdefault(f, len(distinct))
        pairs = self.want_pairs and self.steps <= 1
        return FormulaCounts(self.units, self.nl, list(distinct), beam, self.device, pairs=pairs)

    def absorb(self, t: FormulaCounts) -> None:
        """Take a finished pass: the single-concept IoUs, the exact pairs, the next beam."""
        prim = self.prim.to(t.device)
        bit = torch.ones_like(prim) << prim                                   # [labels]
        single = formula_iou(t.uc, t.c.view(1, -1), t.unit_pixels(bit))
        single[:, 0] = 0
        if self.single_iou is None:
            self.single_iou = single.cpu().numpy()
        if self.steps == 0:
            self._seed(self.single_iou)
            return
        if t.pairs:
            self.exact = self._exact(t)
        if self.options.search == "exact" and self.exact_top is not None and self.steps == 1:
            self.beams = self.exact_top
        else:
            self.beams = self._extend(t)
        self.steps += 1
        for k in range(self.units):
            if not self.skip[k]:
                self.by_length[k].append(self.beams[k][0][1] if self.beams[k] else 0.0)

    exact_top = None

    def _slot_cats(self, t: FormulaCounts) -> torch.Tensor:
        """Long ``[units, B]``: the category bit set of each beam formula (0: empty slot)."""
        cats = torch.zeros(t.beam.shape, dtype=torch.long)
        for k, b in enumerate(self.beams):
            for j, (f, _) in enumerate(b):
                cats[k, j] = sum({1 << int(self.prim[c]) for c in f[0]})
        return cats.to(t.device)

    def _extend(self, t: FormulaCounts) -> list[list[tuple[Formula, float]]]:
        dev = t.device
        nl, width = self.nl, t.width
        fid = t.beam.clamp(min=0)
        F = t.f[fid].unsqueeze(-1)                                             # [K, B, 1]
        Fc = t.fc[fid]                                                         # [K, B, nl]
        Uf = t.uf.unsqueeze(-1)
        Ufc, Uc, C = t.ufc, t.uc.unsqueeze(1), t.c.view(1, 1, -1)
        ngroups = int(self.prim.max()) + 1
        sets = self._slot_cats(t)
        upix = t.unit_pixels(sets.unsqueeze(-1) | (1 << torch.arange(ngroups, device=dev)), per_unit=True)  # [K, B, G]
        ucat = upix[:, :, self.prim.to(dev)]                                   # [K, B, nl]
        cand = torch.stack([
            formula_iou(Uf + Uc - Ufc, F + C - Fc, ucat),     # OR
            formula_iou(Ufc, Fc, ucat),                       # AND
            formula_iou(Uf - Ufc, F - Fc, ucat),              # AND NOT
        ], dim=2)                                                              # [K, B, 3, nl]
        ok = torch.from_numpy(self.valid).to(dev).view(1, 1, 1, -1) & (t.beam >= 0).view(self.units, width, 1, 1)
        for k, b in enumerate(self.beams):
            for j, (f, _) in enumerate(b):
                ok[k, j, :, list(f[0])] = False
        cand = torch.where(ok, cand, torch.full_like(cand, -1.0)).cpu()
        old = formula_iou(t.uf, t.f[fid], t.unit_pixels(sets, per_unit=True)).cpu()   # [K, B]
        # per unit, the candidates at or above its n_take-th best (all of a tie), best first,
        # ties in candidate order (slot, operator, concept): the reference's order
        flat = cand.reshape(self.units, -1)
        n_take = min(flat.shape[1], 4 * self.options.beam * 3 + 8)
        kth = torch.topk(flat, n_take, dim=1).values[:, -1].clamp(min=torch.finfo(flat.dtype).tiny)
        out = []
        for k in range(self.units):
            if self.skip[k] or not self.beams[k]:
                out.append([])
                continue
            olds = [(f, float(old[k, j])) for j, (f, _) in enumerate(self.beams[k])]
            keep: dict[Formula, float] = {}
            merged = list(olds)
            idx = (flat[k] >= kth[k]).nonzero().view(-1)
            order = torch.sort(flat[k, idx], descending=True, stable=True).indices
            for v, i in zip(flat[k, idx[order]].tolist(), idx[order].tolist()):
                j, rest = divmod(i, 3 * nl)
                op, c = divmod(rest, nl)
                f = self.beams[k][j][0]
                merged.append(((f[0] + (c,), f[1] + (op,)), v))
            merged.sort(key=lambda fv: -fv[1])   # stable: old first, then candidate order
            for f, v in merged:
                g = canonical(f)
                if g not in keep and v > 0:
                    keep[g] = v
                if len(keep) == self.options.beam:
                    break
            out.append(list(keep.items()))
        return out

    def _exact(self, t: FormulaCounts) -> list[tuple[Formula | None, float]]:
        """Each unit's exact best formula of length <= 2 (and ``exact_top``: its best ``beam``)."""
        dev, nl = t.device, self.nl
        prim = self.prim.to(dev)
        g = int(self.prim.max()) + 1
        bits = 1 << torch.arange(g, device=dev)
        pair_sets = bits.view(-1, 1) | bits.view(1, -1)                            # [G, G]
        up = t.unit_pixels(pair_sets)[:, prim][:, :, prim]                         # [K, nl, nl]
        ua = t.uc.unsqueeze(2)
        ub = t.uc.unsqueeze(1)
        a = t.c.view(1, -1, 1)
        b = t.c.view(1, 1, -1)
        uab, ab = t.uab, t.ab.unsqueeze(0)
        ious = torch.stack([formula_iou(ua + ub - uab, a + b - ab, up),
                            formula_iou(uab, ab.expand_as(uab), up),
                            formula_iou(ua - uab, a - ab, up)], dim=1)           # [K, 3, nl, nl]
        valid = torch.from_numpy(self.valid).to(dev)
        pair_ok = valid.view(-1, 1) & valid.view(1, -1) & ~torch.eye(nl, dtype=torch.bool, device=dev)
        upper = torch.ones(nl, nl, dtype=torch.bool, device=dev).triu(1)
        ok = torch.stack([pair_ok & upper, pair_ok & upper, pair_ok])             # [3, nl, nl]
        ious = torch.where(ok.unsqueeze(0), ious, torch.full_like(ious, -1.0)).reshape(self.units, -1).cpu()
        single = torch.from_numpy(self.single_iou)
        single = torch.where(torch.from_numpy(self.valid).view(1, -1), single, torch.full_like(single, -1.0))
        allv = torch.cat([single, ious], dim=1)                                   # singles first: they win ties
        order = torch.sort(allv, dim=1, descending=True, stable=True)
        best, tops = [], []
        for k in range(self.units):
            items = []
            for v, idx in zip(order.values[k, : self.options.beam].tolist(), order.indices[k, : self.options.beam].tolist()):
                if v <= 0 or self.skip[k]:
                    break
                if idx < nl:
                    f = ((idx,), ())
                else:
                    op, rest = divmod(idx - nl, nl * nl)
                    x, y = divmod(rest, nl)
                    f = ((x, y), (op,))
                items.append((canonical(f), v))
            tops.append(items)
            best.append(items[0] if items else (None, 0.0))
        self.exact_top = tops
        return best

    def result(self) -> LayerFormulas:
        forms, ious = [], []
        for k in range(self.units):
            b = self.beams[k]
            forms.append(b[0][0] if b else None)
            ious.append(b[0][1] if b else 0.0)
        return LayerFormulas(forms, ious, self.by_length, self.exact, self.single_iou)


# ----------------------------------------------------------------------------- results

def formula_fields(res: LayerFormulas, index, options: FormulaOptions, length: int,
                   units: list[dict]) -> dict:
    """Add ``formula`` to each unit record of ``units`` and return the layer's ``formulas``
    block (docs/results-schema.md)."""
    names = {num: lab.display for num, lab in index.labels.items()}
    cats = index.categories
    prim = index.primary_category_tensor().tolist()
    found = missed = compared = 0
    worst = 0.0
    for k, u in enumerate(units):
        f = res.formulas[k]
        if f is None or u.get("invalid") or u.get("label") is None:
            u["formula"] = None
            continue
        parts = [{"name": names[c], "category": cats[prim[c]], "op": None if i == 0 else OPS[f[1][i - 1]]}
                 for i, c in enumerate(f[0])]
        u["formula"] = {"text": formula_text(f, names), "iou": rounded(res.ious[k]), "length": len(f[0]),
                        "parts": parts, "iou_by_length": [rounded(v) for v in res.by_length[k]]}
        if res.exact is not None:
            ef, ev = res.exact[k]
            beam2 = res.by_length[k][1] if len(res.by_length[k]) > 1 else res.by_length[k][0]
            compared += 1
            gap = max(ev - beam2, 0.0)
            if gap <= 1e-12:
                found += 1
            else:
                missed += 1
                worst = max(worst, gap)
            u["formula"]["exact_length2"] = None if ef is None else {"text": formula_text(ef, names),
                                                                    "iou": rounded(ev)}
    labelled = [u["formula"] for u in units if u.get("formula")]
    means = [rounded(float(np.mean([f["iou_by_length"][i] for f in labelled]))) if labelled else 0.0
             for i in range(length)]
    gaps = [max(u["formula"]["exact_length2"]["iou"] - (u["formula"]["iou_by_length"][1]
                if len(u["formula"]["iou_by_length"]) > 1 else u["formula"]["iou"]), 0.0)
            for u in units if u.get("formula") and u["formula"].get("exact_length2")]
    check = None if res.exact is None else {
        "units": compared, "beam_found": found, "beam_missed": missed,
        "mean_missed_iou": rounded(float(np.mean(gaps)) if gaps else 0.0), "max_missed_iou": rounded(worst)}
    return {**options.describe(length), "mean_iou_by_length": means, "exact_check": check}
