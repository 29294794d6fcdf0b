"""Class-labeled image sets, for the classifier ablation: images with one class each, in two
splits (units are ranked on one and the accuracies reported on the other).

Three sources: a Broden-format folder whose whole-image labels of one category are the
classes (the toy world's scenes), an ImageFolder-style directory (``root/<class>/*.jpg``),
or normalized images already in memory. Data class names are matched to the model's
output names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import SkipError, warn_skipped_image
from .broden import BrodenDataset, BrodenIndex, make_loader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
CLASS_CATEGORY = "scene"   # the Broden category whose whole-image labels are the classes
RANK_SPLIT = "train"       # units are ranked on this split ...
EVAL_SPLIT = "val"         # ... and accuracies reported on this one


class TensorImages(torch.utils.data.Dataset):
    """Normalized images held in memory, as loader items (``index``, ``ok``, ``image``)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "ok": True, "path": f"#{i}", "image": self.images[i].float()}


def resize_side(input_size: int) -> int:
    """The shorter side images are resized to before the centered ``input_size`` crop: 256
    for the papers' 224 and 227 px inputs (AlexNet's 227 is cropped from 256 too), else
    torchvision's ``input_size * 256 / 224``."""
    if input_size in (224, 227):
        return 256
    return max(input_size, round(input_size * 256 / 224))


