"""Dissect a layer's feature bases beside its units, and compare them (docs/bases.md).

Each basis is a :class:`~dissect.bases.dictionary.Dictionary` fit on the layer's activation
vectors (one per spatial position: :func:`activation_vectors`), cached by the model, the
data and the options. :class:`FeatureMaps` runs the network up to the layer and applies the
dictionaries to its map, so that every basis's feature maps are traced like layers and go
through the very same dissection as the units (:func:`dissect.experiments.dissection.dissect_layers`:
same quantile, upsampling, IoU, top images; the statistics are cached the same way).
:func:`compare_bases` counts, for the units and for each basis, detectors, unique concepts,
the mean best IoU per category and the concepts that only one of them finds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dissect.atomic import atomic_save
from dissect.bases.dictionary import (Dictionary, explained_variance, fit_nmf, fit_pca, fit_sae, mean_active,
                                      rotation_dictionary)
from dissect.bases.options import RECONSTRUCTION_FLOOR, BasisOptions
from dissect.cache import cache_key
from dissect.data.broden import make_loader
from dissect.data.labeled import FolderImages
from dissect.data.segmented import image_files
from dissect.devices import resolve_device
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, LayerStats, dataset_view, dissect_layers, unit_scores
from dissect.experiments.rotation import ROTATION_METHOD
from dissect.feature_maps import infer_layout
from dissect.hooks import Trace
from dissect.version import __version__

#: The version of the ``bases`` section of results.json (docs/results-schema.md).
BASES_VERSION = 1
#: How each basis is made, as the results state it.
METHODS = {
    "sae": "sparse autoencoder on the layer's activation vectors (one per position), centred and divided by "
           "their RMS norm: z = TopK(ReLU(W_enc (x - b_dec) + b_enc)) (or ReLU with an L1 penalty), "
           "x ~ W_dec z + b_dec with unit-norm decoder rows; Adam on minibatches",
    "pca": "principal components of the activation vectors (eigenvectors of their covariance), "
           "signed so that each projection's heavier tail is positive; feature = projection of the centred vector",
    "nmf": "non-negative matrix factorization of the (post-ReLU) activation vectors, x ~ w H, multiplicative "
           "updates; feature = the non-negative code w of each position for the fixed H",
    "rotation": ROTATION_METHOD + "; feature f = sum_d R[f, d] a_d (the rotation experiment's R(1))",
}
#: The probe images (evenly spaced) whose activation vectors the bases are fit on: the fit
#: reads no more of a large probe set (positions are sampled from each, up to max_vectors).
FIT_IMAGES = 512
TITLES = {"units": "units", "sae": "SAE features", "pca": "PCA components", "nmf": "NMF factors",
          "rotation": "rotated units"}


class FeatureMaps(nn.Module):
    """``net`` run up to ``layer`` (cut there), whose map is read by each dictionary: the
    feature maps of basis ``b`` are the output of the submodule ``bases.b``."""

    def __init__(self, net: nn.Module, layer: str, dictionaries: dict[str, Dictionary]):
        super().__init__()
        self.net = net
        self.layer = layer
        self.bases = nn.ModuleDict(dictionaries)

    def forward(self, x: torch.Tensor) -> None:
        with Trace(self.net, [self.layer], stop=True) as tr:
            self.net(x)
        a = tr[self.layer]
        for d in self.bases.values():
            d(a)


def _image_batches(model: nn.Module, dataset, data: str | None, input_size: int, mean, std,
                   batch_size: int, num_workers: int | None):
    """Batches of normalized images: the probe set's, or those of the folder ``data``."""
    if data is None:
        stride = max(1, len(dataset) // FIT_IMAGES)   # evenly spaced images, decoded without labels
        view = dataset_view(dataset, with_labels=False, indices=list(dataset.indices)[::stride][:FIT_IMAGES])
        for batch in make_loader(view, batch_size, num_workers):
            if len(batch["index"]):
                yield batch["image"]
        return
    folder = Path(data)
    files = image_files(folder) if folder.is_dir() else []
    if not files:
        raise DissectError(f"--basis-data {data}: not a folder of images (.jpg, .png, ...); give a folder "
                           "of images to fit the bases on, or leave it out to use the probe set")
    images = FolderImages(files, input_size, mean, std, root=folder)
    for start in range(0, len(images), batch_size):
        items = [images[i] for i in range(start, min(start + batch_size, len(images)))]
        ok = [it["image"] for it in items if it["ok"]]
        if ok:
            yield torch.stack(ok)


def activation_vectors(model: nn.Module, layer: str, batches, max_vectors: int, num_images: int,
                       seed: int, device: torch.device) -> torch.Tensor:
    """``[P, C]`` activation vectors of ``layer``, ``ceil(max_vectors / num_images)`` random
    positions of each image (seeded; at most ``max_vectors`` in all), on the CPU."""
    g = torch.Generator().manual_seed(int(seed))
    per_image = max(1, math.ceil(max_vectors / max(num_images, 1)))
    out, total = [], 0
    model = model.to(device).eval()
    with torch.no_grad():
        for x in batches:
            with Trace(model, [layer], stop=True) as tr:
                model(x.to(device))
            a = tr[layer].float()                                      # [B, C, H, W]
            b, c = a.shape[:2]
            flat = a.reshape(b, c, -1).transpose(1, 2).cpu()           # [B, HW, C]
            take = min(per_image, flat.shape[1])
            pick = torch.rand(b, flat.shape[1], generator=g).argsort(1)[:, :take]
            out.append(torch.gather(flat, 1, pick[..., None].expand(-1, -1, c)).reshape(-1, c))
            total += out[-1].shape[0]
            if total >= max_vectors:
                break
    if not out:
        raise DissectError("no image to fit the bases on")
    return torch.cat(out)[:max_vectors]


def _fit(basis: str, x: torch.Tensor | None, units: int, opts: BasisOptions, layer: str) -> Dictionary:
    if basis == "rotation":
        return rotation_dictionary(units, opts.seed)
    if basis == "pca":
        return fit_pca(x)[0]
    if basis == "nmf":
        if float(x.min()) < 0:
            raise DissectError(f"--basis nmf needs non-negative activations (post-ReLU), and layer {layer!r} has "
                               f"negative values (down to {float(x.min()):.3g}); use pca or sae for this layer")
        return fit_nmf(x, units, opts.seed)
    return fit_sae(x, opts.sae_width * units, opts.sae_k, opts.seed, opts.steps, opts.sae_l1, epochs=opts.epochs)


def _folder_fingerprint(data: str | None) -> list | None:
    """The images of ``--basis-data`` by name, size and time (part of a fit's cache key)."""
    if data is None:
        return None
    folder = Path(data)
    return [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in (image_files(folder) if folder.is_dir() else [])]


def fit_bases(model: nn.Module, layer: str, names: Sequence[str], units: int, dataset, opts: BasisOptions,
              parts: dict, cache_dir: Path, *, input_size: int, mean, std, config: DissectConfig,
              force: bool = False) -> dict[str, dict[str, Any]]:
    """Each basis of ``names`` fit on ``layer`` (or read from the cache): per basis its
    dictionary, its cache key, explained variance, mean active features and fit seconds."""
    device = resolve_device(config.device)
    fitted: dict[str, dict[str, Any]] = {}
    vectors: list[torch.Tensor] = []

    def x() -> torch.Tensor:
        if not vectors:
            batches = _image_batches(model, dataset, opts.data, input_size, mean, std,
                                     config.batch_size, config.num_workers)
            n = min(len(dataset), FIT_IMAGES) if opts.data is None else len(image_files(Path(opts.data)))
            vectors.append(activation_vectors(model, layer, batches, opts.max_vectors, n, opts.seed, device))
        return vectors[0]

    for basis in names:
        opts.check_layer(basis, units, layer)
        model_parts = {k: parts.get(k) for k in ("weights_sha256", "model", "input_size")}
        key = cache_key(parts if opts.data is None else model_parts, layer, basis, opts.key(basis), units,
                        __version__, _folder_fingerprint(opts.data), FIT_IMAGES)
        path = Path(cache_dir) / f"basis-{key}.pt"
        record = None
        if path.is_file() and not force:
            try:
                record = torch.load(path, map_location="cpu", weights_only=True)
                record["dictionary"] = Dictionary.from_state(record["dictionary"])
            except Exception:   # a damaged entry is refit
                record = None
        if record is None:
            t0 = time.time()
            data = None if basis == "rotation" else x()
            d = _fit(basis, None if data is None else data.to(device), units, opts, layer)
            seconds = time.time() - t0
            ev = mv = None
            if data is not None:
                with torch.no_grad():
                    ev, mv = explained_variance(d, data.to(device)), mean_active(d, data.to(device))
            record = {"dictionary": d, "explained_variance": ev, "mean_active": mv,
                      "vectors": None if data is None else int(data.shape[0]), "seconds": seconds}
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            atomic_save(path, lambda tmp, r=record: torch.save({**r, "dictionary": r["dictionary"].state()}, tmp))
        record["key"] = key
        fitted[basis] = record
    return fitted


def dissect_bases(model: nn.Module, layer: str, fitted: dict[str, dict[str, Any]], dataset,
                  config: DissectConfig, parts: dict, cache_dir: Path, *, force: bool = False,
                  progress: bool = True) -> dict[str, LayerStats]:
    """Every basis's feature maps dissected in one pass over ``dataset`` (cached by the
    dictionaries' keys): per basis, its statistics."""
    dictionaries = {b: r["dictionary"] for b, r in fitted.items()}
    wrapper = FeatureMaps(model, layer, dictionaries)
    device = resolve_device(config.device)
    with torch.no_grad(), Trace(model.to(device), [layer], stop=True) as tr:
        model(dataset.example_input(device))
    _, _, h, w = tr[layer].shape
    for b, d in dictionaries.items():
        if infer_layout((1, d.num_features, h, w)).kind != "map":
            raise DissectError(f"basis {b}: {d.num_features} features on a {h}x{w} map would be read as "
                               "channels-last; choose another --sae-width")
    key = {**parts, "bases": {b: r["key"] for b, r in fitted.items()}}
    stats = dissect_layers(wrapper, [f"bases.{b}" for b in dictionaries], dataset, config, cache_dir=cache_dir,
                           cache_parts=key, force=force, progress=progress)
    return {b: stats[f"bases.{b}"] for b in dictionaries}


def feature_record(basis: str, fitted: dict[str, Any], summary: dict, opts: BasisOptions) -> dict[str, Any]:
    """One basis's entry of the results' ``bases[i].features``."""
    d: Dictionary = fitted["dictionary"]
    ev = fitted.get("explained_variance")
    params: dict[str, Any] = {"seed": opts.seed} if basis != "sae" else {
        "expansion": opts.sae_width, "k": opts.sae_k or None, "l1": opts.sae_l1 if not opts.sae_k else None,
        "steps": opts.steps, "seed": opts.seed}
    note = None
    if basis == "sae" and ev is not None and ev < RECONSTRUCTION_FLOOR:
        note = (f"this SAE explains {ev:.0%} of the layer's variance, below the floor of {RECONSTRUCTION_FLOOR:.0%}: "
                "its features describe a compressed layer, not the layer; a wider SAE or a larger k may reconstruct it")
    return {"basis": basis, "title": TITLES[basis], "method": METHODS[basis], "num_features": d.num_features,
            "params": params, "fit_vectors": fitted.get("vectors"),
            "fit_data": opts.data if opts.data is not None else "probe set",
            "explained_variance": None if ev is None else round(ev, 4),
            "mean_active": None if fitted.get("mean_active") is None else round(fitted["mean_active"], 3),
            "reconstruction_floor": RECONSTRUCTION_FLOOR if basis == "sae" else None,
            "note": note, **summary}


def best_by_concept(stats: LayerStats, index) -> dict[int, float]:
    """Each concept's best IoU over the units (or features) of ``stats``: label number -> IoU."""
    scores = unit_scores(stats, index)
    best = scores.iou.max(axis=0) if scores.iou.shape[0] else scores.iou.sum(axis=0)
    return {int(c): float(best[c]) for c in index.labels}


def compare_bases(records: dict[str, dict], best: dict[str, dict[int, float]], index) -> list[dict[str, Any]]:
    """Per basis (units first): detectors, unique concepts, mean best IoU per category (over
    the probe set's concepts of that category: each concept's best IoU over the basis), and
    the detected concepts that the units do not detect (``only_here``) and the reverse."""
    cats = list(index.categories)
    prim = index.primary_category_tensor().tolist()

    def found(rec: dict) -> set[str]:
        return {u["label"] for u in rec["units"] if u.get("detector") and u.get("label")}

    units_found = found(records["units"])
    rows = []
    for basis, rec in records.items():
        here = found(rec)
        by_cat = {}
        for gi, g in enumerate(cats):
            vals = [v for c, v in best[basis].items() if prim[c] == gi]
            if vals:
                by_cat[g] = round(sum(vals) / len(vals), 4)
        rows.append({"basis": basis, "title": TITLES[basis], "num_features": len(rec["units"]),
                     "detectors": rec["summary"]["detectors"], "unique_concepts": rec["summary"]["unique_concepts"],
                     "mean_best_iou_by_category": by_cat,
                     "only_here": sorted(here - units_found) if basis != "units" else [],
                     "only_units": sorted(units_found - here) if basis != "units" else []})
    return rows
