"""Open-vocabulary labels (CLIP-Dissect, Oikarinen and Weng, ICLR 2023): every unit scored
against a list of words with a CLIP model, no segmentation needed.

``--labeler clip`` (beside the IoU labels, ``--labeler iou``, the default; ``both`` is
``iou`` and ``clip``) labels each unit of each dissected layer with the concept of its
highest SoftWPMI (:mod:`dissect.stats.softwpmi`), over the images of the probe set:

1. the unit's activation on each image, its map's spatial mean (CLIP-Dissect's "avg");
2. each image's CLIP image embedding (the CLIP model's own preprocessing), and each
   concept's text embedding (the concept itself as the prompt, as CLIP-Dissect does);
3. their cosine similarities, then SoftWPMI with CLIP-Dissect's defaults (top 100 images,
   a = 10, lambda = 1).

The concept list (``--concepts``): a text file, one concept a line (empty lines skipped);
``probe``, the probe set's own label names (then the labels can be compared with the IoU
labels: the per-layer agreement); by default Broden's 1,153 label names (as CLIP-Dissect
cleaned them, ``broden_concepts.txt``). The CLIP model (``--clip-model``) is an open_clip
name, ``openclip:ARCH/PRETRAINED`` (:mod:`dissect.models.zoo.openclip`), by default
``openclip:ViT-B-16/openai`` (CLIP-Dissect's default, a 599 MB download).

Activations, image embeddings and text embeddings are cached under keys that hold
everything they depend on (the model's weights hash and layer, the probe set's tables and
files, the images used, the CLIP model's weights hash and preprocessing, the concept list's
hash), so a stale entry cannot be read: the failure CLIP-Dissect's README warns about.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dissect.atomic import atomic_save
from dissect.cache import cache_key
from dissect.errors import DissectError
from dissect.hooks import Trace
from dissect.stats.softwpmi import SoftWPMIParams, soft_wpmi
from dissect.version import __version__

LABELERS = ("iou", "clip")
DEFAULT_CLIP_MODEL = "openclip:ViT-B-16/openai"
DEFAULT_CONCEPTS = "broden_concepts.txt"
PROBE_CONCEPTS = "probe"
TOP_CONCEPTS = 5
PROMPT = "{}"   # CLIP-Dissect's prompt: the concept itself


@dataclass(frozen=True)
class LabelerOptions:
    """Which labelers run (``iou``, ``clip``) and the open-vocabulary labeler's inputs."""

    labelers: tuple[str, ...] = ("iou",)
    concepts: str | None = None           # a text file, "probe", or None: the shipped Broden names
    clip_model: str = DEFAULT_CLIP_MODEL   # openclip:ARCH/PRETRAINED
    clip_weights: str | None = None        # None: the tag's; "none": random (tests)
    softwpmi: SoftWPMIParams = field(default_factory=SoftWPMIParams)
    top_concepts: int = TOP_CONCEPTS
    batch_size: int = 64

    @property
    def clip(self) -> bool:
        return "clip" in self.labelers

    def validate(self) -> None:
        """Every check before any work: the labelers' names, the extra, the concept file."""
        unknown = [name for name in self.labelers if name not in LABELERS]
        if unknown or not self.labelers:
            raise DissectError(f"--labeler takes iou, clip or both, not {', '.join(unknown) or 'nothing'}")
        if not self.clip:
            return
        if not self.clip_model.startswith("openclip:"):
            raise DissectError(f"--clip-model takes an open_clip model, openclip:ARCH/PRETRAINED (e.g. "
                               f"{DEFAULT_CLIP_MODEL}), not {self.clip_model!r}")
        from dissect.models.hub import require   # (the models package: only when the clip labeler runs)
        from dissect.models.zoo.openclip import parse_name
        require("clip", "--labeler clip")
        parse_name(self.clip_model.removeprefix("openclip:"), self.clip_weights, "--clip-model")
        self.softwpmi.validate()
        if not isinstance(self.top_concepts, int) or self.top_concepts < 1:
            raise DissectError(f"the open-vocabulary labeler keeps >= 1 top concepts, got {self.top_concepts!r}")
        if self.concepts != PROBE_CONCEPTS:
            read_concepts(self.concepts)

    def files(self) -> list:
        """The CLIP model's weights, when the clip labeler runs (``dissect fetch``, offline check)."""
        if not self.clip:
            return []
        from dissect.models.zoo.openclip import openclip_files
        return openclip_files(self.clip_model.removeprefix("openclip:"), self.clip_weights, "--clip-model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The open-vocabulary labeler's argument group."""
    g = parser.add_argument_group("open-vocabulary labels (CLIP-Dissect; needs pip install 'dissect[clip]')")
    g.add_argument("--labeler", action="append", choices=("iou", "clip", "both"), default=None,
                   help="which labels each unit gets: iou (the default: concepts of the probe set by IoU), "
                        "clip (concepts of a word list by SoftWPMI with a CLIP model), or both; repeatable")
    g.add_argument("--concepts", metavar="FILE", default=None,
                   help="the clip labeler's concept list: a text file, one concept a line, or 'probe' (the probe "
                        "set's own label names, so that the two labels can be compared); default: Broden's "
                        "1,153 label names")
    g.add_argument("--clip-model", metavar="openclip:ARCH/PRETRAINED", default=DEFAULT_CLIP_MODEL,
                   help=f"the CLIP model of the clip labeler (default {DEFAULT_CLIP_MODEL}, a 599 MB download)")
    g.add_argument("--clip-weights", choices=("none",), default=None,
                   help="none: the CLIP model randomly initialized (seed 0): a control, whose labels show "
                        "what SoftWPMI finds without a trained CLIP")
    g.add_argument("--clip-top-k", type=int, default=SoftWPMIParams.top_k, metavar="K",
                   help="SoftWPMI's number of top images per unit (default 100, as CLIP-Dissect)")


def options_from_args(args: argparse.Namespace) -> LabelerOptions:
    """:class:`LabelerOptions` from the parsed arguments of :func:`add_arguments`."""
    chosen: list[str] = []
    for name in args.labeler or ["iou"]:
        for one in (("iou", "clip") if name == "both" else (name,)):
            if one not in chosen:
                chosen.append(one)
    return LabelerOptions(labelers=tuple(chosen), concepts=args.concepts, clip_model=args.clip_model,
                          clip_weights=args.clip_weights, softwpmi=SoftWPMIParams(top_k=args.clip_top_k))


# ------------------------------------------------------------------------- concepts


def read_concepts(path: str | os.PathLike | None) -> list[str]:
    """The concepts of a text file, one a line (stripped; empty lines skipped; each once);
    ``None``: the shipped Broden names. Not text, or empty: a one-line error."""
    if path is None:
        text = resources.files("dissect.labelers").joinpath(DEFAULT_CONCEPTS).read_text(encoding="utf-8")
        where = "the shipped concept list"
    else:
        where = f"--concepts {path}"
        try:
            raw = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise DissectError(f"cannot read {where}: {exc.strerror or exc}") from None
        if b"\0" in raw:
            raise DissectError(f"{where} is not a text file (it holds NUL bytes); give one concept a line")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DissectError(f"{where} is not UTF-8 text; give one concept a line") from None
    concepts = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
    if not concepts:
        raise DissectError(f"{where} holds no concepts; give one concept a line")
    return concepts


def probe_concepts(dataset) -> list[str]:
    """The probe set's own label names (as its pages show them), each once."""
    return list(dict.fromkeys(label.display for label in dataset.index.labels.values() if label.number > 0
                              and label.display and label.display != "-"))


def concepts_for(opts: LabelerOptions, dataset) -> tuple[list[str], str]:
    """``(concepts, where they came from)`` (``dataset``: the probe set, for ``probe``)."""
    if opts.concepts == PROBE_CONCEPTS:
        return probe_concepts(dataset), "the probe set's label names"
    if opts.concepts is None:
        return read_concepts(None), "Broden's label names (shipped)"
    return read_concepts(opts.concepts), f"file {Path(opts.concepts).name}"


# ------------------------------------------------------------------------- features


def _cached(path: Path, compute, force: bool) -> torch.Tensor:
    """The tensor at ``path``, else ``compute()`` saved there (atomically)."""
    if path.is_file() and not force:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:   # a damaged entry is recomputed
            pass
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda tmp: torch.save(value, tmp))
    return value


