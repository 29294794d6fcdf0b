"""Reader for Broden-format probe sets (see BRODEN.md).

A Broden directory holds ``index.csv`` (one row per image; per category a ``;``-separated
list of pixel-label PNG names or whole-image label numbers), ``label.csv``,
``category.csv`` and ``c_<category>.csv``. Pixel-label PNGs encode each pixel's label number
as ``R + 256 * G``. The reader is exact to that format; the toy world writes the same
format, so one code path serves both.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..devices import usable_cpus
from ..download import fetch_file
from ..errors import DissectError, warn_skipped_image
from .catalog import data_file
from .device_decode import decode_on_device, finish_images, is_jpeg_name

# written into a probe set generated and labeled by a segmenter (dissect.data.generated)
GENERATED_MANIFEST = "generated.json"
# written into an image folder's probe set labeled by a segmenter (dissect.data.segmented)
SEGMENTED_MANIFEST = "segmented.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STANDARD_CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
_INDEX_FIXED = ("image", "split", "ih", "iw", "sh", "sw")
MAX_SIDE = 2 ** 16      # the largest image or label side an index may give, in pixels


@dataclass(frozen=True)
class Label:
    number: int
    name: str            # as in label.csv, e.g. "red-c"
    display: str         # shown in reports, e.g. "red"
    category: str        # primary category (largest coverage)
    frequency: int = 0
    coverage: float = 0.0


@dataclass
class ImageRecord:
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pixel_files: list[str] = field(default_factory=list)   # PNG names under images/
    image_labels: list[int] = field(default_factory=list)  # whole-image label numbers


def display_name(name: str) -> str:
    """Broden's label name without its ``-s`` (scene) or ``-c`` (color) suffix."""
    for suffix in ("-s", "-c"):
        if name.endswith(suffix) and len(name) > 2:
            return name[: -len(suffix)]
    return name


