"""Strips of images, as the site shows them: rows of same-size tiles with a white gap.

* **unit strips** (:func:`render_unit_strips`): each unit's top images from the dissection,
  dimmed outside the unit's region ``S_k > T_k`` and the region outlined (:func:`highlight`,
  NetDissect's look);
* **before/after strips** (:func:`write_strip`): the generator interventions' images before
  and after an edit, one row each, the changed region outlined, as a PNG and an animated GIF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import imageio.v3 as iio
import numpy as np
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from ..atomic import atomic_save, clean_leftovers
from ..data.broden import BrodenDataset
from ..devices import cpu_threads
from .dissection import LayerStats, binarize

GAP = 4                    # white pixels between the tiles of a row, and between rows
OUTLINE = (255, 214, 0)    # the color of a region's outline
STRIP_FRAME_MS = 900       # how long each frame of an animated strip shows


# ------------------------------------------------------------------ tiles and rows
def _edge(mask: np.ndarray, both_sides: bool) -> np.ndarray:
    """The pixels of ``mask`` (``[..., H, W]``) next to a pixel outside it: above or to the
    left of them, or (``both_sides``) in any of the four directions."""
    m = mask.astype(bool)
    edge = np.zeros_like(m)
    vertical, horizontal = m[..., 1:, :] != m[..., :-1, :], m[..., :, 1:] != m[..., :, :-1]
    edge[..., 1:, :] |= vertical
    edge[..., :, 1:] |= horizontal
    if both_sides:
        edge[..., :-1, :] |= vertical
        edge[..., :, :-1] |= horizontal
    return edge & m


def _row(tiles: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Tiles of one height side by side on white, ``gap`` px apart."""
    h = tiles[0].shape[0]
    out = np.full((h, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1), 3), 255, np.uint8)
    x = 0
    for t in tiles:
        out[:, x:x + t.shape[1]] = t
        x += t.shape[1] + gap
    return out


def _stack(rows: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Rows one above the other on white, ``gap`` px apart, left-aligned."""
    w = max(r.shape[1] for r in rows)
    out = np.full((sum(r.shape[0] for r in rows) + gap * (len(rows) - 1), w, 3), 255, np.uint8)
    y = 0
    for r in rows:
        out[y:y + r.shape[0], :r.shape[1]] = r
        y += r.shape[0] + gap
    return out


# ------------------------------------------------------------------ unit strips
def render_unit_strips(stats: LayerStats, dataset: BrodenDataset, out_dir: Path,
                       layer_slug: str, tile_size: int = 0, quality: int = 90,
                       progress: bool = True) -> list[str]:
    """Draw each unit's top-k images with its region highlighted (``S_k > T_k``; ``S_k >= T_k``
    for a saturated unit: :func:`dissect.experiments.dissection.binarize`).

    Returns, per unit, the strip's path relative to ``out_dir``.
    """
    tile = strip_tile(dataset, tile_size)
    folder = out_dir / "units" / layer_slug
    folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)   # temporary images of killed runs (another live run's are kept)
    get = tile_images(dataset, tile)

    rels = []
    with cpu_threads(1):   # one unit's small tensors at a time: threads are all overhead
        for k in tqdm(range(stats.shape[0]), desc=f"unit images {layer_slug}", unit="unit",
                      disable=not progress, leave=False):
            masks = unit_regions(stats, k, tile)
            tiles = [highlight(get(i), masks[j].numpy())
                     for j, i in enumerate(stats.top_indices[k].tolist())]
            rel = f"units/{layer_slug}/unit-{k:04d}.jpg"
            save_row(out_dir / rel, tiles, quality)
            rels.append(rel)
    return rels


def tile_images(dataset: BrodenDataset, tile: int) -> Callable[[int], np.ndarray]:
    """``get(i)``: probe image ``i`` as float32 ``[tile, tile, 3]`` (bicubic; a gray tile for
    an unreadable image), each loaded once."""
    images: dict[int, np.ndarray] = {}

    def get(i: int) -> np.ndarray:
        if i not in images:
            try:
                im = dataset.load_rgb(i).resize((tile, tile), Image.BICUBIC)
                images[i] = np.asarray(im, dtype=np.float32)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                images[i] = np.full((tile, tile, 3), 128, np.float32)
        return images[i]
    return get


def strip_tile(dataset: BrodenDataset, tile_size: int = 0) -> int:
    """The side of a strip's tiles: ``tile_size``, else the label size within [96, 224]."""
    sh, _ = dataset.label_size
    return tile_size or max(96, min(sh, 224))