class FolderImages(torch.utils.data.Dataset):
    """Image files, resized as the papers' and torchvision's evaluation transform does:
    shorter side to :func:`resize_side` (256 for 224 and 227 px), then a centered
    ``input_size`` crop, then normalized. An item's ``path`` is its file relative to
    ``root`` (the folder the user named; ``/`` separators), or the whole path without one."""

    def __init__(self, files: Sequence[Path], input_size: int, mean: Sequence[float], std: Sequence[float],
                 root: Path | None = None):
        self.files = list(files)
        self.root = None if root is None else Path(root)
        self.input_size = int(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, i: int) -> str:
        """The name of file ``i`` in reports: relative to ``root`` where there is one."""
        path = self.files[i]
        return path.relative_to(self.root).as_posix() if self.root is not None else str(path)

    def file(self, name: str) -> Path:
        """The file behind the report name ``name`` (see :meth:`name`)."""
        return self.root / name if self.root is not None else Path(name)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        name = self.name(i)
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
            s = self.input_size
            short = resize_side(s)
            w, h = im.size
            scale = short / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        except (OSError, ValueError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as e:
            return {"index": i, "ok": False, "path": name, "error": f"{type(e).__name__}: {e}"}
        return {"index": i, "ok": True, "path": name, "image": (x - self.mean) / self.std}


@dataclass
class LabeledSplit:
    """Images with one class each: ``labels[i]`` is the model output index of image i."""

    name: str
    dataset: torch.utils.data.Dataset
    labels: Tensor


@dataclass
class LabeledData:
    """The two splits of a labeled image set, and how they were made."""

    rank: LabeledSplit
    eval: LabeledSplit
    source: str
    path: str
    class_names: list[str]           # the model's output names
    messages: list[str] = field(default_factory=list)

    def info(self) -> dict:
        """The results' record of the data: source, path, split names and sizes, and the
        number of images of each class present, per split."""
        def counts(split: LabeledSplit) -> dict[str, int]:
            c = torch.bincount(split.labels, minlength=len(self.class_names)).tolist()
            present = sorted(set(self.rank.labels.tolist()) | set(self.eval.labels.tolist()))
            return {self.class_names[i]: int(c[i]) for i in present}
        return {"source": self.source, "path": self.path,
                "rank_split": self.rank.name, "eval_split": self.eval.name,
                "rank_images": len(self.rank.labels), "eval_images": len(self.eval.labels),
                "class_counts": {"rank": counts(self.rank), "eval": counts(self.eval)}}


def _norm_name(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def match_classes(data_names: Sequence[str], class_names: Sequence[str] | None,
                  what: str) -> tuple[dict[str, int], list[str]]:
    """Map data class names onto model output indices (exact, else ignoring case, ``_`` and
    ``-``). Returns ``(mapping, messages)``; raises when nothing matches."""
    if not class_names:
        raise SkipError("the model has no class names, so its outputs cannot be matched to labeled images",
                        cli="pass --class-names FILE (one name per line, or JSON), or --no-ablation",
                        python="pass class_names=[...] (or a file of names), or ablation=False")
    exact = {n: i for i, n in enumerate(class_names)}
    loose: dict[str, int] = {}
    for i, n in enumerate(class_names):
        loose.setdefault(_norm_name(n), i)
    mapping, missing = {}, []
    for name in data_names:
        if name in exact:
            mapping[name] = exact[name]
        elif _norm_name(name) in loose:
            mapping[name] = loose[_norm_name(name)]
        else:
            missing.append(name)
    if not mapping:
        shown = ", ".join(list(data_names)[:8]) + (" …" if len(data_names) > 8 else "")
        outs = ", ".join(list(class_names)[:8]) + (" …" if len(class_names) > 8 else "")
        raise SkipError(f"none of the {len(data_names)} classes of {what} ({shown or 'none'}) is one of "
                        f"the model's {len(class_names)} outputs ({outs})",
                        cli="pass --ablation-data with folders named after the model's classes (or "
                        "--class-names FILE), or --no-ablation",
                        python="pass ablation_data= a folder with sub-folders named after the model's classes "
                        "(or class_names=), or ablation=False")
    msgs = []
    if missing:
        msgs.append(f"{len(missing)} class(es) of {what} are not outputs of the model and were left out: "
                    + ", ".join(missing[:20]) + (" …" if len(missing) > 20 else ""))
    return mapping, msgs


def _alternate(indices: list[int]) -> tuple[list[int], list[int]]:
    return indices[0::2], indices[1::2]


def labeled_from_broden(index: BrodenIndex | str | os.PathLike, class_names: Sequence[str] | None,
                        input_size: int, mean: Sequence[float], std: Sequence[float], *,
                        category: str = CLASS_CATEGORY, rank_split: str = RANK_SPLIT,
                        eval_split: str = EVAL_SPLIT) -> LabeledData:
    """Classes from the whole-image labels of ``category`` (the toy world's scenes).

    Images are split by the index's ``split`` column (``rank_split`` / ``eval_split``); when
    either has no labeled image, the labeled images are split alternately instead.
    """
    index = index if isinstance(index, BrodenIndex) else BrodenIndex(index)
    cat_labels = {num: lab.display for num, lab in index.labels.items() if lab.category == category}
    if not cat_labels:
        raise SkipError(f"the labeled data has no whole-image labels in category {category!r} to use as classes",
                        cli=f"({index.root}) pass --ablation-data FOLDER (one sub-folder of images per class) "
                        "or --no-ablation",
                        python=f"({index.root}) pass ablation_data=FOLDER (one sub-folder of images per class) "
                        "or ablation=False")
    names = sorted(set(cat_labels.values()))
    mapping, msgs = match_classes(names, class_names, f"the {category} labels of {index.root.name}")
    by_split: dict[str, list[int]] = {}
    labels: dict[int, int] = {}
    ambiguous = 0
    for i, rec in enumerate(index.records):
        hits = {mapping[cat_labels[n]] for n in rec.image_labels if n in cat_labels and cat_labels[n] in mapping}
        if len(hits) == 1:
            labels[i] = hits.pop()
            by_split.setdefault(rec.split, []).append(i)
        elif len(hits) > 1:
            ambiguous += 1
    if ambiguous:
        msgs.append(f"{ambiguous} image(s) carry more than one class label and were left out")
    rank, ev = by_split.get(rank_split, []), by_split.get(eval_split, [])
    rank_name, eval_name = rank_split, eval_split
    if not rank or not ev:
        everything = sorted(labels)
        rank, ev = _alternate(everything)
        missing = rank_split if not rank else eval_split
        msgs.append(f"no labeled images in split {missing!r}; the labeled images were split alternately "
                    "into ranking and evaluation halves")
        rank_name, eval_name = "even images", "odd images"
    if not rank or not ev:
        raise SkipError(f"the labeled data has too few labeled images for ablation ({len(labels)})",
                        cli=f"add labeled images to {index.root}, or pass --ablation-data FOLDER",
                        python=f"add labeled images to {index.root}, or pass ablation_data=FOLDER")

    def split(name: str, idx: list[int]) -> LabeledSplit:
        ds = BrodenDataset(index, input_size=input_size, mean=mean, std=std, with_labels=False, indices=idx)
        return LabeledSplit(name, ds, torch.tensor([labels[i] for i in idx], dtype=torch.long))

    return LabeledData(split(rank_name, rank), split(eval_name, ev), "broden", str(index.root),
                       list(class_names or []), msgs)


def _inside(path: Path, real_root: str) -> bool:
    """Whether ``path`` resolves (through every symbolic link) inside the folder ``real_root``."""
    return os.path.realpath(path).startswith(real_root + os.sep)


def _folder_classes(root: Path) -> dict[str, list[Path]]:
    """Class folders of ``root`` and their images; anything that a symbolic link leads out of
    ``root`` (a class folder, an image) is left out, never read."""
    real_root = os.path.realpath(root)
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _inside(d, real_root):
            continue
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                       and _inside(p, real_root))
        out[d.name] = files
    return out


def labeled_from_folder(root: str | os.PathLike, class_names: Sequence[str] | None, input_size: int,
                        mean: Sequence[float], std: Sequence[float], *, rank_split: str = RANK_SPLIT,
                        eval_split: str = EVAL_SPLIT) -> LabeledData:
    """An ImageFolder-style directory: ``root/<class>/*.jpg``, or ``root/<rank_split>/<class>/…``
    and ``root/<eval_split>/<class>/…`` (by default ``train`` and ``val``). Class folders are
    matched to the model's class names; without the two split folders, each class's images
    (sorted by name) alternate between the ranking and the evaluation half."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SkipError("the labeled data is not a folder", cli=f"check --ablation-data {root}",
                        python=f"check ablation_data={str(root)!r}")
    rs, es = root / rank_split, root / eval_split
    msgs: list[str] = []
    if rs.is_dir() and es.is_dir():
        parts = {"rank": _folder_classes(rs), "eval": _folder_classes(es)}
        names = sorted(set(parts["rank"]) | set(parts["eval"]))
        rank_name, eval_name = rank_split, eval_split
    else:
        classes = _folder_classes(root)
        names = sorted(classes)
        parts = {"rank": {}, "eval": {}}
        for n, files in classes.items():
            parts["rank"][n], parts["eval"][n] = _alternate(files)
        rank_name, eval_name = "even images", "odd images"
    if not names:
        raise SkipError("the labeled data holds no class folders (expected <folder>/<class>/image.jpg)",
                        cli=f"check --ablation-data {root}", python=f"check ablation_data={str(root)!r}")
    mapping, more = match_classes(names, class_names, f"the folder {root.name}")
    msgs += more

    def split(name: str, which: str) -> LabeledSplit:
        files, labels = [], []
        for n in names:
            if n in mapping:
                fs = parts[which].get(n, [])
                files += fs
                labels += [mapping[n]] * len(fs)
        if not files:
            raise SkipError(f"the labeled data has no images for the {name!r} split",
                            cli=f"check --ablation-data {root}", python=f"check ablation_data={str(root)!r}")
        return LabeledSplit(name, FolderImages(files, input_size, mean, std, root=root), torch.tensor(labels, dtype=torch.long))

    return LabeledData(split(rank_name, "rank"), split(eval_name, "eval"), "folder", str(root),
                       list(class_names or []), msgs)


def labeled_from_tensors(rank_images: Tensor, rank_labels: Tensor, eval_images: Tensor,
                         eval_labels: Tensor, class_names: Sequence[str]) -> LabeledData:
    """Normalized images and labels already in memory (tests, notebooks)."""
    return LabeledData(LabeledSplit("train", TensorImages(rank_images), torch.as_tensor(rank_labels).long()),
                       LabeledSplit("val", TensorImages(eval_images), torch.as_tensor(eval_labels).long()),
                       "tensors", "", list(class_names))


def open_labeled_data(path: str | os.PathLike, class_names: Sequence[str] | None, input_size: int,
                      mean: Sequence[float], std: Sequence[float], *, category: str = CLASS_CATEGORY,
                      rank_split: str = RANK_SPLIT, eval_split: str = EVAL_SPLIT) -> LabeledData:
    """A Broden-format folder (with class labels in ``category``) or an ImageFolder."""
    p = Path(path).expanduser()
    if (p / "index.csv").is_file():
        return labeled_from_broden(p, class_names, input_size, mean, std, category=category,
                                   rank_split=rank_split, eval_split=eval_split)
    return labeled_from_folder(p, class_names, input_size, mean, std, rank_split=rank_split,
                               eval_split=eval_split)


def _image_file(dataset: torch.utils.data.Dataset, name: str) -> Path:
    """The file behind an item's ``path`` (``name``) in a split's dataset, for the console."""
    if isinstance(dataset, BrodenDataset):
        return dataset.index.images / name
    if isinstance(dataset, FolderImages):
        return dataset.file(name)
    return Path(name)


def labeled_batches(dataset: torch.utils.data.Dataset, batch_size: int,
                    num_workers: int | None = None, rows: range | None = None) -> Iterator[dict]:
    """Loader batches (``index``, ``image``, ``bad``) of a split's dataset, or of its items
    ``rows`` (their ``index`` still counted over the whole dataset); images held in memory
    (:class:`TensorImages`) are sliced directly, without a loader."""
    rows = range(len(dataset)) if rows is None else rows
    if not isinstance(dataset, TensorImages):
        part = dataset if len(rows) == len(dataset) else torch.utils.data.Subset(dataset, rows)
        for batch in make_loader(part, batch_size, num_workers):
            for name, err in batch.get("bad", []):   # skipped, counted by the caller, warned here
                warn_skipped_image(_image_file(dataset, name), err)
            yield batch
        return
    for i in range(rows.start, rows.stop, batch_size):
        j = min(rows.stop, i + batch_size)
        yield {"index": torch.arange(i, j), "image": dataset.images[i:j].float(), "bad": []}
