"""A formula's parts on a unit's top images (issue 23): which pixels each concept of the
formula covers, and the formula itself, with the unit's region outlined on every tile.

One row of tiles per part (``tree``, ``AND NOT green``, ...) and a last row for the whole
formula. A row's pixels are exactly those the counts use: the image's labels prepared as in
the IoU pass (:func:`~dissect.stats.iou.prepare_labels`) and the part's (or formula's) truth
evaluated by the counts' own :func:`~dissect.stats.formula_counts.evaluate`, at the label
resolution, then enlarged (nearest) to the tile. An image not annotated in any category of
a row's concepts is not scored for it (``docs/method.md``): its tile is dimmed whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import clean_leftovers
from ..data.broden import BrodenDataset
from ..devices import cpu_threads
from ..experiments.dissection import LayerStats
from ..experiments.strips import highlight, outline, save_row, strip_tile, tile_images, unit_regions
from ..stats.formula_counts import Formula, evaluate
from ..stats.iou import LabelBatch, prepare_labels

#: The outline of a part's pixels (the unit's region keeps the strips' yellow).
PART_OUTLINE = (0, 200, 255)
#: The largest tile of a formula row (px): the rows are a smaller companion of the unit strip.
MAX_TILE = 96
#: How many images' prepared labels are held at once (a few MB at Broden's 112 px).
LABELS_HELD = 256


def part_formulas(f: Formula) -> list[Formula]:
    """The rows of formula ``f``: each concept alone, then ``f`` itself."""
    return [((c,), ()) for c in f[0]] + [f]


def image_labels(dataset: BrodenDataset, image: int) -> LabelBatch:
    """Probe image ``image``'s labels prepared as the IoU pass prepares them (one concept at
    most once per pixel, the categories it is annotated in)."""
    index = dataset.index
    record = dataset.indices[image]
    planes = torch.from_numpy(dataset.pixel_labels(record).astype(np.int64)).unsqueeze(0)
    whole = torch.tensor(index.records[record].image_labels, dtype=torch.long).view(1, -1)
    return prepare_labels(planes, whole, index.num_labels, index.primary_category_tensor(), len(index.categories),
                          index.segmenter_labeled)


def formula_pixels(labels: list[LabelBatch], rows: list[Formula], prim: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, scored)`` of images' prepared ``labels`` (one :class:`LabelBatch` per image):
    bool ``[rows, images, H*W]``, where each formula of ``rows`` holds at the label resolution
    (:func:`~dissect.stats.formula_counts.evaluate`, as the counts evaluate it, on the
    formulas' concepts at each pixel; a whole-image concept covers its image), and bool
    ``[rows, images]``, whether the image is annotated in a category of the row's concepts
    (the images a formula is scored on)."""
    concepts = sorted({c for f in rows for c in f[0]})
    local = {c: j for j, c in enumerate(concepts)}
    want = torch.tensor(concepts, dtype=torch.long)
    pixel = torch.cat([lb.pixel for lb in labels])                                     # [n, L, HW]
    n, hw = pixel.shape[0], pixel.shape[2]
    present = (pixel.unsqueeze(-1) == want).any(dim=1)                                 # [n, HW, C]
    for lb, p in zip(labels, present):   # whole-image concepts (each image its own number of them)
        p |= (lb.image[0].view(-1, 1) == want).any(dim=0)
    truth = evaluate([(tuple(local[c] for c in f[0]), f[1]) for f in rows], present.view(n * hw, -1))
    has = torch.cat([lb.has_cat for lb in labels]) > 0                                # [n, G]
    scored = torch.stack([has[:, sorted({int(prim[c]) for c in f[0]})].any(dim=1) for f in rows])
    return truth.view(len(rows), n, hw).numpy(), scored.numpy()


def _nearest(size: int, tile: int) -> np.ndarray:
    """The source row (or column) of each of a tile's ``tile`` pixels in ``size`` (nearest)."""
    return np.minimum(((np.arange(tile) + 0.5) * size / tile).astype(np.int64), size - 1)


def render_formula_strips(stats: LayerStats, dataset: BrodenDataset, formulas: list[Formula | None],
                          out_dir: Path, layer_slug: str, tile_size: int = 0, quality: int = 90,
                          progress: bool = True) -> list[list[str] | None]:
    """Per unit whose formula joins two or more concepts, the paths (relative to ``out_dir``)
    of its rows (:func:`part_formulas`: each part, then the formula) over its top images; None
    for the others."""
    folder = out_dir / "units" / layer_slug
    folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    draw = _RowPainter(stats, dataset, min(strip_tile(dataset, tile_size), MAX_TILE))
    out: list[list[str] | None] = []
    todo = sum(1 for f in formulas if f is not None and len(f[0]) > 1)
    with cpu_threads(1), tqdm(total=todo, desc=f"formula images {layer_slug}", unit="unit",
                              disable=not progress, leave=False) as bar:   # small tensors: threads are overhead
        for k, f in enumerate(formulas):
            if f is None or len(f[0]) < 2:
                out.append(None)
                continue
            rels = []
            for r, row in enumerate(draw.rows(k, f)):
                rel = f"units/{layer_slug}/unit-{k:04d}-formula-{r}.jpg"
                save_row(out_dir / rel, row, quality, optimize=False)
                rels.append(rel)
            out.append(rels)
            bar.update()
    return out


class _RowPainter:
    """The tiles of a unit's formula rows; the latest images' prepared labels are kept, since
    top images recur across units."""

    def __init__(self, stats: LayerStats, dataset: BrodenDataset, tile: int):
        self.stats, self.dataset, self.tile = stats, dataset, tile
        self.image = tile_images(dataset, tile)
        self.prim = dataset.index.primary_category_tensor()
        self.labels: dict[int, LabelBatch] = {}
        sh, sw = dataset.label_size
        self.ys, self.xs = _nearest(sh, tile), _nearest(sw, tile)

    def _labels(self, i: int) -> LabelBatch:
        if i not in self.labels:
            if len(self.labels) >= LABELS_HELD:
                self.labels.pop(next(iter(self.labels)))
            self.labels[i] = image_labels(self.dataset, i)
        return self.labels[i]

    def rows(self, k: int, f: Formula) -> list[list[np.ndarray]]:
        """Unit ``k``'s rows of tiles for formula ``f``: each part, then ``f`` (all the rows'
        tiles drawn at once)."""
        sh, sw = self.dataset.label_size
        rows = part_formulas(f)
        top = self.stats.top_indices[k].tolist()
        truth, scored = formula_pixels([self._labels(i) for i in top], rows, self.prim)
        parts = truth.reshape(len(rows), len(top), sh, sw)[:, :, self.ys][:, :, :, self.xs]   # [R, n, tile, tile]
        parts &= scored[:, :, None, None]
        images = np.stack([self.image(i) for i in top])                                    # [n, tile, tile, 3]
        tiles = outline(highlight(images, parts, PART_OUTLINE), unit_regions(self.stats, k, self.tile).numpy())
        return [list(r) for r in tiles]
