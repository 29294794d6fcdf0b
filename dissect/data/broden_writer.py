"""Writing Broden-format folders (``BRODEN.md``): the pieces every probe-set writer shares.

The toy world (:mod:`dissect.data.toyworld_probe`), a generator's probe set
(:mod:`dissect.data.generated`) and an image folder labeled by a segmenter
(:mod:`dissect.data.segmented`) all write their images and label layers as PNGs, their
tables as Broden's CSV files, and the whole folder in one piece, with these functions;
the last two write segmenter-labeled images with one :class:`SegmentedImagesWriter`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from dissect.atomic import clean_leftovers, fresh_dir, folder_lock


def default_label_size(image_size: int) -> int:
    """Labels at the image size up to 64 px, at half the image size above (as Broden: 112 px
    labels for 224 px images)."""
    return image_size if image_size <= 64 else image_size // 2


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """Encode an HxWx3 uint8 array as an 8-bit RGB PNG (no filtering, zlib ``level``).

    A direct encoder: about 5x faster than going through PIL for small images, which
    matters when writing several label layers per image.
    """
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), np.uint8)
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


def save_label_png(path: Path, labels: np.ndarray) -> None:
    """Save a label map as a Broden PNG: label = R + 256 * G."""
    lab = labels.astype(np.int64)
    rgb = np.zeros(lab.shape + (3,), np.uint8)
    rgb[..., 0] = lab % 256
    rgb[..., 1] = lab // 256
    Path(path).write_bytes(png_bytes(rgb))


def write_dir_atomically(out: Path, write, manifest_name: str, manifest: dict) -> Path:
    """Write a data folder at ``out`` in one piece: ``write(tmp)`` fills a temporary folder
    beside it, the manifest goes in last, then the folder is swapped in (an old one moved
    away and deleted). On any error the temporary folder is removed and ``out`` is as it was.

    Runs that write the same folder at once take turns (:func:`dissect.atomic.folder_lock` on
    its parent): the second finds the first one's folder, with the same manifest, and reuses
    it. Temporary folders left by killed runs are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(out.parent):
        clean_leftovers(out.parent, out.name, locked=True)
        if manifest_matches(out, manifest_name, manifest):
            return out   # written meanwhile by another run
        tmp = fresh_dir(out.parent, out.name, "tmp")
        try:
            write(tmp)
            with open(tmp / manifest_name, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
            if out.exists():
                trash = fresh_dir(out.parent, out.name, "old")
                os.replace(out, trash / "old")
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def manifest_matches(out: Path, manifest_name: str, manifest: dict) -> bool:
    """Whether ``out`` is a finished data folder written with ``manifest``."""
    try:
        with open(Path(out) / manifest_name, encoding="utf-8") as f:
            return json.load(f) == manifest and (Path(out) / "index.csv").is_file()
    except (OSError, ValueError):
        return False


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def tally_label_map(labels: np.ndarray, freq: np.ndarray, cover: np.ndarray) -> None:
    """Add one label map to the per-label statistics of :func:`write_broden_tables`: images
    holding the label (``freq``) and the fraction of the map it covers (``cover``)."""
    counts = np.bincount(labels.ravel(), minlength=len(freq))[: len(freq)]
    counts[0] = 0
    freq += counts > 0
    cover += counts / labels.size


def write_broden_tables(root: Path, categories: Sequence[str], labels: Sequence[tuple[int, str, str]],
                        rows: list[dict], freq: np.ndarray, cover: np.ndarray, n: int) -> None:
    """Write index.csv, label.csv, category.csv and c_*.csv of a Broden-format directory.

    ``labels``: ``(number, name, category)`` of every label; ``rows``: one dict per image with
    ``image, split, ih, iw, sh, sw`` and one column per category; ``freq[num]``: images
    holding label ``num``; ``cover[num]``: its mean fraction of an image.
    """
    root = Path(root)
    cols = ["image", "split", "ih", "iw", "sh", "sw"] + list(categories)
    with open(root / "index.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for num, name, cat in labels:
            w.writerow([num, name, f"{cat}({freq[num]})", int(freq[num]), _fmt(cover[num]), ""])
    with open(root / "category.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for cat in categories:
            nums = [num for num, _, c in labels if c == cat]
            w.writerow([cat, min(nums), max(nums), len(nums), n])
    for cat in categories:
        with open(root / f"c_{cat}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, (num, name, _) in enumerate([lab for lab in labels if lab[2] == cat], start=1):
                w.writerow([code, num, name, int(freq[num]), _fmt(cover[num])])


class SegmentedImagesWriter:
    """Images and a segmenter's label layers, written into the Broden folder ``root`` one
    image at a time (:meth:`add`), the tables at the end (:meth:`finish`).

    ``concepts``: the segmenter's ``(name, category)`` list (concept ``i`` is label
    ``i + 1``); ``layers``: the category of each label layer. Labels are kept at
    :func:`default_label_size` (every f-th pixel, from the middle of each f x f block).
    """

    def __init__(self, root: Path, concepts: Sequence[tuple[str, str]], layers: Sequence[str]):
        self.root = Path(root)
        self.images = self.root / "images"
        self.images.mkdir(exist_ok=True)
        self.layers = list(layers)
        self.labels = [(i + 1, name, cat) for i, (name, cat) in enumerate(concepts)]
        self.freq = np.zeros(len(self.labels) + 1, np.int64)
        self.cover = np.zeros(len(self.labels) + 1, np.float64)
        self.rows: list[dict] = []

    def add(self, name: str, rgb: np.ndarray, label_maps: np.ndarray, split: str, level: int = 6) -> None:
        """Write image ``name`` (``rgb`` HxWx3 uint8) and its ``label_maps``
        ``[len(layers), H, W]`` as ``images/<name>.png`` and ``images/<name>_<layer>.png``."""
        size = rgb.shape[0]
        f = size // default_label_size(size)
        (self.images / f"{name}.png").write_bytes(png_bytes(rgb, level=level))
        row = {"image": f"{name}.png", "split": split, "ih": size, "iw": rgb.shape[1],
               "sh": size // f, "sw": rgb.shape[1] // f}
        for li, cat in enumerate(self.layers):
            m = label_maps[li][f // 2::f, f // 2::f]
            fname = f"{name}_{cat}.png"
            save_label_png(self.images / fname, m)
            row[cat] = fname
            tally_label_map(m, self.freq, self.cover)
        self.rows.append(row)

    def finish(self) -> None:
        """Write the tables of everything added."""
        n = len(self.rows)
        write_broden_tables(self.root, list(dict.fromkeys(self.layers)), self.labels, self.rows,
                            self.freq, self.cover / max(n, 1), n)
