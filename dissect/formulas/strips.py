"""A formula's parts on a unit's top images (issue 23): which pixels each concept of the
formula covers, and the formula itself, with the unit's region outlined on every tile.

One row of tiles per part (``tree``, ``AND NOT green``, ...) and a last row for the whole
formula. A row's pixels are exactly those the counts use: the image's labels prepared as in
the IoU pass (:func:`~dissect.stats.iou.prepare_labels`), grouped into atoms and the part's
(or formula's) truth evaluated per atom (:mod:`dissect.stats.formula_counts`), at the label
resolution, then enlarged (nearest) to the tile. An image not annotated in any category of
a row's concepts is not scored for it (``docs/method.md``): its tile is dimmed whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..atomic import clean_leftovers
from ..data.broden import BrodenDataset
from ..experiments.dissection import LayerStats
from ..experiments.strips import highlight, outline, save_row, strip_tile, tile_images, unit_regions
from ..stats.formula_counts import Atoms, Formula, evaluate
from ..stats.iou import prepare_labels

#: The outline of a part's pixels (the unit's region keeps the strips' yellow).
PART_OUTLINE = (0, 200, 255)
#: The largest tile of a formula row (px): the rows are a smaller companion of the unit strip.
MAX_TILE = 112


def part_formulas(f: Formula) -> list[Formula]:
    """The rows of formula ``f``: each concept alone, then ``f`` itself."""
    return [((c,), ()) for c in f[0]] + [f]


def formula_pixels(dataset: BrodenDataset, image: int, rows: list[Formula]) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, scored)`` of probe image ``image``: bool ``[rows, sh, sw]``, where each formula
    of ``rows`` holds at the label resolution, and bool ``[rows]``, whether the image is
    annotated in a category of the row's concepts (the images a formula is scored on)."""
    index = dataset.index
    record = dataset.indices[image]
    sh, sw = dataset.label_size
    planes = torch.from_numpy(dataset.pixel_labels(record).astype(np.int64)).unsqueeze(0)
    image_labels = torch.tensor(index.records[record].image_labels, dtype=torch.long).view(1, -1)
    prim = index.primary_category_tensor()
    labels = prepare_labels(planes, image_labels, index.num_labels, prim, len(index.categories),
                            index.segmenter_labeled)
    atoms = Atoms(labels, index.num_labels)
    truth = evaluate(rows, atoms.present)[:, atoms.of_pixel].view(len(rows), sh, sw)
    pattern = int(atoms.pattern[0]) if atoms.num else 0
    scored = [bool(pattern & sum({1 << int(prim[c]) for c in f[0]})) for f in rows]
    return truth.numpy(), np.asarray(scored)


def _enlarge(mask: np.ndarray, tile: int) -> np.ndarray:
    """A label-resolution mask at the tile's size (nearest)."""
    if mask.shape == (tile, tile):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((tile, tile), Image.NEAREST)) > 0


def render_formula_strips(stats: LayerStats, dataset: BrodenDataset, formulas: list[Formula | None],
                          out_dir: Path, layer_slug: str, tile_size: int = 0, quality: int = 90,
                          progress: bool = True) -> list[list[str] | None]:
    """Per unit whose formula joins two or more concepts, the paths (relative to ``out_dir``)
    of its rows (:func:`part_formulas`: each part, then the formula) over its top images; None
    for the others."""
    tile = min(strip_tile(dataset, tile_size), MAX_TILE)
    folder = out_dir / "units" / layer_slug
    folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    get = tile_images(dataset, tile)
    out: list[list[str] | None] = []
    todo = [k for k, f in enumerate(formulas) if f is not None and len(f[0]) > 1]
    bar = tqdm(total=len(todo), desc=f"formula images {layer_slug}", unit="unit", disable=not progress, leave=False)
    for k, f in enumerate(formulas):
        if k not in todo:
            out.append(None)
            continue
        rows = part_formulas(f)
        regions = unit_regions(stats, k, tile).numpy()
        tiles: list[list[np.ndarray]] = [[] for _ in rows]
        for j, i in enumerate(stats.top_indices[k].tolist()):
            truth, scored = formula_pixels(dataset, i, rows)
            for r in range(len(rows)):
                part = _enlarge(truth[r], tile) & bool(scored[r])
                tiles[r].append(outline(highlight(get(i), part, PART_OUTLINE), regions[j]))
        rels = []
        for r, row in enumerate(tiles):
            rel = f"units/{layer_slug}/unit-{k:04d}-formula-{r}.jpg"
            save_row(out_dir / rel, row, quality)
            rels.append(rel)
        out.append(rels)
        bar.update()
    bar.close()
    return out
