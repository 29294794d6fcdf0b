"""Any image folder as a probe set: its images labeled by a segmenter (the 2020 paper's
classifier dissection, where a segmenter labels Places365 images).

:func:`open_segmented_probe` finds the image files under a folder (any depth; the
extensions of :data:`~dissect.data.labeled.IMAGE_EXTENSIONS`; a file or link that resolves
outside the folder is never read), prepares each as the model's evaluation transform does
(:class:`~dissect.data.labeled.FolderImages`: shorter side to ``resize_side(input_size)``, 256 for 224 and 227 px,
center crop ``input_size``), quantizes it to 8 bits, labels it with the segmenter and
writes the lot as a Broden folder (:class:`~dissect.data.broden_writer.SegmentedImagesWriter`,
as a generator's probe set is written) under ``cache/segmented/``. Every category the
segmenter outputs labels every pixel, so the dissection's IoU is the plain IoU over all
images (the manifest marks the folder as segmenter-labeled for
:class:`~dissect.data.broden.BrodenIndex`). Unreadable images are skipped and listed in the folder's manifest
(``segmented.json``, with the reason each could not be read; each is warned about on the
console once, see :func:`~dissect.errors.warn_skipped_image`), which also names each
written image's source file (shown as the image's name on the site and in ``results.json``,
``top_images[].source``) and says what the labels were made from: reused when the
folder's files (names, sizes, modification times), the segmenter, the input size and the
number of images all match.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..cache import cache_key
from ..errors import DissectError, warn_skipped_image
from ..models.latents import quantize
from ..segmenters.base import Segmenter
from ..segmenters.registry import load_segmenter, segmenter_key
from ..slugs import slugify
from .broden import SEGMENTED_MANIFEST
from .broden_writer import SegmentedImagesWriter, write_dir_atomically
from .labeled import IMAGE_EXTENSIONS, FolderImages

MANIFEST = SEGMENTED_MANIFEST
VERSION = 1
VAL_FRACTION = 0.2


def is_image_folder(path: Path) -> bool:
    """A folder that is not a Broden folder (no ``index.csv``): its images get labeled."""
    return path.is_dir() and not (path / "index.csv").exists()


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (sorted; hidden files and folders left out; linked
    folders not entered); a linked file whose real path lies outside the folder is left out."""
    root = folder.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                real = p.resolve(strict=True)
            except (OSError, RuntimeError):  # a dangling link, a loop
                continue
            if root in real.parents and real.is_file():
                found.append(p)
    return sorted(found)


def default_segmenter(input_size: int) -> str:
    """The segmenter of an image folder unless one is named: the toy segmenter for the toy
    world's 64 px, else the 2020 paper's ``upp``."""
    return "toy" if input_size == 64 else "upp"


@dataclass
class SegmentedProbe:
    """An image folder's labeled probe set: the Broden folder written, the segmenter, and the
    images (relative to the folder) that could not be read."""

    path: Path
    segmenter: Segmenter
    skipped: list[str]


def listing_digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.resolve().stat()
        h.update(f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def open_segmented_probe(folder: str | Path, input_size: int, cache_dir: Path, segmenter: str | None = None,
                         segmenter_weights: str | None = None, size: int | None = None,
                         batch_size: int = 16, device: torch.device | str = "cpu",
                         progress: bool = True) -> SegmentedProbe:
    """The images under ``folder`` (the first ``size`` of them, sorted by path) at
    ``input_size``, labeled by ``segmenter`` (default :func:`default_segmenter`), written once
    under ``cache_dir/segmented/`` and reused after."""
    root = Path(folder).expanduser().resolve()
    files = image_files(root)
    if not files:
        raise DissectError(f"no images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files); "
                           "give a folder of images or a Broden folder")
    if size:
        files = files[:size]
    seg = load_segmenter(segmenter or default_segmenter(input_size), segmenter_weights, progress=progress)
    want = {"writer": "dissect.data.segmented", "version": VERSION, "folder": str(root),
            "files": listing_digest(root, files), "num_files": len(files), "input_size": int(input_size),
            "segmenter": seg.name, "segmenter_key": segmenter_key(seg)}
    key = cache_key(*want.values())
    out = cache_dir / "segmented" / f"{slugify(root.name, 'images')}-{key}"
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("source") == want and (out / "index.csv").is_file():
            skipped = [str(s) for s in manifest.get("skipped") or []]
            _warn_skipped(root, skipped, manifest.get("skipped_reasons"))
            return SegmentedProbe(out, seg, skipped)
    except (OSError, ValueError, AttributeError):
        pass
    manifest = {"source": want, "skipped": [], "skipped_reasons": {}, "images": {}}
    write_dir_atomically(out, lambda tmp: _write(tmp, root, files, seg, input_size, batch_size, device,
                                                 manifest, progress), MANIFEST, manifest)
    _warn_skipped(root, manifest["skipped"], manifest["skipped_reasons"])
    return SegmentedProbe(out, seg, manifest["skipped"])


def _warn_skipped(root: Path, skipped: list[str], reasons: dict | None) -> None:
    """A console warning for each unreadable image of the folder (also when the labeled
    folder is reused: a manifest written before reasons were kept says only "unreadable")."""
    reasons = reasons if isinstance(reasons, dict) else {}
    for name in skipped:
        warn_skipped_image(root / name, str(reasons.get(name) or "unreadable"))


def _write(tmp: Path, root: Path, files: list[Path], seg: Segmenter, input_size: int, batch_size: int,
           device, manifest: dict, progress: bool) -> None:
    """Label and write the readable images; the manifest gets the unreadable ones
    (``skipped``, and why: ``skipped_reasons``) and each written image's source (``images``:
    name -> path in the folder)."""
    skipped, reasons, sources = manifest["skipped"], manifest["skipped_reasons"], manifest["images"]
    images = FolderImages(files, input_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), root=root)
    seg.to(device)
    writer = SegmentedImagesWriter(tmp, seg.concepts, seg.layers)
    n_val = int(round(len(files) * VAL_FRACTION))
    with torch.no_grad():
        for start in tqdm(range(0, len(files), batch_size), desc="segment images", unit="batch",
                          disable=not progress, leave=False):
            items = [images[i] for i in range(start, min(start + batch_size, len(files)))]
            for it in items:
                if not it["ok"]:
                    skipped.append(it["path"])
                    reasons[it["path"]] = it["error"]
            good = [it for it in items if it["ok"]]
            if not good:
                continue
            x = quantize(torch.stack([it["image"] for it in good]).clamp(0, 1))
            lab = seg.segment(x.to(device)).cpu().numpy()
            u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for b, it in enumerate(good):
                i = it["index"]
                writer.add(f"img-{i:05d}", u8[b], lab[b], "val" if i >= len(files) - n_val else "train")
                sources[f"img-{i:05d}.png"] = it["path"]
    if not writer.rows:
        raise DissectError(f"none of the {len(files)} images in {root} could be read "
                           f"(e.g. {skipped[0]}); give a folder of readable images")
    writer.finish()