def unit_means(model: torch.nn.Module, layers: Sequence[str], dataset, batch_size: int, device,
               progress: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each layer's ``[images, units]`` spatial means of its maps over ``dataset`` (items
    ``index``, ``ok``, ``image``: the model's inputs), and which images were read (a bool
    mask; an unreadable image has zeros)."""
    from dissect.data.broden import make_loader

    model = model.to(device).eval()
    out: dict[str, torch.Tensor] = {}
    read = torch.zeros(len(dataset), dtype=torch.bool)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=0)
    with torch.no_grad():
        for batch in tqdm(loader, desc="dissect: unit means", unit="batch", disable=not progress, leave=False):
            if "image" not in batch:
                continue
            with Trace(model, layers, stop=True) as tr:
                model(batch["image"].to(device))
            for layer in layers:
                means = tr[layer].float().mean(dim=(2, 3)).cpu()
                if layer not in out:
                    out[layer] = torch.zeros(len(dataset), means.shape[1])
                out[layer][batch["index"]] = means
            read[batch["index"]] = True
    return out, read


def _clip_input(image: Image.Image, preprocess: dict[str, Any]) -> torch.Tensor:
    """One image as the CLIP model's preprocessing prepares it: the shorter side resized to
    the input size (its interpolation), the centre cropped, scaled to [0, 1], normalized."""
    h, w = preprocess["input_size"]
    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}.get(preprocess.get("interpolation"),
                                                                      Image.BICUBIC)
    scale = max(h / image.height, w / image.width)
    image = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), method)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    image = image.crop((left, top, left + w, top + h))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1).copy()) / 255.0
    mean = torch.tensor(preprocess["mean"]).view(3, 1, 1)
    std = torch.tensor(preprocess["std"]).view(3, 1, 1)
    return (x - mean) / std


def image_embeddings(clip, load_rgb, n: int, read: torch.Tensor, batch_size: int, device,
                     progress: bool = False) -> torch.Tensor:
    """CLIP's image embedding ``[n, dim]`` of every read image ``load_rgb(i)``."""
    model = clip.model.to(device).eval()
    rows = [i for i in range(n) if read[i]]
    out = None
    with torch.no_grad():
        for lo in tqdm(range(0, len(rows), batch_size), desc="dissect: CLIP images", unit="batch",
                       disable=not progress, leave=False):
            part = rows[lo:lo + batch_size]
            x = torch.stack([_clip_input(load_rgb(i), clip.preprocess) for i in part]).to(device)
            emb = model.encode_image(x).float().cpu()
            if out is None:
                out = torch.zeros(n, emb.shape[1])
            out[part] = emb
    return out if out is not None else torch.zeros(n, 1)


