"""Streaming counts for logical formulas of concepts (compositional labels, issue 23).

A formula is left-deep over concepts: ``((c0 op1 c1) op2 c2) ...`` with ``op`` one of OR,
AND, AND NOT (NOT only on the newly added concept, as in Mu and Andreas 2020). One beam step
needs, for each unit ``k`` and each formula ``f`` in its beam, and every concept ``c``:

* ``|U_k ∩ f ∩ c|`` (``ufc``) and ``|U_k ∩ f|`` (``uf``): from the unit's on-pixels only;
* ``|f ∩ c|`` (``fc``) and ``|f|`` (``f``): per distinct formula (shared by every unit);
* ``|U_k ∩ c|`` and ``|c|`` (``uc``, ``c``): the single-concept counts;
* ``act[k, p]``: the unit's on-pixels in images of annotation pattern ``p`` (the set of
  categories an image is annotated in, :func:`~dissect.stats.iou.prepare_labels`), so that
  the union of any formula can be restricted to the images annotated in any of its
  categories (``docs/method.md``);
* optionally (``pairs``) ``|U_k ∩ a ∩ b|`` and ``|a ∩ b|`` for every pair of concepts, from
  which the IoU of every formula of length 2 follows (the exact length-2 optimum).

Every count is a sum over images (mergeable). How it is fast: a batch's pixels are grouped
into **atoms**, the distinct combinations of (pixel labels of every layer, whole-image
labels, annotation pattern); a formula is true or false on a whole atom. A formula's truth
is evaluated once per atom, its counts with every concept at once are a product with the
sparse atom-by-concept incidence, and a unit's on-pixels (about q = 0.5% of them) are
reduced to (unit, atom) pairs whose labels are bincounted under each beam formula. No mask
operation per candidate concept is made. Runs on the device of the inputs.
"""

from __future__ import annotations

import torch

from .iou import LabelBatch

OR, AND, AND_NOT = 0, 1, 2
OPS = ("OR", "AND", "AND NOT")

#: A formula: (concept label numbers, operators), ``len(ops) == len(leaves) - 1``, read
#: left-deep: ``((leaves[0] ops[0] leaves[1]) ops[1] leaves[2]) ...``.
Formula = tuple[tuple[int, ...], tuple[int, ...]]


def evaluate(formulas: list[Formula], present: torch.Tensor) -> torch.Tensor:
    """Bool ``[len(formulas), N]``: each formula's truth on ``N`` items whose concepts are
    ``present`` (bool ``[N, labels]``)."""
    n = present.shape[0]
    dev = present.device
    if not formulas:
        return torch.zeros((0, n), dtype=torch.bool, device=dev)
    width = max(len(f[0]) for f in formulas)
    leaves = torch.tensor([list(f[0]) + [0] * (width - len(f[0])) for f in formulas], device=dev)
    ops = torch.tensor([list(f[1]) + [-1] * (width - 1 - len(f[1])) for f in formulas],
                       device=dev).view(len(formulas), max(width - 1, 0))
    truth = present[:, leaves[:, 0]].t()
    for j in range(1, width):
        p = present[:, leaves[:, j]].t()
        op = ops[:, j - 1].view(-1, 1)
        truth = torch.where(op == OR, truth | p, torch.where(op == AND, truth & p,
                            torch.where(op == AND_NOT, truth & ~p, truth)))
    return truth


class Atoms:
    """A batch's pixels grouped by their labels: ``of_pixel[i]`` is pixel ``i``'s atom (pixels
    numbered image by image, ``B * HW``), ``count[a]`` its pixels, ``present[a]`` (bool
    ``[A, labels]``) its concepts, ``pattern[a]`` its image's annotation pattern (bit ``g``:
    annotated in category ``g``)."""

    def __init__(self, labels: LabelBatch, num_labels: int):
        pix = labels.pixel                                      # [B, L, HW]
        b, nlay, hw = pix.shape
        dev = pix.device
        bits = (labels.has_cat > 0).long() << torch.arange(labels.has_cat.shape[1], device=dev)
        pattern = bits.sum(dim=1)                               # [B]
        # each image's class: (whole-image labels, pattern)
        img_cols = torch.cat([labels.image, pattern.view(-1, 1)], dim=1)   # [B, J+1]
        img_key = _combine([img_cols[:, j] for j in range(img_cols.shape[1])])
        cols = list(pix.transpose(0, 1).reshape(nlay, b * hw).unbind(0))     # one copy, rows contiguous
        cols.append(img_key.view(b, 1).expand(b, hw).reshape(-1))
        self.of_pixel = _combine(cols)                          # [B*HW]
        a = int(self.of_pixel.max()) + 1 if self.of_pixel.numel() else 0
        self.num = a
        self.count = torch.bincount(self.of_pixel, minlength=a).to(torch.float64)
        rep = torch.empty(a, dtype=torch.long, device=dev)
        rep.scatter_(0, self.of_pixel, torch.arange(self.of_pixel.numel(), device=dev))
        img_of = rep // hw
        lab = torch.cat([pix.permute(0, 2, 1).reshape(b * hw, nlay)[rep],
                         labels.image[img_of]], dim=1)          # [A, L+J]
        present = torch.zeros((a, num_labels), dtype=torch.bool, device=dev)
        if lab.numel():
            present.scatter_(1, lab, True)
        present[:, 0] = False
        self.present = present
        self.pattern = pattern[img_of]
        # the incidence in CSR form: atom row r holds labels col[ptr[r]:ptr[r+1]]
        row, col = present.nonzero(as_tuple=True)
        self.row, self.col = row, col
        self.ptr = torch.zeros(a + 1, dtype=torch.long, device=dev)
        self.ptr[1:] = torch.cumsum(torch.bincount(row, minlength=a), 0)