def confined_name(name: str) -> bool:
    """Whether a file name from a probe set's tables stays inside its folder: relative, with
    no ``..`` part (a symbolic link out of the folder is caught when the file is opened)."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    return ".." not in name.replace("\\", "/").split("/")


def _read_csv(path: Path) -> list[dict]:
    folder = os.path.realpath(path.parent)
    if path.is_symlink() and not os.path.realpath(path).startswith(folder + os.sep):
        raise DissectError(f"{path} is a symbolic link out of {path.parent}; a probe set's tables "
                           "must be inside its folder")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise DissectError(f"{path} is missing: is {path.parent} a Broden-format directory?") from None
    except UnicodeDecodeError as e:
        raise DissectError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                           "save it as UTF-8") from None
    except csv.Error as e:
        raise DissectError(f"{path} is not a readable CSV file ({e}); fix or regenerate it") from None


def _require(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    """A one-line error when ``path`` has rows but lacks one of ``columns``."""
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise DissectError(f"{path} lacks the column(s) {', '.join(missing)}")


def _number(path: Path, row: int, record: dict, column: str, kind: type = int, default: float | None = None):
    """``record[column]`` (row ``row`` of ``path``) as ``kind``; a one-line error if it is not one."""
    value = (record.get(column) or "").strip()
    if not value and default is not None:
        return default
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise DissectError(f"{path} row {row}: {column} must be {what}, not {value!r}") from None


class BrodenIndex:
    """The tables of a Broden directory: images, labels and categories."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DissectError(f"probe data directory {str(self.root)!r} does not exist; "
                               "pass --data toyworld, --data broden, or a Broden-format folder")
        if not (self.root / "index.csv").is_file():
            raise DissectError(f"{self.root} has no index.csv: not a Broden-format directory "
                               "(see `dissect data toyworld --help` to make one)")
        rows = _read_csv(self.root / "index.csv")
        cat_rows = _read_csv(self.root / "category.csv")
        _require(self.root / "category.csv", cat_rows, ("name",))
        self.categories: list[str] = [r["name"] for r in cat_rows if (r.get("name") or "").strip()]
        if not self.categories:
            raise DissectError(f"{self.root / 'category.csv'} lists no categories")
        label_rows = _read_csv(self.root / "label.csv")
        if not rows:
            raise DissectError(f"{self.root / 'index.csv'} lists no images")
        _require(self.root / "index.csv", rows, [c for c in (*_INDEX_FIXED, *self.categories) if c != "split"])
        _require(self.root / "label.csv", label_rows, ("number", "name"))

        # coverage of each label in each category, from c_<category>.csv
        coverage: dict[int, dict[str, float]] = {}
        for cat in self.categories:
            path = self.root / f"c_{cat}.csv"
            if path.is_file():
                for row, r in enumerate(_read_csv(path), start=2):
                    coverage.setdefault(_number(path, row, r, "number"), {})[cat] = \
                        _number(path, row, r, "coverage", float, 0.0)
        labels = {}
        label_csv = self.root / "label.csv"
        defined = set()
        for row, r in enumerate(label_rows, start=2):
            num = _number(label_csv, row, r, "number")
            defined.add(num)
            if num == 0:
                continue
            covs = coverage.get(num)
            if not covs:  # fall back to label.csv's own counts, e.g. "object(12);part(3)"
                covs = {}
                for item in (r.get("category") or "").split(";"):
                    if "(" in item:
                        name, _, count = item.rstrip(")").partition("(")
                        try:
                            covs[name] = float(count)
                        except ValueError:
                            raise DissectError(f"{label_csv} row {row}: category must read like "
                                               f"object(12);part(3), not {r.get('category')!r}") from None
            covs = {c: v for c, v in covs.items() if c in self.categories}   # others: not annotated here
            if not covs:
                continue
            # largest coverage wins; ties go to the category listed first in category.csv
            order = {c: i for i, c in enumerate(self.categories)}
            primary = max(covs, key=lambda c: (covs[c], -order.get(c, len(order))))
            labels[num] = Label(num, r["name"], display_name(r["name"]), primary,
                                int(_number(label_csv, row, r, "frequency", float, 0.0)),
                                _number(label_csv, row, r, "coverage", float, 0.0))
        self.labels: dict[int, Label] = labels
        # label numbers 0..max of those label.csv defines (a defined label without a category
        # is tallied but never named); a label PNG may hold no other number
        self.num_labels = max([*labels, *defined], default=0) + 1
        self._defined = np.zeros(self.num_labels, dtype=bool)
        self._defined[[0, *defined]] = True
        # A probe set labeled by a segmenter (with either manifest) is annotated in every category on every image: an image
        # with no part pixel says "no part here". IoU is then the plain IoU over all images,
        # as in the 2020 paper. Human-annotated Broden keeps NetDissect's rule (an image is
        # annotated in a category when it holds some concept of it).
        self.segmenter_labeled = any((self.root / m).is_file() for m in (GENERATED_MANIFEST, SEGMENTED_MANIFEST))
        self.generated = (self.root / GENERATED_MANIFEST).is_file()
        self.sources = _segmented_sources(self.root / SEGMENTED_MANIFEST)

        self.images = self.root / "images"
        self.images_real = os.path.realpath(self.images)
        self._real_folders: dict[str, str] = {}   # sub-folder of images/ -> its real path
        if not self.images_real.startswith(os.path.realpath(self.root) + os.sep):
            raise DissectError(f"{self.images} is a symbolic link out of {self.root}; a probe set's "
                               "images must be inside its folder")
        self.records: list[ImageRecord] = []
        index_csv = self.root / "index.csv"
        for row_number, r in enumerate(rows, start=2):
            ih, iw, sh, sw = (_number(index_csv, row_number, r, c) for c in ("ih", "iw", "sh", "sw"))
            for column, size in zip(("ih", "iw", "sh", "sw"), (ih, iw, sh, sw)):
                if not 1 <= size <= MAX_SIDE:
                    raise DissectError(f"{index_csv} row {row_number}: {column} must be a size in pixels "
                                       f"from 1 to {MAX_SIDE}, not {size}")
            rec = ImageRecord(r["image"] or "", r.get("split") or "", ih, iw, sh, sw)
            for cat in self.categories:
                cell = (r.get(cat) or "").strip()
                if not cell:
                    continue
                for item in cell.split(";"):
                    item = item.strip()
                    if not item:
                        continue
                    if item.isdigit():
                        if int(item) not in defined:
                            raise DissectError(f"{index_csv} row {row_number}: label {item} in column {cat} "
                                               f"is not defined in {label_csv}")
                        rec.image_labels.append(int(item))
                    else:
                        rec.pixel_files.append(item)
            for name in [rec.image, *rec.pixel_files]:
                if not confined_name(name):
                    raise DissectError(
                        f"{self.root / 'index.csv'} row {row_number} names {name!r}, which is outside "
                        f"{self.images}; a probe set may only name files inside its images/ folder")
            self.records.append(rec)

    # ------------------------------------------------------------------ helpers
    @property
    def annotation_rule(self) -> str:
        """Which images count toward a unit's union for a category (``params.union``)."""
        if self.segmenter_labeled:
            return "every image, every category (segmenter-labeled: plain IoU, as in 2020)"
        return "category-restricted (NetDissect: images holding any concept of the category)"

    def primary_category_tensor(self) -> torch.Tensor:
        """``[num_labels]`` primary category index per label number (0 for none)."""
        idx = {c: i for i, c in enumerate(self.categories)}
        out = torch.zeros(self.num_labels, dtype=torch.long)
        for num, lab in self.labels.items():
            out[num] = idx[lab.category]
        return out

    def sha256(self) -> str:
        """SHA-256 over index.csv, label.csv, category.csv and the c_*.csv tables."""
        h = hashlib.sha256()
        names = ["index.csv", "label.csv", "category.csv"] + [f"c_{c}.csv" for c in self.categories]
        for name in names:
            p = self.root / name
            if p.is_file():
                h.update(name.encode() + b"\0")
                h.update(p.read_bytes())
        return h.hexdigest()

    def files_fingerprint(self, content: bool = False) -> str:
        """SHA-256 over the folder's real path and, for every file the index names, its name
        and identity: by default its size and modification time (``stat``, no file is read),
        with ``content`` the SHA-256 of its bytes (every file read: also catches an edit that
        keeps the size and restores the modification time). Replacing or editing any image or
        label file, or opening another folder with the same tables, changes it. Part of
        every cache key, with :meth:`sha256` (the tables' content).

        Cost on a Broden-sized folder (63,305 files; docs/reliability.md): about 0.4 s by
        ``stat``; reading and hashing every byte costs what reading the folder costs."""
        h = hashlib.sha256(os.path.realpath(self.root).encode() + b"\0")
        h.update(b"content\n" if content else b"stat\n")
        for rec in self.records:
            for name in (rec.image, *rec.pixel_files):
                try:
                    if content:
                        with open(self.file(name), "rb") as f:
                            ident = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(
                                hashlib, "file_digest") else hashlib.sha256(f.read()).hexdigest()
                    else:
                        st = os.stat(self.images / name)
                        ident = f"{st.st_size}\0{st.st_mtime_ns}"
                    h.update(f"{name}\0{ident}\n".encode())
                except OSError:
                    h.update(f"{name}\0missing\n".encode())
        return h.hexdigest()

    def file(self, name: str) -> Path:
        """The path of ``name`` (from index.csv) under ``images/``; an :class:`OSError` (the
        file is then skipped as unreadable, never opened) when a symbolic link leads out of
        the probe folder."""
        path = self.images / name
        head, _, tail = name.replace(os.sep, "/").rpartition("/")
        folder = self._real_folders.get(head)
        if folder is None:   # each folder resolved once (a folder may be a link itself)
            folder = self._real_folders[head] = os.path.realpath(self.images / head) if head else self.images_real
        if stat.S_ISLNK(os.lstat(path).st_mode) or tail in ("", ".", ".."):
            real = os.path.realpath(path)    # a link: follow it all the way
        else:
            real = folder + os.sep + tail
        if not real.startswith(self.images_real + os.sep):
            raise OSError(f"{name} leads outside the probe folder (through a symbolic link); not read")
        return path

    def source(self, name: str) -> str | None:
        """The user's own file behind the probe image ``name`` (as index.csv names it): for
        an image folder labeled by a segmenter, the original file relative to that folder
        (``photos/astronaut.jpg``, from ``segmented.json``); for a Broden-format folder,
        ``name`` itself (relative to its ``images/``); None for a generator's samples."""
        if name in self.sources:
            return self.sources[name]
        return None if self.generated else name

    def check_label_numbers(self, labels: np.ndarray, name: str) -> None:
        """A :class:`DissectError` naming the label PNG ``name`` when it holds a label number
        that label.csv does not define (numbers of 32768 and more included: nothing is cast
        to a narrower type before this check)."""
        if labels.size == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi < self.num_labels and self._defined[labels].all():
            return
        found = np.unique(labels)
        bad = [int(v) for v in found if not (0 <= v < self.num_labels and self._defined[v])]
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DissectError(f"{self.images / name} holds label number(s) {shown} (R + 256 * G), which "
                           f"{self.root / 'label.csv'} does not define; fix the PNG or add the labels")

    def label_size(self) -> tuple[int, int]:
        sizes = {(r.sh, r.sw) for r in self.records}
        return max(sizes)  # mixed sizes are resized (nearest) to the largest