def text_embeddings(clip, concepts: Sequence[str], batch_size: int, device) -> torch.Tensor:
    """CLIP's text embedding ``[concepts, dim]`` of each concept (the concept as the prompt)."""
    model = clip.model.to(device).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(concepts), batch_size):
            tokens = clip.tokenizer([PROMPT.format(c) for c in concepts[lo:lo + batch_size]]).to(device)
            out.append(model.encode_text(tokens).float().cpu())
    return torch.cat(out)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` cosine similarities of the rows of ``a`` and ``b``."""
    return torch.nn.functional.normalize(a.double(), dim=1) @ torch.nn.functional.normalize(b.double(), dim=1).T


# ------------------------------------------------------------------------- labels


def unit_labels(scores: torch.Tensor, concepts: Sequence[str], top: int) -> list[dict]:
    """Each unit's label (its concept of highest SoftWPMI, ties to the earlier concept) and
    its ``top`` concepts with their scores."""
    out = []
    order = torch.argsort(-scores, dim=1, stable=True)[:, :top]
    for u in range(scores.shape[0]):
        tops = [{"concept": concepts[int(c)], "score": round(float(scores[u, c]), 4)} for c in order[u]]
        out.append({"label": tops[0]["concept"], "score": tops[0]["score"], "top": tops})
    return out


def agreement(units: Sequence[dict], concepts: Sequence[str]) -> dict[str, Any]:
    """How often the open-vocabulary label is the IoU label, over the units with an IoU label
    that is in the concept list (and an open-vocabulary label)."""
    known = {c.lower() for c in concepts}
    compared = [u for u in units if u.get("label") and u["label"].lower() in known
                and (u.get("clip") or {}).get("label")]
    agree = sum(1 for u in compared if u["clip"]["label"].lower() == u["label"].lower())
    return {"compared": len(compared), "agree": agree,
            "fraction": round(agree / len(compared), 4) if compared else None}


@dataclass
class OpenVocabulary:
    """Open-vocabulary labels of some layers over some images: the run's parameters
    (results' ``params.clip_labels``), the concept list, and each layer's unit labels."""

    params: dict[str, Any]
    concepts: list[str]
    labels: dict[str, list[dict]]   # layer -> one entry per unit (unit_labels)


def open_vocabulary(loaded, layers: Sequence[str], model_images, load_rgb, images_key: Any,
                    concepts: list[str], source: str, opts: LabelerOptions, cache: Path, device,
                    progress: bool = False, force: bool = False) -> OpenVocabulary:
    """SoftWPMI labels of every unit of ``layers`` of ``loaded`` over the images of
    ``model_images`` (a dataset of the model's inputs, items ``index``/``ok``/``image``) and
    ``load_rgb(i)`` (the same images as PIL images, for CLIP). ``images_key``: what identifies
    those images (files, sizes, times), for the cache keys."""
    from dissect.models.weights import state_dict_sha256
    from dissect.models.zoo.openclip import load_clip

    concepts_sha = hashlib.sha256("\n".join(concepts).encode()).hexdigest()
    clip = load_clip(opts.clip_model.removeprefix("openclip:"), opts.clip_weights, what="--clip-model")
    clip_sha = state_dict_sha256(clip.model)
    folder = Path(cache) / "clip"
    model_key = {"weights_sha256": loaded.weights_sha256, "model": loaded.name, "input_size": loaded.input_size,
                 "mean": list(loaded.mean), "std": list(loaded.std)}

    def means() -> dict[str, torch.Tensor]:
        acts, read = unit_means(loaded.module, layers, model_images, opts.batch_size, device, progress)
        return {"read": read, **acts}

    acts = _cached(folder / f"means-{cache_key('means', model_key, images_key, list(layers), __version__)}.pt",
                   means, force)
    read = acts["read"]
    n = len(model_images)
    images = _cached(folder / f"images-{cache_key('images', clip_sha, clip.preprocess, images_key, __version__)}.pt",
                     lambda: image_embeddings(clip, load_rgb, n, read, opts.batch_size, device, progress), force)
    texts = _cached(folder / f"texts-{cache_key('texts', clip_sha, concepts_sha, PROMPT, __version__)}.pt",
                    lambda: text_embeddings(clip, concepts, opts.batch_size, device), force)
    similarity = cosine(images[read], texts)
    labels = {layer: unit_labels(soft_wpmi(similarity, acts[layer][read], opts.softwpmi), concepts,
                                 opts.top_concepts) for layer in layers}
    p = opts.softwpmi
    params = {"model": clip.name, "weights": clip.weights, "weights_sha256": clip_sha,
              "weights_file_sha256": clip.weights_file_sha256, "preprocess": clip.preprocess,
              "concepts": {"source": source, "count": len(concepts), "sha256": concepts_sha}, "prompt": PROMPT,
              "score": "SoftWPMI (CLIP-Dissect)", "activation": "spatial mean of the unit's map",
              "num_images": int(read.sum()), "top_k": min(p.top_k, int(read.sum())), "a": p.a, "lambda": p.lam,
              "p_start": p.p_start, "p_end": p.p_end, "min_prob": p.min_prob}
    return OpenVocabulary(params, concepts, labels)


def clip_labels_for_report(loaded, layer_results: list[dict], dataset, opts: LabelerOptions, cache: Path,
                           parts: dict, device, progress: bool = False, force: bool = False) -> dict[str, Any]:
    """Add the open-vocabulary labels over the probe set ``dataset`` to ``layer_results``
    (each unit's ``clip``, each layer's ``clip``); returns the run's ``clip_labels``
    parameters (results' ``params``). ``parts``: the dissection's cache parts."""
    concepts, source = concepts_for(opts, dataset)
    images = copy.copy(dataset)
    images.with_labels = False
    key = {k: parts[k] for k in ("data_sha256", "data_files", "indices") if k in parts}
    ov = open_vocabulary(loaded, [la["name"] for la in layer_results], images, dataset.load_rgb, key, concepts,
                         source, opts, cache, device, progress, force)
    for layer in layer_results:
        for unit, label in zip(layer["units"], ov.labels[layer["name"]]):
            unit["clip"] = None if unit.get("dead") or unit.get("invalid") else label
        layer["clip"] = {"model": ov.params["model"], "concepts": source,
                         "agreement": agreement(layer["units"], concepts)}
    return ov.params


def clip_labels_for_folder(loaded, layers: Sequence[str], folder: str | os.PathLike, opts: LabelerOptions,
                           cache: Path, device="cpu", progress: bool = False, force: bool = False) -> OpenVocabulary:
    """Open-vocabulary labels of ``layers`` (names or aliases) over any folder of images: no
    segmentation, no probe set. The model sees each image as :class:`~dissect.data.labeled.FolderImages`
    prepares it (shorter side resized, centre crop, normalized); CLIP with its own preprocessing."""
    from dissect.data.labeled import FolderImages
    from dissect.data.segmented import image_files, listing_digest
    from dissect.models.loading import resolve_layer

    opts.validate()
    if opts.concepts == PROBE_CONCEPTS:
        raise DissectError("--concepts probe needs a probe set with label names; give a concept file for a folder")
    root = Path(folder).expanduser()
    files = image_files(root) if root.is_dir() else []
    if not files:
        raise DissectError(f"no images in {folder}; give a folder of image files")
    concepts, source = concepts_for(opts, None)
    paths = [resolve_layer(loaded, name)[0] for name in layers]

    def load_rgb(i: int) -> Image.Image:
        with Image.open(files[i]) as im:
            return im.convert("RGB")

    key = {"folder": listing_digest(root.resolve(), [f.resolve() for f in files]), "num_files": len(files)}
    return open_vocabulary(loaded, paths, FolderImages(files, loaded.input_size, loaded.mean, loaded.std, root),
                           load_rgb, key, concepts, source, opts, cache, device, progress, force)
