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
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dissect.version import __version__

from .cache import cache_key, default_cache_dir
from .data.broden import BrodenDataset, BrodenIndex, fetch_broden
from .devices import resolve_device
from .errors import DissectError
from .experiments.ablation import AblationConfig, ablation_for_report
from .experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from .experiments.strips import render_unit_strips
from .models import LoadedModel, from_module, load_model, resolve_layer

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .experiments.generator import GeneratorExperimentConfig  # noqa: F401

SITE_MARKER = ".dissect-site"
TOYWORLD_DEFAULT_SIZE = {64: 2000}   # images in the default toy-world probe set, by image size
TOYWORLD_LARGE_DEFAULT = 400         # for larger images (e.g. 224 px for VGG-16)


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


def as_loaded(model, weights: str | None, input_size: int | None, progress: bool,
              kind: str | None = None, z_dim: int | None = None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return from_module(model, name=type(model).__name__, input_size=input_size or 224,
                           kind=kind or "classifier", z_dim=z_dim)
    return load_model(str(model), weights=weights, input_size=input_size, progress=progress,
                      kind=kind, z_dim=z_dim)


DEFAULT_MODELS = ("toy", "toygan")
GENERATOR_QUANTILE = 0.01       # METHOD.md section 3: the 2020 default for generators
GENERATOR_PROBE_SIZE = 1000     # latents in a generator's default probe set


def report(model=DEFAULT_MODELS, *, weights: str | None = None, layers: Sequence[str] = (),
           data: str = "toyworld", data_size: int | None = None, data_seed: int = 1,
           split: str | None = None, out: str | os.PathLike = "site",
           config: DissectConfig | None = None, input_size: int | None = None,
           cache_dir: str | os.PathLike | None = None, force: bool = False,
           reproducible: bool = False, notes: str | os.PathLike | None = None,
           command: str | None = None, progress: bool = True,
           zip_path: str | os.PathLike | None = None, thumb_height: int = 48,
           jpeg_quality: int = 85, ablation: "bool | AblationConfig" = True,
           ablation_data: str | os.PathLike | None = None, kind: str | None = None,
           z_dim: int | None = None, segmenter: str | None = None,
           generator_quantile: float | None = None, generator_quantile_space: str | None = None,
           interventions: "bool | GeneratorExperimentConfig" = True) -> Path:
    """Dissect ``model`` (one, or a list of models for one site) and write (or update) the
    site at ``out``. Returns the index path. The default reports both toy models.

    Classifiers: ``ablation`` (True, False or an :class:`AblationConfig`) runs the classifier
    ablation for every layer, on ``ablation_data`` (a Broden folder with class labels or an
    ImageFolder; default: the probe set's scene labels); problems with it are reported in
    the results and on the page, and never stop the report.

    Generators (``kind="generator"`` with ``z_dim`` for your own): the probe set is the
    generator's outputs for ``data_size`` latents (seed ``data_seed``) labeled by
    ``segmenter`` (default: the model's own, else ``toy``); dissected with
    ``generator_quantile`` over ``generator_quantile_space`` (default 0.01 over the upsampled
    maps, the 2020 paper's) unless ``config`` is given with another quantile or space; ``interventions`` (True, False or a
    :class:`~dissect.experiments.generator.GeneratorExperimentConfig`) runs ablation and
    insertion with strips.

    ``zip_path`` also writes the whole site as one archive; ``thumb_height`` (grid thumbnail
    height in px) and ``jpeg_quality`` (re-encoded images) trade size for detail.
    """
    t0 = time.time()
    user_config = config is not None
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
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise DissectError("no model to report on; pass --model NAME")
    if len(models) > 1 and (layers or weights is not None):
        raise DissectError("--layer and --weights apply to one model: add --model NAME "
                           f"(this run reports {len(models)} models: {', '.join(map(str, models))})")

    loaded_all = [as_loaded(m, weights, input_size, progress, kind, z_dim) for m in models]
    slugs = [slugify(m.name) for m in loaded_all]
    if len(set(slugs)) != len(slugs):
        raise DissectError(f"two models share the name {slugs}; report them one at a time")
    dflt = DissectConfig()
    gq = generator_quantile if generator_quantile is not None else (
        config.quantile if user_config and config.quantile != dflt.quantile else GENERATOR_QUANTILE)
    gqs = generator_quantile_space or (config.quantile_space if user_config and
                                       config.quantile_space != dflt.quantile_space else "upsampled")
    runs = []
    summaries = []
    for loaded in loaded_all:
        t_model = time.time()
        if loaded.kind == "generator":
            import dataclasses
            cfg = dataclasses.replace(config, quantile=gq, quantile_space=gqs)
            results, run_dir = _generator_run(loaded, layers, cfg, cache, data_size, data_seed, force,
                                              reproducible, command, progress, segmenter, interventions)
        else:
            results, run_dir = _classifier_run(loaded, layers, config, cache, data, data_size, data_seed,
                                               split, force, reproducible, command, progress, ablation,
                                               ablation_data)
        runs.append((results, run_dir))
        summaries.append((loaded.name, results["layers"], time.time() - t_model))

    from .site import write_site
    site_dir = write_site(out, runs, reproducible=reproducible, notes_md=notes_md,
                          thumb_height=thumb_height, jpeg_quality=jpeg_quality)
    from .publish import format_size_report, site_size, zip_site
    zip_bytes = zip_site(out, zip_path).stat().st_size if zip_path is not None else None
    if progress:
        print(format_size_report(site_size(out), zip_bytes))
        for name, layer_results, secs in summaries:
            units = sum(layer["num_units"] for layer in layer_results)
            dets = sum(layer["summary"]["detectors"] for layer in layer_results)
            print(f"dissect: {name}: {len(layer_results)} layer(s), {units} units, "
                  f"{dets} detectors in {secs:.0f}s")
        print(f"dissect: done in {time.time() - t0:.0f}s; open {(Path(site_dir) / 'index.html').resolve()}")
    return Path(site_dir) / "index.html"


def _layer_paths(loaded: LoadedModel, layers: Sequence[str]) -> list[tuple[str, str | None]]:
    paths: list[tuple[str, str | None]] = []
    by_path = {}
    for alias, target in loaded.aliases.items():
        by_path.setdefault(target, alias)   # the first (paper) name given for a module
    for name in (layers or loaded.default_layers):
        path, alias = resolve_layer(loaded, name)
        paths.append((path, alias or by_path.get(path)))
    if not paths:
        raise DissectError(f"no layer to dissect in {loaded.name}: pass --layer NAME "
                           f"(see `dissect layers {loaded.name}`)")
    return list(dict.fromkeys(paths))


def _dissect_and_summarize(loaded, paths, dataset, config, cache, parts, force, progress):
    stats = dissect_layers(loaded.module, [p for p, _ in paths], dataset, config,
                           cache_dir=cache / "stats", cache_parts=parts, force=force,
                           progress=progress)
    run_dir = cache / "runs" / cache_key(parts, [p for p, _ in paths], config.stats_key(),
                                         config.tile_size, __version__)
    layer_results = []
    for path, alias in paths:
        slug = slugify(alias or path)
        summary = summarize_layer(stats[path], dataset, config)
        strips = render_unit_strips(stats[path], dataset, run_dir, slug,
                                    tile_size=config.tile_size, progress=progress)
        for unit, strip in zip(summary["units"], strips):
            unit["strip"] = strip
        layer_results.append({"name": path, "alias": alias, "slug": slug, **summary})
    return stats, run_dir, layer_results


def _base_results(loaded, layer_results, probe: dict, config, dataset, device, command, reproducible):
    return {
        "schema": "dissect.results",
        "schema_version": 1,
        "model": {
            "name": loaded.name, "slug": slugify(loaded.name), "kind": loaded.kind,
            "weights": loaded.weights, "weights_sha256": loaded.weights_sha256,
            "weights_file_sha256": loaded.weights_file_sha256,
            "num_parameters": sum(p.numel() for p in loaded.module.parameters()),
            "input_size": loaded.input_size, "class_names": loaded.class_names,
            "z_dim": loaded.z_dim,
        },
        "probe": probe,
        "params": {
            "quantile": config.quantile, "quantile_space": config.quantile_space,
            "iou_threshold": config.iou_threshold, "top_k": config.top_k,
            "top_concepts": config.top_concepts, "upsample": "bilinear",
            "upsample_size": list(dataset.label_size),
            "binarize": "S_k > T_k (strict)",
            "union": dataset.index.annotation_rule,
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


def _classifier_run(loaded, layers, config, cache, data, data_size, data_seed, split, force,
                    reproducible, command, progress, ablation, ablation_data):
    device = resolve_device(config.device)
    paths = _layer_paths(loaded, layers)
    probe = open_probe_data(data, loaded, cache, data_size, data_seed, split, progress)
    data_sha = probe.dataset.index.sha256()
    parts = {"weights_sha256": loaded.weights_sha256, "model": loaded.name,
             "data_sha256": data_sha, "indices": cache_key(probe.dataset.indices),
             "input_size": loaded.input_size}
    stats, run_dir, layer_results = _dissect_and_summarize(loaded, paths, probe.dataset, config, cache,
                                                           parts, force, progress)
    skipped = sorted({s for p, _ in paths for s in stats[p].skipped})
    probe_info = {
        "name": probe.name, "path": str(data), "index_sha256": data_sha,
        "num_images": len(probe.dataset) - len(skipped), "num_skipped": len(skipped),
        "skipped": skipped[:100], "label_size": list(probe.dataset.label_size),
        "categories": probe.dataset.index.categories,
        "num_concepts": len(probe.dataset.index.labels), "split": split,
        "seed": data_seed if data == "toyworld" else None,
    }
    results = _base_results(loaded, layer_results, probe_info, config, probe.dataset, device,
                            command, reproducible)
    if ablation is not False:
        acfg = ablation if isinstance(ablation, AblationConfig) else AblationConfig(
            device=config.device, num_workers=config.num_workers)
        results["ablation"] = ablation_for_report(
            loaded, layer_results, probe.path, None if ablation_data is None else str(ablation_data),
            acfg, progress=progress)
    return results, run_dir


def _generator_run(loaded, layers, config, cache, data_size, data_seed, force, reproducible,
                   command, progress, segmenter_name, interventions):
    from .data.generated import write_generated_probe
    from .experiments.generator import GeneratorExperimentConfig, generator_for_report
    from .segmenters import load_segmenter, segmenter_key

    device = resolve_device(config.device)
    paths = _layer_paths(loaded, layers)
    spec = loaded.spec
    seg_name = segmenter_name or (spec.segmenter if spec is not None and spec.segmenter else None)
    if seg_name is None:
        seg_name = "toy" if loaded.input_size == 64 else "deeplabv3_resnet50"
    seg = load_segmenter(seg_name, progress=progress)
    n = data_size or GENERATOR_PROBE_SIZE
    key = cache_key(loaded.weights_sha256, segmenter_key(seg), n, data_seed)
    path = write_generated_probe(loaded, seg, cache / "generated" / f"{slugify(loaded.name)}-{key}", n,
                                 data_seed, batch_size=config.batch_size, device=device,
                                 progress=progress)
    dataset = BrodenDataset(BrodenIndex(path), input_size=loaded.input_size, model_input="latent")
    data_sha = dataset.index.sha256()
    parts = {"weights_sha256": loaded.weights_sha256, "model": loaded.name,
             "data_sha256": data_sha, "indices": cache_key(dataset.indices), "kind": "generator"}
    stats, run_dir, layer_results = _dissect_and_summarize(loaded, paths, dataset, config, cache,
                                                           parts, force, progress)
    probe_info = {
        "name": "generated", "path": str(path), "index_sha256": data_sha,
        "num_images": len(dataset), "num_skipped": 0, "skipped": [],
        "label_size": list(dataset.label_size), "categories": dataset.index.categories,
        "num_concepts": len(dataset.index.labels), "split": None, "seed": data_seed,
        "latents": f"z ~ N(0, I), z_dim {loaded.z_dim}, latent i from numpy "
                   f"default_rng([{data_seed}, i])",
        "segmenter": seg.provenance(),
    }
    results = _base_results(loaded, layer_results, probe_info, config, dataset, device, command,
                            reproducible)
    if interventions is not False:
        gcfg = interventions if isinstance(interventions, GeneratorExperimentConfig) else \
            GeneratorExperimentConfig(device=config.device, batch_size=config.batch_size)
        results["generator"] = generator_for_report(loaded, layer_results, stats, dataset, seg, run_dir,
                                                    gcfg, progress=progress)
    return results, run_dir
