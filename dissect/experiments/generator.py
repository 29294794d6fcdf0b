"""Generator interventions, as METHOD.md section 3 gives them: what a unit *causes*.

For one layer of a generator, after its dissection (the probe set is the generator's own
outputs labeled by a segmenter, :mod:`dissect.data.generated`):

* **ablation** of concept ``c``: zero the ``N`` units with the highest IoU for ``c`` and
  measure the fraction of pixels the segmenter labels ``c``, averaged over ``samples``
  latents (seed ``config.seed``, not the probe set's); a curve over ``N``, next to ``N``
  random units (``random_draws`` draws); and what the removed pixels became (their labels
  after the ablation, finest first: a part where there is one, else the object);
* **insertion** of concept ``c``: set its top ``N`` units to their 99.5th-percentile
  activation (over the probe set) inside a square region of ``region`` x ``region`` cells of
  the layer (default: an eighth of the map's side, 8 px of a 64 px image: door-sized), at
  every position of a grid over the map, and count the pixels that *become*
  ``c``. Grouped by the region's context (what the segmenter saw there before: the most
  frequent finest label in the region) and by position (a heat-map of where insertion works);
  a curve over ``N`` and a random-units baseline;
* **strips**: the same latents before and after, side by side, the changed region outlined,
  as a PNG and an animated GIF (imageio).

Speed: the layer's activations are computed once per latent
(:class:`~dissect.experiments.runner.LayerRunner`); each intervention re-runs only the
generator after the layer (:func:`~dissect.hooks.split_tail`, with a full forward pass and a
hook as the fallback), and only the segmenter runs on each edited image. The strips are drawn
by :mod:`dissect.experiments.strips`; :func:`generator_for_report` is the report's entry point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed, memory
from ..data.broden import BrodenDataset
from ..devices import resolve_device
from ..errors import DissectError
from ..models.latents import output_range, quantize, sample_z, to_unit
from ..segmenters.base import Segmenter
from ..slugs import layer_title, slugify
from ..stats.quantile import TopQuantile
from .dissection import LayerStats
from .runner import UNITS, Directions, LayerRunner
from .strips import write_strip

DEFAULT_GEN_TOP_N = (1, 3, 5, 10, 20)
RANDOM_BASELINE_RULE = ("latent i is ablated with random set i mod random_draws: every set on its own "
                        "slice of the latents, the mean over all latents")


@dataclass
class GeneratorExperimentConfig:
    """Parameters of the generator interventions; all are written into the report."""

    ablate: tuple[str, ...] | None = None   # concepts to remove (None: chosen from the dissection)
    insert: tuple[str, ...] | None = None   # concepts to insert (None: chosen from the dissection)
    top_n: tuple[int, ...] = DEFAULT_GEN_TOP_N
    units: int = 10                          # N of the strips, the context table and "became"
    samples: int = 256                       # latents for ablation (>= 200)
    insert_samples: int = 32                 # latents for insertion at N = units (x positions)
    curve_samples: int = 4                   # latents for the insertion curve over N (x positions)
    layers: tuple[str, ...] = ()             # layers to intervene on (default: the model's, else the first)
    region: int = 0                          # insertion square, in layer cells (0: an eighth of the side)
    insert_quantile: float = 0.005           # insertion value: the unit's (1 - q) quantile (99.5th pct)
    random_draws: int = 10                   # random unit sets per N (the baseline: their mean)
    seed: int = 2                            # seed of the intervention latents
    strip_samples: int = 6
    batch_size: int = 64
    device: str = "auto"

    def validate(self) -> None:
        if self.samples < 1 or self.insert_samples < 1:
            raise DissectError("generator interventions need at least 1 sample")
        if not self.top_n or any((not isinstance(n, int)) or n < 1 for n in self.top_n):
            raise DissectError(f"--gen-top-n must be positive integers, got {self.top_n}")
        if self.units < 1:
            raise DissectError(f"--gen-units must be at least 1, got {self.units}")
        if self.region < 0:
            raise DissectError(f"--insert-region must be >= 0 cells, got {self.region}")
        if not 0 < self.insert_quantile < 0.5:
            raise DissectError(f"insert_quantile must be in (0, 0.5), got {self.insert_quantile}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top_n"] = list(self.top_n)
        d["layers"] = list(self.layers)
        d["ablate"] = list(self.ablate) if self.ablate is not None else None
        d["insert"] = list(self.insert) if self.insert is not None else None
        return d


# ============================================================================ runner
class GeneratorRunner(LayerRunner):
    """Activations of one layer for latents, and images from (edited) activations."""

    def __init__(self, generator: nn.Module, layer: str, device: torch.device, value_range: str | None = None):
        super().__init__(generator, layer, device)
        self.value_range = value_range
        self.rows: int | None = None     # images rendered per call (generator_experiments sizes it)
        self.parts = memory.Parts(what="rendering")   # smaller parts on an out-of-memory error

    def render(self, acts: Tensor, z: Tensor, seg: Segmenter) -> tuple[Tensor, Tensor]:
        """:meth:`images` of (edited) activations and their labels by ``seg``, in smaller
        parts when the whole does not fit the device."""
        out = self.parts.run(len(z), lambda s: self._render(acts[s], z[s], seg))
        if len(out) == 1:
            return out[0]
        return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])

    def _render(self, acts: Tensor, z: Tensor, seg: Segmenter) -> tuple[Tensor, Tensor]:
        images = self.images(acts, z)
        return images, seg.segment(images)

    @torch.no_grad()
    def acts(self, z: Tensor) -> Tensor:
        """The layer's activations ``[N, units, h, w]`` (float32) for latents ``z``."""
        a = self.layer_output(z.to(self.device))
        if a.dim() != 4 or a.shape[-1] * a.shape[-2] < 2:
            raise DissectError(f"layer {self.layer!r} has output shape {list(a.shape[1:])}; generator "
                               "interventions need a layer with spatial extent [units, h, w], h * w > 1")
        return a

    @torch.no_grad()
    def images(self, acts: Tensor, z: Tensor) -> Tensor:
        """Images in [0, 1], quantized to 8 bits, from (edited) activations of latents ``z``."""
        out = self.rerun(acts.to(self.device), z.to(self.device))
        if self.value_range is None:
            self.value_range = output_range(out)
        return quantize(to_unit(out.float(), self.value_range))