def unit_regions(stats: LayerStats, k: int, tile: int) -> Tensor:
    """Bool ``[top-k, tile, tile]``: unit ``k``'s region on each of its top images, its map
    upsampled (bilinear) to the tile and binarized as the dissection does."""
    maps = F.interpolate(stats.top_maps[k].unsqueeze(1).float(), size=(tile, tile), mode="bilinear",
                         align_corners=False).squeeze(1)
    return binarize(maps, stats.thresholds[k], stats.saturated[k])


def save_row(path: Path, tiles: list[np.ndarray], quality: int = 90, optimize: bool = True) -> None:
    """Tiles side by side as a JPEG (``optimize``: Huffman tables fit to the image, a few
    percent smaller, slower), written whole (another run sharing the cache may be reading
    the file)."""
    strip = Image.fromarray(_row(tiles))
    atomic_save(path, lambda tmp: strip.save(tmp, "JPEG", quality=quality, optimize=optimize))


def highlight(image: np.ndarray, mask: np.ndarray, color=OUTLINE) -> np.ndarray:
    """Dim the image outside ``mask`` and outline the region in ``color`` (NetDissect's look).
    ``image`` ``[..., H, W, 3]`` and ``mask`` ``[..., H, W]`` broadcast against each other
    (many tiles at once)."""
    bright = np.clip(image, 0, 255).astype(np.uint8)
    dim = np.clip(image.astype(np.float64) * 0.35 + 0.65 * 40, 0, 255).astype(np.uint8)
    out = np.where(mask[..., None], bright, dim)
    out[np.broadcast_to(_edge(mask, both_sides=False), out.shape[:-1])] = color
    return out


def outline(tiles: np.ndarray, mask: np.ndarray, color=OUTLINE) -> np.ndarray:
    """``tiles`` (uint8 ``[..., H, W, 3]``) with the border of the region ``mask`` (``[..., H,
    W]``, broadcast against them) drawn in ``color``, in place."""
    tiles[np.broadcast_to(_edge(mask, both_sides=True), tiles.shape[:-1])] = color
    return tiles


# ------------------------------------------------------------------ before/after strips
def _tile(img01: Tensor, scale: int) -> np.ndarray:
    """An image in [0, 1] (``[3, h, w]``) as 8-bit pixels, enlarged ``scale`` times (nearest)."""
    a = (img01.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        a = np.asarray(Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST))
    return a.copy()




def _outline_box(tile: np.ndarray, box: tuple[int, int, int, int], scale: int, color=OUTLINE) -> np.ndarray:
    """``tile`` with a 2 px frame around ``box`` (``y0, y1, x0, x1`` in unscaled pixels)."""
    y0, y1, x0, x1 = (v * scale for v in box)
    y1, x1 = min(y1, tile.shape[0]) - 1, min(x1, tile.shape[1]) - 1
    for t in range(2):
        tile[max(y0 - t, 0), x0:x1 + 1] = color
        tile[min(y1 + t, tile.shape[0] - 1), x0:x1 + 1] = color
        tile[y0:y1 + 1, max(x0 - t, 0)] = color
        tile[y0:y1 + 1, min(x1 + t, tile.shape[1] - 1)] = color
    return tile


def _scale_for(size: int) -> int:
    """How many times to enlarge images of ``size`` px so that they show at about 128 px."""
    return max(1, 128 // max(size, 1))


def write_strip(out_dir: Path, stem: str, before: Tensor, after: Tensor, masks: list | None = None,
                boxes: list | None = None, frames: list[Tensor] | None = None) -> tuple[str, str]:
    """Write ``<stem>.png`` (row 1: before, row 2: after, regions outlined on both) and
    ``<stem>.gif`` (before and after alternating, or ``frames``). Returns both names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = _scale_for(before.shape[-1])

    def decorate(imgs: Tensor) -> list[np.ndarray]:
        tiles = []
        for i in range(len(imgs)):
            t = _tile(imgs[i], scale)
            if masks is not None:
                m = np.kron(masks[i].numpy().astype(np.uint8), np.ones((scale, scale), np.uint8))
                t = outline(t, m)
            if boxes is not None:
                t = _outline_box(t, boxes[i], scale)
            tiles.append(t)
        return tiles

    rb, ra = _row(decorate(before)), _row(decorate(after))
    png = f"{stem}.png"
    both = Image.fromarray(_stack([rb, ra]))
    atomic_save(out_dir / png, lambda tmp: both.save(tmp, "PNG", optimize=True))
    seq = [rb, ra] if frames is None else [_row(decorate(f)) for f in frames]
    gif = f"{stem}.gif"
    durations = [STRIP_FRAME_MS] * len(seq)
    atomic_save(out_dir / gif, lambda tmp: iio.imwrite(tmp, np.stack(seq), extension=".gif",
                                                       duration=durations, loop=0))
    return png, gif