def _segmented_sources(manifest: Path) -> dict[str, str]:
    """Probe image name -> original file (relative to the folder of images), from an image
    folder's ``segmented.json`` (none without one, or from one that cannot be read)."""
    try:
        images = json.loads(manifest.read_text(encoding="utf-8")).get("images")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(images, dict):
        return {}
    return {k: v for k, v in images.items() if isinstance(k, str) and isinstance(v, str)}


def decode_label_png(path: Path) -> np.ndarray:
    """Label numbers of a Broden PNG: ``R + 256 * G`` as int32 (every number a PNG can hold,
    computed on the two channels only)."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            a = np.asarray(im)
            out = a[..., 1].astype(np.int32)
            out <<= 8
            out |= a[..., 0]
            return out
        return np.asarray(im, dtype=np.int32)   # modes L, P, I;16 and I (32-bit) all fit


class BrodenDataset(torch.utils.data.Dataset):
    """Images (normalised, resized to ``input_size``) with their pixel and image labels.

    Items are dicts: ``index``, ``ok`` (False for an unreadable image, which the loader
    drops and counts), ``image`` ``[3, S, S]``, and with ``with_labels``:
    ``pixel_labels`` ``[layers, sh, sw]`` and ``image_labels`` ``[J]``.
    """

    def __init__(self, index: BrodenIndex | str | os.PathLike, input_size: int = 224,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 with_labels: bool = True, indices: Sequence[int] | None = None,
                 model_input: str = "image"):
        self.index = index if isinstance(index, BrodenIndex) else BrodenIndex(index)
        if model_input not in ("image", "latent"):
            raise ValueError(f"model_input must be 'image' or 'latent', not {model_input!r}")
        self.model_input = model_input
        self.latents = None
        if model_input == "latent":
            path = self.index.root / "latents.npy"
            if not path.is_file():
                raise DissectError(f"{self.index.root} has no latents.npy: not a generator's probe set")
            self.latents = np.load(path, mmap_mode="r")
            if len(self.latents) != len(self.index.records):
                raise DissectError(f"{path} holds {len(self.latents)} latents for "
                                   f"{len(self.index.records)} images; regenerate the probe set")
        self.input_size = int(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.with_labels = with_labels
        self.with_images = True
        self.indices = list(range(len(self.index.records))) if indices is None else list(indices)
        self.label_size = self.index.label_size()
        self.label_cache = None   # a dissect.data.label_cache.LabelCache (attach_label_cache)
        self.encoded_jpeg = False  # items hand over JPEG bytes, decoded on the device (make_loader)

    def __len__(self) -> int:
        return len(self.indices)

    def example_input(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """A batch of one all-zero model input (to find layer shapes)."""
        if self.latents is not None:
            return torch.zeros(1, self.latents.shape[1], device=device)
        return torch.zeros(1, 3, self.input_size, self.input_size, device=device)

    def load_rgb(self, i: int) -> Image.Image:
        rec = self.index.records[self.indices[i]]
        with Image.open(self.index.file(rec.image)) as im:
            return im.convert("RGB")

    def pixel_labels(self, record: int) -> np.ndarray:
        """``[layers, sh, sw]`` label planes of the index's record ``record``, at the label size,
        in the narrowest type that holds every defined label number (int16 for Broden's ~1,200
        labels: a quarter of int64's bytes to pass between processes and keep for the second
        pass). The one place label planes are read: from the label cache entry when it holds
        them (:mod:`dissect.data.label_cache`), else decoded from the PNGs, checked against
        label.csv and resized (nearest). Raises :class:`DissectError` for undefined label
        numbers, :class:`OSError` and the like for an unreadable PNG."""
        small = np.int16 if self.index.num_labels <= 2 ** 15 else np.int32
        cache = getattr(self, "label_cache", None)
        if cache is not None:
            held = cache.planes(record)
            if held is not None:
                return held.astype(small)
        rec = self.index.records[record]
        sh, sw = self.label_size
        layers = np.empty((len(rec.pixel_files), sh, sw), dtype=small)
        for j, name in enumerate(rec.pixel_files):
            lab = decode_label_png(self.index.file(name))
            self.index.check_label_numbers(lab, name)   # before any narrowing
            if lab.shape != (sh, sw):
                lab = np.asarray(Image.fromarray(lab.astype(np.int32)).resize((sw, sh), Image.NEAREST))
            layers[j] = lab
        return layers

    def image_tensor(self, im: Image.Image) -> torch.Tensor:
        """An RGB image as the model's input: resized to ``input_size`` (bilinear) when it is not
        that size, ``[3, S, S]`` float32, scaled to [0, 1] and normalised (mean, std)."""
        if im.size != (self.input_size, self.input_size):
            im = im.resize((self.input_size, self.input_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1).copy())
        return x.div_(255.0).sub_(self.mean).div_(self.std)   # in place, channels first

    def __getitem__(self, i: int) -> dict:
        rec = self.index.records[self.indices[i]]
        item = {"index": i, "ok": True, "path": rec.image}
        try:
            if self.with_images and self.latents is not None:
                item["image"] = torch.from_numpy(np.array(self.latents[self.indices[i]], dtype=np.float32))
            elif self.with_images and getattr(self, "encoded_jpeg", False) and is_jpeg_name(rec.image) and \
                    (rec.ih, rec.iw) == (self.input_size, self.input_size):
                # decoded on the model's device by the loader (dissect.data.device_decode)
                item["jpeg"] = torch.from_numpy(np.fromfile(self.index.file(rec.image), dtype=np.uint8))
            elif self.with_images:
                item["image"] = self.image_tensor(self.load_rgb(i))
            else:  # labels only; still check that the image is readable
                with Image.open(self.index.file(rec.image)) as im:
                    im.verify()
            if self.with_labels:
                item["pixel_labels"] = torch.from_numpy(self.pixel_labels(self.indices[i]))
                item["image_labels"] = torch.tensor(rec.image_labels, dtype=torch.long)
        except DissectError as e:   # damaged labels: the run stops (see make_loader)
            return {"index": i, "ok": False, "path": rec.image, "fatal": str(e)}
        except (OSError, ValueError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
            return {"index": i, "ok": False, "path": rec.image, "error": f"{type(e).__name__}: {e}"}
        return item


def collate(items: list[dict]) -> dict:
    """Stack good items, padding label layers and whole-image labels with 0; list the bad."""
    good = [it for it in items if it["ok"]]
    out = {"bad": [(it["path"], it.get("error", "")) for it in items if not it["ok"] and not it.get("fatal")]}
    fatal = [it["fatal"] for it in items if it.get("fatal")]
    if fatal:
        out["fatal"] = fatal[0]
    out["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
    out["bad_index"] = [it["index"] for it in items if not it["ok"] and not it.get("fatal")]
    if not good:
        return out
    if any("jpeg" in it for it in good):   # decoded on the device by the Loader
        out["encoded"] = [it.get("jpeg") for it in good]
        out["decoded"] = [it.get("image") for it in good]
    elif "image" in good[0]:
        out["image"] = torch.stack([it["image"] for it in good])
    if "pixel_labels" in good[0]:
        nl = max(it["pixel_labels"].shape[0] for it in good)
        nj = max(it["image_labels"].shape[0] for it in good)
        sh, sw = good[0]["pixel_labels"].shape[1:]
        pl = torch.zeros((len(good), nl, sh, sw), dtype=good[0]["pixel_labels"].dtype)
        il = torch.zeros((len(good), nj), dtype=torch.long)
        for b, it in enumerate(good):
            pl[b, : it["pixel_labels"].shape[0]] = it["pixel_labels"]
            il[b, : it["image_labels"].shape[0]] = it["image_labels"]
        out["pixel_labels"], out["image_labels"] = pl, il
    return out


class Loader:
    """Batches of a :class:`torch.utils.data.DataLoader`; a batch holding an item that cannot
    be used at all (``fatal``: labels that label.csv does not define) stops the run here, in
    the main process, with that item's one-line :class:`DissectError`. Images handed over as
    JPEG bytes are decoded here on ``device`` (:mod:`dissect.data.device_decode`)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device | None = None):
        self.loader = loader
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        dataset = self.loader.dataset
        cache = getattr(dataset, "label_cache", None)
        for batch in self.loader:
            if "fatal" in batch:
                raise DissectError(batch["fatal"])
            if "encoded" in batch:
                finish_images(batch, dataset, self.device)
            if cache is not None and cache.writing and getattr(dataset, "with_labels", False):
                # the label cache's first pass: keep the planes just decoded (main process)
                cache.store([dataset.indices[i] for i in batch["index"].tolist()], batch.get("pixel_labels"),
                            [dataset.indices[i] for i in batch["bad_index"]])
            yield batch