def finest_labels(labels: Tensor, seg: Segmenter) -> Tensor:
    """One label per pixel: the part where the segmenter has a part layer and found one,
    else the object (else the first layer)."""
    layers = list(seg.layers)
    base = labels[:, layers.index("object")] if "object" in layers else labels[:, 0]
    if "part" in layers:
        part = labels[:, layers.index("part")]
        base = torch.where(part > 0, part, base)
    return base


def _concept_units(iou_row: np.ndarray, n: int) -> list[int]:
    order = np.argsort(-iou_row, kind="stable")
    return [int(u) for u in order[:n]]


def _sizes(top_n: Sequence[int], units: int) -> list[int]:
    return sorted({n for n in top_n if n <= units} | ({units} if units <= max(top_n) else set()))


def choose_concepts(iou: np.ndarray, seg: Segmenter, want: Sequence[str] | None, k: int = 2,
                    categories: Sequence[str] = ("object",)) -> list[str]:
    """``want`` checked against the segmenter, or the ``k`` concepts (of ``categories``) with
    the highest best-unit IoU in this layer."""
    if want is not None:
        for c in want:
            seg.number(c)  # unknown concept -> error listing the known ones
        return list(want)
    cands = [(float(iou[:, seg.number(n)].max()), n) for n, c in seg.concepts if c in categories]
    cands.sort(reverse=True)
    return [n for v, n in cands[:k] if v > 0]


def experiment_concepts(iou: np.ndarray, seg: Segmenter, cfg: GeneratorExperimentConfig) -> tuple[list[str], list[str]]:
    """The concepts to remove and to insert: ``cfg``'s, else chosen from the layer's ``iou``
    (:func:`choose_concepts`; inserted: parts where the segmenter has them, else objects)."""
    return (choose_concepts(iou, seg, cfg.ablate),
            choose_concepts(iou, seg, cfg.insert, categories=("part",) if "part" in seg.layers else ("object",)))


# ============================================================================ edits in batches
@dataclass
class EditBlock:
    """One intervention applied to some of a batch's latents: rows ``samples`` of the
    batch's activations, edited by ``edit(acts, samples)`` (which may change ``acts`` in place)."""

    samples: Tensor
    edit: Callable[[Tensor, Tensor], Tensor]