def _combine(cols: list[torch.Tensor]) -> torch.Tensor:
    """Dense ids (0..n-1) of the distinct rows of the columns ``cols`` (long, same length):
    a mixed-radix key, made dense again whenever the next column would take it past a
    direct table (so every step is linear in the rows)."""
    lo, hi = [0] * len(cols), [0] * len(cols)
    if cols[0].numel():
        lo, hi = (torch.stack(v).tolist() for v in zip(*(torch.aminmax(c) for c in cols)))
    limit = _table_limit(cols[0].numel())
    key, top = torch.zeros_like(cols[0], dtype=torch.long), 1
    for c, a, b in zip(cols, lo, hi):
        radix = int(b) - int(a) + 1
        if top * radix > limit and top > 1:
            key, values = dense_ids(key, top)
            top = values.numel()
        key, top = key * radix + (c.long() - int(a)), top * radix
    return dense_ids(key, top)[0]


def _table_limit(n: int) -> int:
    """The largest key range that :func:`dense_ids` maps with a table for ``n`` keys (a
    table costs its length; past a few times ``n``, a sort is cheaper)."""
    return max(4 * n, 1 << 12)


def dense_ids(key: torch.Tensor, top: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inverse, values)``: the distinct values of ``key`` (long, ``< top``) in increasing
    order and each element's position among them (``torch.unique``, faster on CPU: a table
    when the range is small, a sort otherwise)."""
    n = key.numel()
    if top is not None and top <= _table_limit(n):
        seen = torch.zeros(top, dtype=torch.bool, device=key.device)
        seen[key] = True
        where = torch.cumsum(seen, 0) - 1
        return where[key], seen.nonzero().view(-1)
    s, order = torch.sort(key)
    new = torch.ones_like(s, dtype=torch.bool)
    new[1:] = s[1:] != s[:-1]
    inv = torch.empty_like(s)
    inv[order] = torch.cumsum(new, 0) - 1
    return inv, s[new]


class ReducedBatch:
    """A batch as the counts need it, whatever the beam: its atoms (without the pixel map)
    and the units' on-pixels as (unit ``uq``, atom ``aq``, pixels ``w``) triples, with each
    triple's labels expanded (``lab[e]`` of triple ``qi[e]``); ``uq`` None: no unit is on."""

    def __init__(self, atoms: Atoms, pixels: int, triples=None):
        atoms.of_pixel = None
        self.atoms, self.pixels = atoms, pixels
        self.uq, self.aq, self.w, self.qi, self.lab = triples if triples is not None else (None,) * 5

    def nbytes(self) -> int:
        ts = [self.atoms.count, self.atoms.present, self.atoms.pattern, self.atoms.row, self.atoms.col,
              self.atoms.ptr, self.uq, self.aq, self.w, self.qi, self.lab]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


def reduce_batch(img: torch.Tensor, unit: torch.Tensor, masks: torch.Tensor, labels: LabelBatch,
                 num_units: int, num_labels: int) -> ReducedBatch:
    """A batch's non-empty unit masks (``img``, ``unit``, ``masks`` as in
    :meth:`IoUTally.add_sparse`) and labels, reduced to atoms and (unit, atom) triples."""
    dev = labels.pixel.device
    atoms = Atoms(labels, num_labels)
    pixels = labels.pixel.shape[0] * labels.hw
    if img.numel() == 0:
        return ReducedBatch(atoms, pixels)
    flat = masks.reshape(masks.shape[0], -1)
    m, p = flat.nonzero(as_tuple=True)
    atom = atoms.of_pixel[img[m] * labels.hw + p]
    inv, uniq = dense_ids(unit[m] * atoms.num + atom, num_units * atoms.num)
    w = torch.bincount(inv, minlength=uniq.numel()).to(torch.float64)
    uq, aq = uniq // atoms.num, uniq % atoms.num
    # each triple's labels (CSR expansion)
    lens = atoms.ptr[aq + 1] - atoms.ptr[aq]
    qi = torch.repeat_interleave(torch.arange(uq.numel(), device=dev), lens)
    start = torch.cumsum(lens, 0) - lens
    lab = atoms.col[atoms.ptr[aq][qi] + torch.arange(qi.numel(), device=dev) - start[qi]]
    return ReducedBatch(atoms, pixels, (uq, aq, w, qi, lab))


