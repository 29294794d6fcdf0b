"""``dissect report``: gather (model, probe data, dissection), then render the site.

The Python API mirrors the CLI::

    import dissect
    site = dissect.report(model="toy", out="site")                    # by name
    site = dissect.report(model=my_module, layers=["layer4"], data="path/to/broden",
                          out="site", input_size=224)                  # a model you hold
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import __version__
from .data.broden import BrodenDataset, BrodenIndex, fetch_broden
from .errors import DissectError
from .experiments.ablation import AblationConfig, ablation_for_report
from .experiments.dissection import (DissectConfig, cache_key, dissect_layers, render_unit_strips,
                                     resolve_device, summarize_layer)
from .models import LoadedModel, from_module, load_model, resolve_layer

SITE_MARKER = ".dissect-site"
TOYWORLD_DEFAULT_SIZE = {64: 2000}   # images in the default toy-world probe set, by image size
TOYWORLD_LARGE_DEFAULT = 400         # for larger images (e.g. 224 px for VGG-16)


def default_cache_dir() -> Path:
    """``$DISSECT_CACHE``, else ``$XDG_CACHE_HOME/dissect``, else ``~/.cache/dissect``."""
    if os.environ.get("DISSECT_CACHE"):
        return Path(os.environ["DISSECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dissect"


def slugify(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return s or "model"


def check_out_dir(out: Path) -> None:
    """Refuse a non-empty ``--out`` that is not a dissect site, before any work is done."""
    if out.exists() and not out.is_dir():
        raise DissectError(f"--out {out} is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise DissectError(f"--out {out} is not empty and is not a dissect site; "
                           "choose an empty or new folder")


@dataclass
class ProbeData:
    name: str
    path: Path
    dataset: BrodenDataset


def open_probe_data(data: str, loaded: LoadedModel, cache_dir: Path, size: int | None = None,
                    seed: int = 1, split: str | None = None, progress: bool = True) -> ProbeData:
    """``toyworld`` (generated and cached), ``broden`` (downloaded) or a Broden folder."""
    if data == "toyworld":
        from .data.toyworld import write_broden
        image_size = loaded.input_size
        n = size or TOYWORLD_DEFAULT_SIZE.get(image_size, TOYWORLD_LARGE_DEFAULT)
        path = cache_dir / "toyworld" / f"n{n}-seed{seed}-px{image_size}"
        write_broden(path, n=n, seed=seed, image_size=image_size, progress=progress)
        name = "toyworld"
    elif data in ("broden", "broden1_224", "broden1_227"):
        path = fetch_broden(cache_dir / "broden", "broden1_227" if data == "broden1_227" else "broden1_224",
                            progress=progress)
        name = path.name
    else:
        path = Path(data).expanduser()
        name = path.resolve().name
    index = BrodenIndex(path)
    indices = None
    if split:
        indices = [i for i, r in enumerate(index.records) if r.split == split]
        if not indices:
            splits = sorted({r.split for r in index.records})
            raise DissectError(f"no images in split {split!r}; splits here: {', '.join(splits)}")
    if size and data != "toyworld":
        indices = (indices or list(range(len(index.records))))[:size]
    ds = BrodenDataset(index, input_size=loaded.input_size, mean=loaded.mean, std=loaded.std,
                       indices=indices)
    return ProbeData(name, path, ds)


def as_loaded(model, weights: str | None, input_size: int | None, progress: bool) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return from_module(model, name=type(model).__name__, input_size=input_size or 224)
    return load_model(str(model), weights=weights, input_size=input_size, progress=progress)


def report(model="toy", *, weights: str | None = None, layers: Sequence[str] = (),
           data: str = "toyworld", data_size: int | None = None, data_seed: int = 1,
           split: str | None = None, out: str | os.PathLike = "site",
           config: DissectConfig | None = None, input_size: int | None = None,
           cache_dir: str | os.PathLike | None = None, force: bool = False,
           reproducible: bool = False, notes: str | os.PathLike | None = None,
           command: str | None = None, progress: bool = True,
           zip_path: str | os.PathLike | None = None, thumb_height: int = 48,
           jpeg_quality: int = 85, ablation: "bool | AblationConfig" = True,
           ablation_data: str | os.PathLike | None = None) -> Path:
    """Dissect ``model`` and write (or update) the site at ``out``. Returns the index path.

    ``ablation`` (True, False or an :class:`AblationConfig`) runs the classifier ablation
    for every layer, on ``ablation_data`` (a Broden folder with class labels or an
    ImageFolder; default: the probe set's scene labels); problems with it are reported in
    the results and on the page, and never stop the report.

    ``zip_path`` also writes the whole site as one archive; ``thumb_height`` (grid thumbnail
    height in px) and ``jpeg_quality`` (re-encoded images) trade size for detail.
    """
    t0 = time.time()
    config = config or DissectConfig()
    config.validate()
    if not (isinstance(thumb_height, int) and 8 <= thumb_height <= 1024):
        raise DissectError(f"thumb_height must be an integer from 8 to 1024 px, got {thumb_height!r}")
    if not (isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 95):
        raise DissectError(f"jpeg_quality must be an integer from 1 to 95, got {jpeg_quality!r}")
    if zip_path is not None and Path(zip_path).is_dir():
        raise DissectError(f"--zip {zip_path} is a folder; give a file name such as site.zip")
    out = Path(out)
    check_out_dir(out)
    notes_md = None
    if notes is not None:
        try:
            notes_md = Path(notes).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DissectError(f"cannot read --notes {notes}: {e.strerror or e}") from None
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    device = resolve_device(config.device)

    loaded = as_loaded(model, weights, input_size, progress)
    paths: list[tuple[str, str | None]] = []
    by_path = {}
    for alias, target in loaded.aliases.items():
        by_path.setdefault(target, alias)   # the first (paper) name given for a module
    for name in (layers or loaded.default_layers):
        path, alias = resolve_layer(loaded, name)
        paths.append((path, alias or by_path.get(path)))
    if not paths:
        raise DissectError("no layer to dissect: pass --layer NAME (see `dissect layers MODEL`)")
    paths = list(dict.fromkeys(paths))
    probe = open_probe_data(data, loaded, cache, data_size, data_seed, split, progress)

    data_sha = probe.dataset.index.sha256()
    parts = {"weights_sha256": loaded.weights_sha256, "model": loaded.name,
             "data_sha256": data_sha, "indices": cache_key(probe.dataset.indices),
             "input_size": loaded.input_size}
    stats = dissect_layers(loaded.module, [p for p, _ in paths], probe.dataset, config,
                           cache_dir=cache / "stats", cache_parts=parts, force=force,
                           progress=progress)

    run_dir = cache / "runs" / cache_key(parts, [p for p, _ in paths], config.stats_key(),
                                         config.tile_size, __version__)
    layer_results = []
    for path, alias in paths:
        slug = slugify(alias or path)
        summary = summarize_layer(stats[path], probe.dataset, config)
        strips = render_unit_strips(stats[path], probe.dataset, run_dir, slug,
                                    tile_size=config.tile_size, progress=progress)
        for unit, strip in zip(summary["units"], strips):
            unit["strip"] = strip
        layer_results.append({"name": path, "alias": alias, "slug": slug, **summary})

    skipped = sorted({s for p, _ in paths for s in stats[p].skipped})
    results = {
        "schema": "dissect.results",
        "schema_version": 1,
        "model": {
            "name": loaded.name, "slug": slugify(loaded.name), "kind": loaded.kind,
            "weights": loaded.weights, "weights_sha256": loaded.weights_sha256,
            "weights_file_sha256": loaded.weights_file_sha256,
            "num_parameters": sum(p.numel() for p in loaded.module.parameters()),
            "input_size": loaded.input_size, "class_names": loaded.class_names,
        },
        "probe": {
            "name": probe.name, "path": str(data), "index_sha256": data_sha,
            "num_images": len(probe.dataset) - len(skipped), "num_skipped": len(skipped),
            "skipped": skipped[:100], "label_size": list(probe.dataset.label_size),
            "categories": probe.dataset.index.categories,
            "num_concepts": len(probe.dataset.index.labels), "split": split,
            "seed": data_seed if data == "toyworld" else None,
        },
        "params": {
            "quantile": config.quantile, "quantile_space": config.quantile_space,
            "iou_threshold": config.iou_threshold, "top_k": config.top_k,
            "top_concepts": config.top_concepts, "upsample": "bilinear",
            "upsample_size": list(probe.dataset.label_size),
            "binarize": "S_k > T_k (strict)",
            "union": "category-restricted (NetDissect: images holding any concept of the category)",
            "batch_size": config.batch_size, "image_size": loaded.input_size,
        },
        "provenance": {
            "tool": "dissect", "tool_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "command": command or "dissect.report() (Python API)",
            "created": None if reproducible else
            datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        },
        "layers": layer_results,
    }
    if ablation is not False and loaded.kind == "classifier":
        acfg = ablation if isinstance(ablation, AblationConfig) else AblationConfig(
            device=config.device, num_workers=config.num_workers)
        results["ablation"] = ablation_for_report(
            loaded, layer_results, probe.path, None if ablation_data is None else str(ablation_data),
            acfg, progress=progress)
    from .site import write_site
    site_dir = write_site(out, [(results, run_dir)], reproducible=reproducible, notes_md=notes_md,
                            thumb_height=thumb_height, jpeg_quality=jpeg_quality)
    from .publish import format_size_report, site_size, zip_site
    zip_bytes = zip_site(out, zip_path).stat().st_size if zip_path is not None else None
    if progress:
        print(format_size_report(site_size(out), zip_bytes))
    if progress:
        units = sum(layer["num_units"] for layer in layer_results)
        dets = sum(layer["summary"]["detectors"] for layer in layer_results)
        print(f"dissect: {loaded.name}: {len(layer_results)} layer(s), {units} units, "
              f"{dets} detectors in {time.time() - t0:.0f}s; open {(Path(site_dir) / 'index.html').resolve()}")
    return Path(site_dir) / "index.html"