def run_edits(runner: GeneratorRunner, seg: Segmenter, acts: Tensor, z: Tensor, blocks: Sequence[EditBlock],
              rows: int) -> Iterator[tuple[int, slice, Tensor, Tensor]]:
    """Render and segment every block's edited images, ``rows`` images per call of the
    generator's tail and of the segmenter (however small each block is); yields
    ``(block number, rows of the block, images, labels)`` piece by piece, in block order."""
    pieces: list[tuple[int, slice]] = []
    count = 0

    def flush():
        edited = torch.cat([blocks[j].edit(acts[blocks[j].samples[s]].clone(), blocks[j].samples[s])
                            for j, s in pieces])
        zs = torch.cat([z[blocks[j].samples[s]] for j, s in pieces])
        images, labels = runner.render(edited, zs, seg)
        out, at = [], 0
        for j, s in pieces:
            k = s.stop - s.start
            out.append((j, s, images[at:at + k], labels[at:at + k]))
            at += k
        return out

    for j, block in enumerate(blocks):
        lo = 0
        while lo < len(block.samples):
            hi = min(len(block.samples), lo + rows - count)
            pieces.append((j, slice(lo, hi)))
            count += hi - lo
            lo = hi
            if count >= rows:
                yield from flush()
                pieces, count = [], 0
    if pieces:
        yield from flush()


def _rows(codes: Tensor | None, samples: Tensor) -> Tensor | None:
    """The codes of a batch's rows ``samples`` (None for the units)."""
    return None if codes is None else codes[samples.to(codes.device)]