class FormulaCounts:
    """The counts of one beam step for one layer (module docstring).

    ``formulas``: the distinct formulas counted; ``beam``: long ``[units, B]``, unit ``k``'s
    beam as indices into ``formulas`` (-1: an empty slot). ``pairs``: also count every pair.
    """

    def __init__(self, num_units: int, num_labels: int, formulas: list[Formula], beam: torch.Tensor,
                 device: torch.device | str = "cpu", pairs: bool = False):
        self.device = torch.device(device)
        self.num_units, self.num_labels = num_units, num_labels
        self.formulas = list(formulas)
        self.beam = beam.to(self.device, torch.long)
        self.width = self.beam.shape[1]
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device)  # noqa: E731
        nf = len(self.formulas)
        self.uf = z(num_units, self.width)
        self.ufc = z(num_units, self.width, num_labels)
        self.f = z(nf)
        self.fc = z(nf, num_labels)
        self.uc = z(num_units, num_labels)
        self.c = z(num_labels)
        self.patterns: list[int] = []      # pattern bits, in the order of act's columns
        self.act = z(num_units, 0)
        self.pairs = pairs
        if pairs:
            self.uab = z(num_units, num_labels, num_labels)
            self.ab = z(num_labels, num_labels)
        self.pixels = 0

    # ------------------------------------------------------------------ tallying
    def add(self, img: torch.Tensor, unit: torch.Tensor, masks: torch.Tensor, labels: LabelBatch) -> None:
        """Tally a batch: the non-empty unit masks as in :meth:`IoUTally.add_sparse`."""
        self.add_reduced(reduce_batch(img, unit, masks, labels, self.num_units, self.num_labels))

    def add_reduced(self, r: ReducedBatch) -> None:
        """Tally a batch reduced by :func:`reduce_batch` (the same for every beam step, so a
        search can keep them and replay them instead of another pass over the probe set)."""
        dev = self.device
        nl, width = self.num_labels, self.width
        atoms = r.atoms
        self.pixels += r.pixels
        weight = atoms.count.to(torch.float32)
        # concept counts and (pairs) co-occurrence, per atom
        self.c += torch.bincount(atoms.col, weights=atoms.count[atoms.row], minlength=nl)
        truth = evaluate(self.formulas, atoms.present)                    # [F, A]
        if self.formulas:
            inc = torch.sparse_coo_tensor(torch.stack([atoms.row, atoms.col]),
                                          torch.ones(atoms.row.numel(), device=dev),
                                          (atoms.num, nl), check_invariants=False).coalesce()
            tw = truth.to(torch.float32) * weight.view(1, -1)                  # exact: < 2^24 per batch
            self.fc += torch.sparse.mm(inc.t(), tw.t()).t().to(torch.float64)
            self.f += tw.sum(dim=1).to(torch.float64)
        if self.pairs:
            self.ab += _pair_counts(atoms, torch.zeros(atoms.num, dtype=torch.long, device=dev),
                                    atoms.count, 1, nl)[0]
        pat = self._pattern_ids(atoms.pattern)
        if r.uq is None:
            return
        uq, aq, w, qi, lab = r.uq, r.aq, r.w, r.qi, r.lab
        npat = len(self.patterns)
        self.act += torch.bincount(uq * npat + pat[aq], weights=w,
                                   minlength=self.num_units * npat).view(self.num_units, npat)
        self.uc += torch.bincount(uq[qi] * nl + lab, weights=w[qi],
                                  minlength=self.num_units * nl).view(self.num_units, nl)
        if self.pairs:
            self.uab += _pair_counts(atoms, uq, w, self.num_units, nl, aq)
        if self.formulas and width:
            fid = self.beam[uq]                                                 # [Q, B]
            on = (fid >= 0) & truth[fid.clamp(min=0), aq.view(-1, 1)]
            wj = w.view(-1, 1) * on.to(torch.float64)                           # [Q, B]
            slot = uq.view(-1, 1) * width + torch.arange(width, device=dev).view(1, -1)
            self.uf += torch.bincount(slot.reshape(-1), weights=wj.reshape(-1),
                                      minlength=self.num_units * width).view(self.num_units, width)
            key = slot[qi] * nl + lab.view(-1, 1)                               # [E, B]
            self.ufc += torch.bincount(key.reshape(-1), weights=wj[qi].reshape(-1),
                                       minlength=self.num_units * width * nl).view(self.num_units, width, nl)

    def _pattern_ids(self, pattern: torch.Tensor) -> torch.Tensor:
        """Global column ids of the patterns of ``pattern`` (new ones get a zero column)."""
        values = dense_ids(pattern)[1].tolist()
        new = [v for v in values if v not in self.patterns]
        if new:
            self.patterns += new
            self.act = torch.cat([self.act, self.act.new_zeros(self.num_units, len(new))], dim=1)
        table = torch.tensor(self.patterns, device=pattern.device)
        return (pattern.view(-1, 1) == table.view(1, -1)).long().argmax(dim=1)

    def merge(self, other: FormulaCounts) -> None:
        """Add ``other`` (another part of the probe set, the same beam) into this tally."""
        for name in ("uf", "ufc", "f", "fc", "uc", "c") + (("uab", "ab") if self.pairs else ()):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        for j, bits in enumerate(other.patterns):
            self._pattern_ids(torch.tensor([bits], device=self.device))
            self.act[:, self.patterns.index(bits)] += other.act[:, j].to(self.device)
        self.pixels += other.pixels

    _SUMS = ("uf", "ufc", "f", "fc", "uc", "c", "act")

    def state_dict(self) -> dict:
        """The sums (for :func:`dissect.distributed.merge_tallies`)."""
        names = self._SUMS + (("uab", "ab") if self.pairs else ())
        return {**{n: getattr(self, n).cpu() for n in names}, "patterns": list(self.patterns),
                "pixels": self.pixels}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            if name in ("patterns", "pixels"):
                setattr(self, name, value if name == "pixels" else list(value))
            else:
                setattr(self, name, value.to(self.device, torch.float64))

    # ------------------------------------------------------------------ unions
    def unit_pixels(self, categories: torch.Tensor, per_unit: bool = False) -> torch.Tensor:
        """Unit ``k``'s on-pixels in the images annotated in at least one category of each
        category set of ``categories`` (long bit sets): ``[units, *categories.shape]``, or
        with ``per_unit`` (``categories[k]`` for unit k) ``categories.shape``."""
        shape = tuple(categories.shape) if per_unit else (self.num_units, *categories.shape)
        if not self.patterns:
            return torch.zeros(shape, dtype=torch.float64, device=self.device)
        bits = torch.tensor(self.patterns, device=self.device)
        hit = ((categories.to(self.device).unsqueeze(-1) & bits) != 0).to(torch.float64)   # [*S, P]
        if per_unit:
            return torch.einsum("kp,k...p->k...", self.act, hit)
        return torch.einsum("kp,...p->k...", self.act, hit)


