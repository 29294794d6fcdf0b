"""The toy world as a probe set: ``n`` scenes of :mod:`dissect.data.toyworld` written as a
Broden-format folder, with a manifest (``toyworld.json``) so that the same parameters reuse it."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
from pathlib import Path

import numpy as np

from dissect.data.broden_writer import (default_label_size, png_bytes, save_label_png, tally_label_map,
                                        write_broden_tables, write_dir_atomically)
from dissect.data.toyworld import CATEGORIES, GENERATOR_VERSION, LABEL_NUMBER, LABELS, SCENE_CLASSES, image_seed, render_scene
from dissect.devices import usable_cpus
from dissect.errors import DissectError


MANIFEST = "toyworld.json"


def _manifest(n, seed, image_size, val_fraction, label_size) -> dict:
    return {"generator": "dissect.data.toyworld", "version": GENERATOR_VERSION, "n": int(n),
            "seed": int(seed), "image_size": int(image_size),
            "label_size": int(label_size), "val_fraction": float(val_fraction)}


def _read_manifest(path: Path) -> dict | None:
    try:
        with open(path / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator") == "dissect.data.toyworld" else None


def write_toyworld(out_dir, n: int, seed: int, image_size: int = 64, val_fraction: float = 0.2,
                   progress: bool = True, label_size: int | None = None) -> Path:
    """Write ``n`` toy scenes as a Broden-format directory at ``out_dir`` and return it.

    Image ``i`` is ``render_scene(image_seed(seed, i), image_size)``; the last
    ``round(n * val_fraction)`` images form the ``val`` split, the rest ``train``.
    Statistics: a label's ``frequency`` is the number of images holding at least one pixel
    of it (for scenes, the images of that class); its ``coverage`` is the mean over all
    images of the fraction of the image it covers. ``category.csv``: ``first``/``last`` are
    the smallest and largest global label numbers of the category, ``count`` its number of
    labels, ``frequency`` the number of images annotated in it (all of them).

    Labels are written at ``label_size`` (default :func:`default_label_size`), sampled at
    the centre of each ``image_size / label_size`` block so every layer stays consistent.

    If ``out_dir`` already holds a toy world with the same parameters, it is returned as is.
    """
    out = Path(out_dir)
    n, seed, image_size = int(n), int(seed), int(image_size)
    if n < 1:
        raise DissectError(f"toy world size must be at least 1 image, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise DissectError(f"val_fraction must be in [0, 1), got {val_fraction}")
    label_size = int(label_size or default_label_size(image_size))
    if label_size < 1 or image_size % label_size:
        raise DissectError(f"toy world label size {label_size} must divide the image size {image_size}")
    want = _manifest(n, seed, image_size, val_fraction, label_size)
    if out.exists():
        if not out.is_dir():
            raise DissectError(f"{out} exists and is not a directory; choose another --out")
        old = _read_manifest(out)
        if old is None and any(out.iterdir()):
            raise DissectError(
                f"{out} is not empty and is not a toy world directory; "
                "choose an empty or new --out")
        if old == want and (out / "index.csv").is_file():
            return out
    return write_dir_atomically(
        out, lambda tmp: _write_into(tmp, n, seed, image_size, val_fraction, progress, label_size),
        MANIFEST, want)


#: Images per task when the scenes are drawn by several processes.
CHUNK = 64


def _write_into(root: Path, n: int, seed: int, size: int, val_fraction: float,
                progress: bool, label_size: int) -> None:
    """Draw the ``n`` scenes into ``root``: in parallel processes (one per usable core, in
    chunks of :data:`CHUNK` scenes) when there are enough of them; every file and table is
    the same as drawn in one process (each scene depends on its own seed only)."""
    images = root / "images"
    images.mkdir()
    max_num = max(num for num, _, _ in LABELS)
    freq = np.zeros(max_num + 1, np.int64)
    cover = np.zeros(max_num + 1, np.float64)
    rows = []
    job = functools.partial(_draw_scenes, images, n, seed, size, val_fraction, label_size, max_num)
    chunks = [range(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
    workers = min(usable_cpus(), len(chunks))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="toy world", unit="img")
    pool = (concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            if workers > 1 and "fork" in multiprocessing.get_all_start_methods() else None)
    try:
        for part_rows, part_freq, part_cover in (pool.map(job, chunks) if pool else map(job, chunks)):
            rows += part_rows
            freq += part_freq
            cover += part_cover
            if bar is not None:
                bar.update(len(part_rows))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    cover /= n

    write_broden_tables(root, CATEGORIES, LABELS, rows, freq, cover, n)


def _draw_scenes(images: Path, n: int, seed: int, size: int, val_fraction: float, label_size: int,
                 max_num: int, indices: range) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Scenes ``indices`` written into ``images``: their index rows and their label tallies."""
    f = size // label_size
    n_val = int(round(n * val_fraction))
    freq = np.zeros(max_num + 1, np.int64)
    cover = np.zeros(max_num + 1, np.float64)
    rows = []
    for i in indices:
        sc = render_scene(image_seed(seed, i), size)
        name = f"toy-{i:05d}"
        (images / f"{name}.png").write_bytes(png_bytes(sc.image, level=6))
        row = {"image": f"{name}.png", "split": "val" if i >= n - n_val else "train",
               "ih": size, "iw": size, "sh": label_size, "sw": label_size}
        for cat in CATEGORIES:
            if cat == "scene":
                num = LABEL_NUMBER[f"{SCENE_CLASSES[sc.scene_class]}-s"]
                row[cat] = str(num)
                freq[num] += 1
                cover[num] += 1.0
                continue
            lab = sc.layers[cat][f // 2::f, f // 2::f]
            fname = f"{name}_{cat}.png"
            save_label_png(images / fname, lab)
            row[cat] = fname
            tally_label_map(lab, freq, cover)
        rows.append(row)
    return rows, freq, cover