def _zero_units(units: Sequence[int], directions: Directions = UNITS,
                codes: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Remove the directions ``units`` (units: zeroed; features: ``a - z_f d_f``, with the
    batch's ``codes`` ``directions.codes(acts)``)."""
    idx = torch.as_tensor(list(units), dtype=torch.long)

    def edit(a: Tensor, samples: Tensor) -> Tensor:
        keep = torch.ones(len(a), directions.count(a.shape[1]), device=a.device)
        keep[:, idx.to(a.device)] = 0
        return directions.keep(a, _rows(codes, samples), keep)
    return edit


def _zero_per_sample(mask: Tensor, directions: Directions = UNITS,
                     codes: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Remove, in each row, the directions ``mask[sample]`` (bool ``[samples, directions]``) marks."""
    def edit(a: Tensor, samples: Tensor) -> Tensor:
        return directions.keep(a, _rows(codes, samples), ~mask[samples].to(a.device))
    return edit


def _unchanged(a: Tensor, samples: Tensor) -> Tensor:
    return a


# ============================================================================ ablation
def random_unit_sets(units_total: int, sizes: Sequence[int], draws: int, seed: int) -> dict[int, list[list[int]]]:
    """``draws`` random sets of ``n`` units for every size ``n`` (seeded)."""
    rng = np.random.default_rng(seed)
    return {n: [rng.choice(units_total, size=n, replace=False).tolist() for _ in range(draws)] for n in sizes}


def ablation_experiment(runner: GeneratorRunner, seg: Segmenter, concept: str, iou_row: np.ndarray,
                        cfg: GeneratorExperimentConfig, z: Tensor, acts_batches: list[Tensor],
                        progress: bool = False, directions: Directions = UNITS) -> tuple[dict, dict]:
    """Remove the top-N units of ``concept``; returns (result, data for the strips).

    ``directions``: what is removed, the units (default) or a basis's features (``iou_row``
    then has one IoU per feature, and "unit" below reads "feature").

    The random baseline of each N: ``random_draws`` random sets of N units, latent ``i``
    ablated with set ``i mod random_draws`` (each set on its own slice of the latents, so the
    baseline costs one image per latent and N, not ``random_draws``; the mean still averages
    over every set and every latent, see :data:`RANDOM_BASELINE_RULE`)."""
    units_total = directions.count(acts_batches[0].shape[1])
    sizes = _sizes(cfg.top_n, units_total)
    n_main = min(cfg.units, units_total)
    if n_main not in sizes:
        sizes = sorted(set(sizes) | {n_main})
    ranked = _concept_units(iou_row, max(sizes))
    draws = max(1, cfg.random_draws)
    random_sets = random_unit_sets(units_total, sizes, draws, cfg.seed)
    total = sum(len(a) for a in acts_batches)
    draw_of = torch.arange(total) % draws                   # latent i -> its random set
    random_masks = {}
    for n in sizes:
        m = torch.zeros(draws, units_total, dtype=torch.bool)
        for d, units in enumerate(random_sets[n]):
            m[d, units] = True
        random_masks[n] = m[draw_of]                        # [total, units]
    cnum, clayer = seg.number(concept), seg.layer_of(concept)
    px = None
    base_frac = torch.zeros(total)
    top_frac = {n: torch.zeros(total) for n in sizes}
    rnd_frac = {n: torch.zeros(total) for n in sizes}      # latent i, with its random set
    became = torch.zeros(len(seg.concepts) + 1, dtype=torch.long)
    starts = np.cumsum([0] + [len(a) for a in acts_batches]).tolist()
    mine = distributed.split_items(list(range(len(acts_batches))))   # this process's batches
    for bi in tqdm(mine, desc=f"ablate {concept}", disable=not progress, leave=False):
        a, start = acts_batches[bi], starts[bi]
        b = len(a)
        zb = z[start:start + b]
        rows = torch.arange(b)
        codes = directions.codes(a)
        blocks = [EditBlock(rows, _unchanged)]
        blocks += [EditBlock(rows, _zero_units(ranked[:n], directions, codes)) for n in sizes]
        blocks += [EditBlock(rows, _zero_per_sample(random_masks[n][start:start + b], directions, codes))
                   for n in sizes]
        m0 = None
        for j, s, imgs, lab in run_edits(runner, seg, a, zb, blocks, runner.rows or cfg.batch_size):
            mask = lab[:, clayer] == cnum
            frac = mask.flatten(1).float().mean(1).cpu()
            gs = slice(start + s.start, start + s.stop)
            if j == 0:
                px = mask[0].numel()
                base_frac[gs] = frac
                m0 = mask if m0 is None else torch.cat([m0, mask])
            elif j <= len(sizes):
                n = sizes[j - 1]
                top_frac[n][gs] = frac
                if n == n_main:
                    gone = m0[s] & ~mask
                    fin = finest_labels(lab, seg)[gone]
                    became += torch.bincount(fin.flatten().cpu(), minlength=len(seg.concepts) + 1)
            else:
                rnd_frac[sizes[j - 1 - len(sizes)]][gs] = frac
    if distributed.active():   # each process filled its batches' entries: the sums are the whole
        px = max(v for v in distributed.gather_objects(px) if v is not None)
        base_frac, became = distributed.sum_over_ranks([base_frac, became])
        top_frac = dict(zip(sizes, distributed.sum_over_ranks([top_frac[n] for n in sizes])))
        rnd_frac = dict(zip(sizes, distributed.sum_over_ranks([rnd_frac[n] for n in sizes])))
    base = float(base_frac.mean())

    def drop(f: float, b: float = base) -> float | None:
        return None if b <= 0 else 1.0 - f / b

    curve = []
    for n in sizes:
        f = float(top_frac[n].mean())
        rf = float(rnd_frac[n].mean())
        per_draw = [drop(float(rnd_frac[n][draw_of == d].mean()), float(base_frac[draw_of == d].mean()))
                    for d in range(min(draws, total))]
        per_draw = [v for v in per_draw if v is not None]
        curve.append({"n": n, "fraction": f, "drop": drop(f), "random_fraction": rf,
                      "random_drop": drop(rf),
                      "random_drop_min": min(per_draw) if per_draw else None,
                      "random_drop_max": max(per_draw) if per_draw else None,
                      "random_units": random_sets[n]})
    fin_names = ["-"] + [name for name, _ in seg.concepts]
    became_list = []
    if became.sum() > 0:
        tot = float(became.sum())
        for i in torch.argsort(became, descending=True)[:8].tolist():
            if became[i] > 0:
                became_list.append({"label": fin_names[i], "fraction": float(became[i]) / tot})
    result = {
        "concept": concept, "category": seg.category_of(concept), "units": ranked[:max(sizes)],
        "unit_ious": [float(iou_row[u]) for u in ranked[:max(sizes)]],
        "samples": total, "pixels_per_image": px, "baseline_fraction": base, "n_main": n_main,
        "random_rule": RANDOM_BASELINE_RULE, "curve": curve, "became": became_list,
    }
    # the strip: the latents with the most of the concept, drawn again (cheaper than keeping
    # every image of the sweep)
    show = torch.argsort(base_frac, descending=True, stable=True)[:cfg.strip_samples]
    shown = torch.cat(acts_batches)[show]
    ablated = _zero_units(ranked[:n_main], directions, directions.codes(shown))(shown.clone(), torch.arange(len(show)))
    return result, {"before": runner.images(shown, z[show]).cpu(), "after": runner.images(ablated, z[show]).cpu(),
                    "z": z[show],
                    "mask_concept": concept, "units": ranked, "sizes": sizes}


# ============================================================================ insertion
def unit_quantiles(runner: GeneratorRunner, z: Tensor, q: float, batch_size: int,
                   directions: Directions = UNITS) -> Tensor:
    """Each unit's (1 - q) quantile of activation over the maps of latents ``z``; with a
    basis's ``directions``, each feature's quantile of its code."""
    tq = None
    for i in range(0, len(z), batch_size):
        a = runner.acts(z[i:i + batch_size])
        if not directions.units:
            a = directions.codes(a)
        if tq is None:
            tq = TopQuantile(a.shape[1], q, len(z) * a.shape[2] * a.shape[3], device=a.device)
        tq.add(a.transpose(0, 1).reshape(a.shape[1], -1))
    return tq.thresholds().float()


def _positions(h: int, w: int, r: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, h - r + 1, r) for x in range(0, w - r + 1, r)]


def _set_region(units: Sequence[int], values: Tensor, y: int, x: int, r: int, directions: Directions = UNITS,
                codes: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Set the directions ``units`` to their ``values`` inside the ``r`` x ``r`` square at
    ``(y, x)`` (units: their values; features: their codes, ``a + (v - z_f) d_f``)."""
    idx = torch.as_tensor(list(units), dtype=torch.long)

    def edit(a: Tensor, samples: Tensor) -> Tensor:
        return directions.set(a, _rows(codes, samples), idx, values[idx], _square(a, [(y, x)], r))
    return edit


def _square(a: Tensor, corners: Sequence[tuple[int, int]], r: int) -> Tensor:
    """Bool ``[len(corners), 1, h, w]`` (one row: broadcast over ``a``'s rows): the ``r`` x ``r``
    square at each corner ``(y, x)`` of ``a``'s ``h`` x ``w`` map."""
    where = torch.zeros(len(corners), 1, *a.shape[2:], dtype=torch.bool, device=a.device)
    for j, (y, x) in enumerate(corners):
        where[j, :, y:y + r, x:x + r] = True
    return where


def insertion_experiment(runner: GeneratorRunner, seg: Segmenter, concept: str, iou_row: np.ndarray,
                         values: Tensor, cfg: GeneratorExperimentConfig, z: Tensor,
                         acts_batches: list[Tensor], progress: bool = False,
                         directions: Directions = UNITS) -> tuple[dict, dict]:
    """Set the top-N units of ``concept`` high in a region at every grid position
    (``directions``: the units, or a basis's features with ``values`` per feature).

    N = ``units`` runs on every latent; the curve over the other N and the random-units
    baseline on the first ``curve_samples`` latents (at every position)."""
    units_total, h, w = acts_batches[0].shape[1:]
    units_total = directions.count(units_total)
    r = cfg.region or max(1, min(h, w) // 8)
    if r > min(h, w):
        raise DissectError(f"--insert-region {r} cells is larger than the layer's {h}x{w} map")
    pos = _positions(h, w, r)
    sizes = _sizes(cfg.top_n, units_total)
    n_main = min(cfg.units, units_total)
    if n_main not in sizes:
        sizes = sorted(set(sizes) | {n_main})
    ranked = _concept_units(iou_row, max(sizes))
    rng = np.random.default_rng(cfg.seed + 1)
    random_units = rng.choice(units_total, size=n_main, replace=False).tolist()
    names = ["-"] + [name for name, _ in seg.concepts]
    cnum, clayer = seg.number(concept), seg.layer_of(concept)
    mine = set(distributed.split_items(list(range(len(pos)))))   # this process's positions
    records: dict[tuple[int, int], dict] = {}   # (batch, position) -> its insertions' gains
    start = 0
    img_h = img_w = None
    for bi, a in enumerate(tqdm(acts_batches, desc=f"insert {concept}", disable=not progress, leave=False)):
        b = len(a)
        zb = z[start:start + b]
        before = runner.images(a, zb)
        lab0 = seg.segment(before)
        img_h, img_w = before.shape[-2:]
        fy, fx = img_h / h, img_w / w
        is0 = lab0[:, clayer] == cnum
        fin0 = finest_labels(lab0, seg)
        every = torch.arange(b)
        codes = directions.codes(a)
        few = torch.arange(max(0, min(b, cfg.curve_samples - start)))
        blocks, kinds = [], []
        for p, (y, x) in enumerate(pos):
            if p not in mine:
                continue
            y0, y1 = int(round(y * fy)), int(round((y + r) * fy))
            x0, x1 = int(round(x * fx)), int(round((x + r) * fx))
            region = fin0[:, y0:y1, x0:x1].flatten(1)
            records[bi, p] = {"start": start, "context": torch.mode(region, dim=1).values.cpu().tolist(),
                              "added": {}}
            for n in sizes + ["random"]:
                rows = every if n == n_main else few
                if len(rows) == 0:
                    continue
                units = random_units if n == "random" else ranked[:n]
                blocks.append(EditBlock(rows, _set_region(units, values, y, x, r, directions, codes)))
                kinds.append((p, n))
        for j, s, imgs, lab in run_edits(runner, seg, a, zb, blocks, runner.rows or cfg.batch_size):
            p, n = kinds[j]
            rows = blocks[j].samples[s]
            is1 = lab[:, clayer] == cnum
            gained = (is1 & ~is0[rows]).flatten(1).sum(1).float().cpu()
            got = records[bi, p]["added"]
            got[n] = gained if n not in got else torch.cat([got[n], gained])
        start += b
    records = distributed.merge_items(records)
    # every insertion in the order (batch, position, latent), whichever process made it
    added = {n: [] for n in sizes}
    added_random = []
    contexts: list[int] = []
    heat = np.zeros((len(pos),))
    heat_n = np.zeros((len(pos),))
    row_sample: list[int] = []    # per insertion at n_main (same order as contexts): sample, position
    row_pos: list[int] = []
    for bi, p in sorted(records):
        rec = records[bi, p]
        contexts += rec["context"]
        row_sample += range(rec["start"], rec["start"] + len(rec["context"]))
        row_pos += [p] * len(rec["context"])
        for n, gained in rec["added"].items():
            if n == "random":
                added_random.append(gained)
                continue
            added[n].append(gained)
            if n == n_main:
                heat[p] += float(gained.sum())
                heat_n[p] += len(gained)
    main = torch.cat(added[n_main])
    ctx_arr = np.array(contexts)
    table = []
    for c in np.unique(ctx_arr):
        sel = torch.from_numpy(ctx_arr == c)
        table.append({"context": names[int(c)], "count": int(sel.sum()),
                      "added_pixels": float(main[sel].mean()),
                      "success_rate": float((main[sel] > 0).float().mean())})
    table.sort(key=lambda t: -t["added_pixels"])
    curve = [{"n": n, "added_pixels": float(torch.cat(added[n]).mean())} for n in sizes]
    result = {
        "concept": concept, "category": seg.category_of(concept), "units": ranked[:max(sizes)],
        "unit_ious": [float(iou_row[u]) for u in ranked[:max(sizes)]],
        "values": [float(values[u]) for u in ranked[:max(sizes)]],
        "value_rule": (f"each unit's {100 * (1 - cfg.insert_quantile):g}th-percentile activation over the probe set"
                       if directions.units else
                       f"each feature's {100 * (1 - cfg.insert_quantile):g}th-percentile code over the probe set"),
        "region_cells": r, "region_pixels": [int(round(r * img_h / h)), int(round(r * img_w / w))],
        "layer_size": [h, w], "positions": len(pos), "samples": start, "n_main": n_main,
        "insertions": int(len(main)), "curve": curve, "curve_samples": min(start, cfg.curve_samples),
        "random_units": random_units, "random_added_pixels": float(torch.cat(added_random).mean()),
        "contexts": table,
        "heatmap": (heat / np.maximum(heat_n, 1)).reshape(len(range(0, h - r + 1, r)), -1).tolist(),
    }
    # strip: the insertions whose region held the context where insertion works best
    ranked_ctx = [t["context"] for t in table if t["count"] >= 5] or [t["context"] for t in table]
    target = names.index(ranked_ctx[0]) if ranked_ctx else None
    pick: list[int] = []          # insertion rows: the first of each sample in the target context
    seen_img: set[int] = set()
    for k, (c, i) in enumerate(zip(contexts, row_sample)):
        if (target is not None and c != target) or i in seen_img:
            continue
        seen_img.add(i)
        pick.append(k)
        if len(pick) >= cfg.strip_samples:
            break
    result["strip_context"] = names[target] if target is not None else None
    # re-draw only the strip's insertions (keeping every image of the sweep would cost memory)
    ids = torch.as_tensor([row_sample[k] for k in pick], dtype=torch.long)
    all_acts = torch.cat(acts_batches)
    a, zs = all_acts[ids], z[ids]
    regions = []
    for k in pick:
        y, x = pos[row_pos[k]]
        regions.append((int(round(y * img_h / h)), int(round((y + r) * img_h / h)),
                        int(round(x * img_w / w)), int(round((x + r) * img_w / w))))
    if not pick:
        empty = torch.zeros(0, 3, img_h, img_w)
        return result, {"before": empty, "after": empty, "regions": []}
    idx = torch.as_tensor(ranked[:n_main])
    edited = directions.set(a, directions.codes(a), idx, values[idx], _square(a, [pos[row_pos[k]] for k in pick], r))
    return result, {"before": runner.images(a, zs).cpu(), "after": runner.images(edited, zs).cpu(),
                    "regions": regions}


# ============================================================================ report
def generator_experiments(loaded, layer: str, iou: np.ndarray, seg: Segmenter, probe_latents: np.ndarray,
                          cfg: GeneratorExperimentConfig, out_dir: Path, rel_prefix: str,
                          progress: bool = True, directions: Directions = UNITS, strip_prefix: str = "") -> dict:
    """Ablation and insertion for one dissected layer; strips written under ``out_dir``.

    ``iou``: the layer's ``[units, labels]`` IoU from the dissection, whose label numbers
    are the segmenter's (the probe set was labeled by ``seg``). ``directions``: what the
    experiments remove and set, the units (default) or a basis's features (then ``iou`` is
    the features' ``[features, labels]`` IoU, the insertion values are the features' code
    quantiles, and the strips' names start with ``strip_prefix``).
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    seg.to(device)
    runner = GeneratorRunner(loaded.module, layer, device, value_range=getattr(loaded, "declared_range", None))
    z_dim = probe_latents.shape[1]
    n_needed = max(cfg.samples, cfg.insert_samples)
    z = sample_z(n_needed, cfg.seed, z_dim)
    acts = [runner.acts(z[i:i + cfg.batch_size]) for i in range(0, len(z), cfg.batch_size)]
    # images rendered and segmented per call: cfg.batch_size on the CPU, from free memory on CUDA
    runner.rows = memory.batch_size(device, cfg.batch_size, _render_bytes(runner, seg, acts[0], z))
    ablate, insert = experiment_concepts(iou, seg, cfg)
    out: dict = {"layer": layer, "how": runner.method, "ablation": [], "insertion": []}

    def take(n):
        keep, total = [], 0
        for a in acts:
            if total >= n:
                break
            keep.append(a[:n - total])
            total += len(keep[-1])
        return keep

    for concept in ablate:
        res, strip = ablation_experiment(runner, seg, concept, iou[:, seg.number(concept)], cfg,
                                         z, take(cfg.samples), progress, directions)
        res["animation_frames"] = ["before"] + [f"top {n} removed" for n in strip["sizes"] if n <= res["n_main"]]
        out["ablation"].append(res)
        if not distributed.is_main():   # rank 0 draws the strips
            continue
        masks = list((seg.segment(strip["before"])[:, seg.layer_of(concept)] == seg.number(concept)).cpu())
        frames = [strip["before"]]
        shown = runner.acts(strip["z"])
        codes = directions.codes(shown)
        for n in strip["sizes"]:
            if n > res["n_main"]:
                break
            ed = _zero_units(strip["units"][:n], directions, codes)(shown.clone(), torch.arange(len(shown)))
            frames.append(runner.images(ed, strip["z"]).cpu())
        png, gif = write_strip(out_dir, f"{strip_prefix}ablate-{slugify(concept, 'concept')}", strip["before"], strip["after"],
                               masks=masks, frames=frames)
        res["strip"], res["animation"] = f"{rel_prefix}/{png}", f"{rel_prefix}/{gif}"
    if insert:
        values = unit_quantiles(runner, torch.from_numpy(np.array(probe_latents[:1024], dtype=np.float32)),
                                cfg.insert_quantile, cfg.batch_size, directions)
        for concept in insert:
            res, strip = insertion_experiment(runner, seg, concept, iou[:, seg.number(concept)], values,
                                              cfg, z, take(cfg.insert_samples), progress, directions)
            if len(strip["before"]) and distributed.is_main():
                png, gif = write_strip(out_dir, f"{strip_prefix}insert-{slugify(concept, 'concept')}", strip["before"], strip["after"],
                                       boxes=strip["regions"])
                res["strip"], res["animation"] = f"{rel_prefix}/{png}", f"{rel_prefix}/{gif}"
            out["insertion"].append(res)
    return out


def _render_bytes(runner: GeneratorRunner, seg: Segmenter, acts: Tensor, z: Tensor) -> int | None:
    """The device memory one rendered and segmented image costs (None on the CPU)."""
    if runner.device.type != "cuda":
        return None
    k = min(4, len(acts))
    value_range = runner.value_range   # (left as it was: the experiments' first images decide it)
    peak = memory.peak_bytes(runner.device, lambda: runner._render(acts[:k].clone(), z[:k], seg))
    runner.value_range = value_range
    return max(1, peak // k) + int(acts[0].numel()) * 4


def intervention_layers(layers: Sequence[dict], wanted: Sequence[str]) -> list[dict]:
    """The dissected layers (results.json layer records) to intervene on: those ``wanted``
    names (path or alias), every one for ``["all"]``, the first one when nothing is wanted."""
    if list(wanted) == ["all"]:
        return list(layers)
    if not wanted:
        return list(layers)[:1]
    names = {n for layer in layers for n in (layer["name"], layer.get("alias")) if n}
    for w in wanted:
        if w not in names:
            raise DissectError(f"--intervene-layer {w!r} is not a dissected layer "
                               f"({', '.join(layer_title(layer) for layer in layers)})")
    return [layer for layer in layers if layer["name"] in wanted or layer.get("alias") in wanted]


def report_config(loaded, seg: Segmenter, config: GeneratorExperimentConfig | None) -> GeneratorExperimentConfig:
    """``config`` (default: the defaults) with, when it names no concepts, those of the model's
    ``spec.experiments`` that ``seg`` knows."""
    config = config or GeneratorExperimentConfig()
    experiments = loaded.spec.experiments if loaded.spec is not None else {}
    if config.ablate is None and config.insert is None and experiments:
        known = {name for name, _ in seg.concepts}  # the spec's concepts, where this segmenter has them
        config = replace(config, ablate=tuple(c for c in experiments.get("ablate", ()) if c in known) or None,
                         insert=tuple(c for c in experiments.get("insert", ()) if c in known) or None)
    return config


def generator_for_report(loaded, layers: Sequence[dict], stats: Mapping[str, LayerStats],
                         dataset: BrodenDataset, seg: Segmenter, out_dir: Path,
                         config: GeneratorExperimentConfig | None = None, progress: bool = True) -> dict:
    """Ablation and insertion, with strips, on the generator's intervention layers: the
    results' ``generator`` record (see docs/results-schema.md).

    ``layers`` are the results.json layer records (``name``, ``alias``, ``slug``) and ``stats``
    the dissection's tallies by layer path, on ``dataset``, the generated probe set that
    ``seg`` labeled. Without concepts in ``config``, they come from the model's
    ``spec.experiments`` (else from the dissection); the layers are ``config.layers``, else the
    spec's, else the first dissected one. Strips are written under
    ``out_dir/interventions/<layer slug>``. A layer asked for that was not dissected is a
    :class:`~dissect.errors.DissectError`.
    """
    config = report_config(loaded, seg, config)
    experiments = loaded.spec.experiments if loaded.spec is not None else {}
    primary = dataset.index.primary_category_tensor()
    results = []
    for layer in intervention_layers(layers, list(config.layers) or list(experiments.get("layers", ()))):
        iou = stats[layer["name"]].iou(primary, len(dataset.index.categories)).numpy()
        res = generator_experiments(loaded, layer["name"], iou, seg, dataset.latents, config,
                                    out_dir / "interventions" / layer["slug"],
                                    f"interventions/{layer['slug']}", progress=progress)
        res["slug"] = layer["slug"]
        results.append(res)
    return {"params": config.to_dict(), "segmenter": seg.provenance(), "layers": results}