def make_loader(dataset: BrodenDataset, batch_size: int = 64, num_workers: int | None = None,
                pin_memory: bool = False, device: torch.device | str | None = None) -> Loader:
    """A loader that decodes images in parallel worker processes, in index order, up to four
    batches ahead of the model; ``pin_memory`` (for a CUDA model) lets the copies to the
    device overlap the compute (``non_blocking``). By default up to four workers, and no more
    than this process's share of the cores: under torchrun the node's cores are divided by
    its processes (``LOCAL_WORLD_SIZE``). With a CUDA ``device`` the probe JPEGs are decoded
    there, in batches (:func:`dissect.data.device_decode.decode_on_device`)."""
    if decode_on_device(device) and isinstance(dataset, BrodenDataset) and dataset.with_images \
            and dataset.latents is None:
        dataset = copy.copy(dataset)
        dataset.encoded_jpeg = True
    if num_workers is None:
        share = usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        num_workers = min(4, max(1, share))
    return Loader(torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if num_workers else None),
        torch.device(device) if device is not None else None)


# ---------------------------------------------------------------------- download
def fetch_broden(dest_dir: str | os.PathLike, name: str = "broden1_224", url: str | None = None,
                 sha256: str | None = None, progress: bool = True) -> Path:
    """Download and unpack Broden into ``dest_dir/<name>`` (reused when already there): the
    published zip (:mod:`dissect.data.catalog`: MD5-checked, resumed, a mirror tried, unpacked
    atomically), or ``url`` (e.g. ``file:///path/broden1_224.zip``) checked by ``sha256``."""
    if name not in ("broden1_224", "broden1_227"):
        raise DissectError(f"unknown Broden variant {name!r}; valid: broden1_224, broden1_227")
    return fetch_file(data_file(name, dest_dir, url=url, sha256=sha256, root=dest_dir), progress)


def warn_bad(bad: list[tuple[str, str]], images: Path) -> None:
    """Warn (once each) about a batch's unreadable images (``(name, error)``, names as
    index.csv gives them, under the folder ``images``)."""
    for name, err in bad:
        warn_skipped_image(images / name, err)