def _pair_counts(atoms: Atoms, owner: torch.Tensor, w: torch.Tensor, owners: int, nl: int,
                 atom: torch.Tensor | None = None) -> torch.Tensor:
    """``[owners, nl, nl]`` (symmetric, zero diagonal): summed weights ``w`` of the items
    (owner ``owner[i]``, atom ``atom[i]``, default item i = atom i) per pair of distinct
    concepts present together."""
    atom = torch.arange(atoms.num, device=w.device) if atom is None else atom
    k = int((atoms.ptr[1:] - atoms.ptr[:-1]).max()) if atoms.num else 0
    if k < 2 or atom.numel() == 0:
        return torch.zeros((owners, nl, nl), dtype=torch.float64, device=w.device)
    padded = torch.zeros((atoms.num, k), dtype=torch.long, device=w.device)
    pos = torch.arange(atoms.row.numel(), device=w.device) - atoms.ptr[atoms.row]
    padded[atoms.row, pos] = atoms.col
    lab = padded[atom]                                                     # [Q, k] (0: none)
    i, j = torch.triu_indices(k, k, 1, device=w.device)
    a, b = lab[:, i], lab[:, j]                                            # [Q, pairs]
    ok = (a > 0) & (b > 0)
    base = (owner * (nl * nl)).view(-1, 1).expand_as(a)[ok]
    a, b = a[ok], b[ok]
    ww = w.view(-1, 1).expand(-1, i.numel())[ok]
    out = torch.bincount(torch.cat([base + a * nl + b, base + b * nl + a]), weights=torch.cat([ww, ww]),
                         minlength=owners * nl * nl)
    return out.view(owners, nl, nl)
