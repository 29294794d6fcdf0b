"""Compositional labels (issue 23): our formula search against a plain reference of
compexp's algorithm (a mask operation per candidate formula), and the scale run.

1. Side by side: the same synthetic Broden-like probe set and units, length 3, beam 5,
   every concept: the reference (dissect.formulas.reference, one mask per candidate as
   compexp does) and our search (dissect.formulas.search), their IoUs compared and the time
   per unit printed.
2. Scale: 512 units with synthetic masks of 0.5% sparsity, length 3, beam 5, every concept
   (1,376 Broden-like labels: Broden's label counts per category) on ``--images`` images (default 22,210, Broden's
   size) with 112 px labels. The labels are synthetic Broden-like maps, made per batch from
   a seed (the same in every pass); their making is timed apart and left out of the search
   time. ``--images 640`` measures a fraction; the full size is then extrapolated (linear in
   images) and says so.

    python3 benchmarks/compose.py --small          # a quick check (side by side, 256 images at scale)
    python3 benchmarks/compose.py                  # the full scale run
    python3 benchmarks/compose.py --images 640     # a measured fraction, extrapolated
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the checkout on sys.path)
import numpy as np
import torch

from dissect.formulas.reference import Reference
from dissect.formulas.search import FormulaOptions, LayerSearch
from dissect.stats.iou import prepare_labels

BRODEN_IMAGES = 22210
#: Broden's categories and their label counts (broden1_224: 1,197 concepts).
CATEGORIES = {"color": 11, "object": 584, "part": 234, "material": 32, "scene": 468, "texture": 47}
SPARSITY = 0.005


class Labels:
    """Synthetic Broden-like labels: per image an object map (a few regions of Zipf-drawn
    objects), parts inside some of them, materials, colors, one scene and sometimes a texture."""

    def __init__(self, size: int = 112):
        self.size = size
        self.first = {}
        n = 1
        for cat, count in CATEGORIES.items():
            self.first[cat] = n
            n += count
        self.num_labels = n
        self.prim = torch.zeros(n, dtype=torch.long)
        for g, (cat, count) in enumerate(CATEGORIES.items()):
            self.prim[self.first[cat]:self.first[cat] + count] = g

    def _draw(self, rng, cat: int, shape, zero: float = 0.0) -> np.ndarray:
        count = CATEGORIES[cat]
        p = 1.0 / np.arange(1, count + 1)
        p /= p.sum()
        labels = self.first[cat] + rng.choice(count, size=shape, p=p)
        if zero:
            labels = np.where(rng.random(shape) < zero, 0, labels)
        return labels

    def _up(self, grid: np.ndarray) -> np.ndarray:
        r = self.size // grid.shape[-1]
        return np.kron(grid, np.ones((r, r), dtype=grid.dtype))

    def batch(self, seed: int, b: int):
        """Pixel labels long ``[b, 4, size, size]`` and whole-image labels long ``[b, 2]``."""
        rng = np.random.default_rng(seed)
        pix = np.zeros((b, 4, self.size, self.size), dtype=np.int64)
        img = np.zeros((b, 2), dtype=np.int64)
        for i in range(b):
            pix[i, 0] = self._up(self._draw(rng, "object", (8, 8)))
            pix[i, 1] = self._up(self._draw(rng, "part", (14, 14), zero=0.7))
            pix[i, 2] = self._up(self._draw(rng, "material", (8, 8), zero=0.5))
            pix[i, 3] = self._up(self._draw(rng, "color", (28, 28)))
            img[i, 0] = self._draw(rng, "scene", ())
            img[i, 1] = self._draw(rng, "texture", ()) if rng.random() < 0.25 else 0
        return torch.from_numpy(pix), torch.from_numpy(img)


def unit_masks(seed: int, b: int, units: int, size: int):
    """Sparse synthetic unit masks, about ``SPARSITY`` of all pixels on: each unit fires on
    5% of images, on a square blob of 10% of the image there. As (image, unit, masks)."""
    g = torch.Generator().manual_seed(seed)
    on = torch.rand((b, units), generator=g) < 0.05
    img, unit = on.nonzero(as_tuple=True)
    side = int(round(size * np.sqrt(SPARSITY / 0.05)))
    y = torch.randint(0, size - side + 1, (img.numel(),), generator=g)
    x = torch.randint(0, size - side + 1, (img.numel(),), generator=g)
    ar = torch.arange(size)
    rows = (ar.view(1, -1) >= y.view(-1, 1)) & (ar.view(1, -1) < (y + side).view(-1, 1))
    cols = (ar.view(1, -1) >= x.view(-1, 1)) & (ar.view(1, -1) < (x + side).view(-1, 1))
    return img, unit, rows.unsqueeze(2) & cols.unsqueeze(1)


def run_search(labels: Labels, images: int, units: int, batch: int, seed: int, length: int = 3,
               beam: int = 5, keep_batches: bool = False):
    """Our search over synthetic data; returns (result, seconds searching, seconds making data,
    passes, the label batches when ``keep_batches``)."""
    valid = np.ones(labels.num_labels, dtype=bool)
    search = LayerSearch(units, labels.num_labels, labels.prim, valid, np.zeros(units, dtype=bool), length,
                         FormulaOptions(length=length, beam=beam))
    making = counting = absorbing = count_wall = absorb_wall = 0.0
    passes, kept = 0, []
    while (counter := search.counter()) is not None:
        passes += 1
        for j, start in enumerate(range(0, images, batch)):
            b = min(batch, images - start)
            t0 = time.process_time()
            pix, img_labels = labels.batch(seed + j, b)
            lb = prepare_labels(pix, img_labels, labels.num_labels, labels.prim, len(CATEGORIES))
            img, unit, masks = unit_masks(seed + j, b, units, labels.size)
            t1, w1 = time.process_time(), time.perf_counter()
            counter.add(img, unit, masks, lb)
            counting += time.process_time() - t1
            count_wall += time.perf_counter() - w1
            making += t1 - t0
            if keep_batches and passes == 1:
                kept.append((lb, img, unit, masks))
        t0, w0 = time.process_time(), time.perf_counter()
        search.absorb(counter)
        absorbing += time.process_time() - t0
        absorb_wall += time.perf_counter() - w0
    return search.result(), (counting, absorbing, count_wall, absorb_wall), making, passes, kept


def side_by_side(images: int, units: int, size: int) -> None:
    labels = Labels(size)
    res, (count, absorb, _, _), _, _, kept = run_search(labels, images, units, batch=16, seed=100, keep_batches=True)
    secs = count + absorb
    valid = np.ones(labels.num_labels, dtype=bool)
    ref = Reference.from_batches([k[0] for k in kept], labels.num_labels, labels.prim, valid)
    hw = size * size
    masks = torch.zeros((units, images, hw), dtype=torch.bool)
    offset = 0
    for lb, img, unit, m in kept:
        masks[unit, img + offset] = m.flatten(1)
        offset += lb.pixel.shape[0]
    t0 = time.process_time()
    worst = 0.0
    for k in range(units):
        got = ref.search(masks[k], 3, 5)
        worst = max(worst, abs((got[0][1] if got else 0.0) - res.ious[k]))
    ref_secs = time.process_time() - t0
    print(f"side by side: {images} images, {size} px labels, {labels.num_labels - 1} concepts, {units} units, "
          f"length 3, beam 5")
    print(f"  reference (a mask operation per candidate): {ref_secs / units:8.3f} s per unit")
    print(f"  ours (counts by atoms):                     {secs / units:8.3f} s per unit "
          f"({ref_secs / max(secs, 1e-9):.0f}x faster)")
    print(f"  largest IoU difference between the two: {worst:.2e}")


def scale(images: int, units: int, batch: int) -> None:
    labels = Labels(112)
    wall = time.time()
    res, (count, absorb, count_wall, absorb_wall), making, passes, _ = run_search(labels, images, units,
                                                                                  batch=batch, seed=1)
    search_wall = count_wall + absorb_wall
    wall = time.time() - wall
    secs = count + absorb
    found = sum(1 for f in res.formulas if f is not None)
    print(f"scale: {units} units, length 3, beam 5, {labels.num_labels - 1} concepts, {images} images at 112 px, "
          f"{passes} passes, {torch.get_num_threads()} threads")
    print(f"  search: {search_wall:.1f} s wall, {secs:.1f} s CPU time of this process ({count:.1f} s counting, "
          f"{absorb:.1f} s choosing the beams); the whole run {wall:.1f} s wall, including {making:.1f} s CPU "
          f"making the synthetic data; {found} units got a formula")
    if images < BRODEN_IMAGES:
        scale_up = BRODEN_IMAGES / images
        full = count_wall * scale_up + absorb_wall
        print(f"  extrapolated to {BRODEN_IMAGES} images (linear in images, from this measured "
              f"{images / BRODEN_IMAGES:.1%}; the beam choice does not grow with images): "
              f"{full:.0f} s = {full / 60:.1f} min wall (goal: under 30 min)")
    else:
        print(f"  the search took {search_wall / 60:.1f} min wall, {secs / 60:.1f} min CPU (goal: under 30 min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a quick check: side by side, then 256 images at scale")
    ap.add_argument("--images", type=int, default=BRODEN_IMAGES, help="images of the scale run")
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--no-side-by-side", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not args.no_side_by_side:
        side_by_side(images=32 if args.small else 64, units=2 if args.small else 4, size=56)
    scale(256 if args.small else args.images, args.units, args.batch)


if __name__ == "__main__":
    main()
