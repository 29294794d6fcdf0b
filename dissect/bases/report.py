"""The results' ``bases`` section: the deepest dissected layer's feature bases, fit, dissected
beside its units and compared with them (docs/results-schema.md, docs/bases.md)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from dissect import distributed
from dissect.bases.features import (BASES_VERSION, FeatureMaps, best_by_concept, compare_bases, dissect_bases,
                                    feature_record, fit_bases)
from dissect.bases.options import BasisOptions
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, LayerStats, summarize_layer
from dissect.experiments.strips import render_unit_strips
from dissect.formulas.run import add_formulas
from dissect.formulas.search import FormulaOptions
from dissect.hooks import Trace
from dissect.stats.intervals import IntervalOptions


def basis_slug(layer_slug: str, basis: str) -> str:
    """The folder of a basis's pages inside its layer's folder, and its strips' folder name."""
    return f"{layer_slug}--{basis}"


def check_bases(loaded, path: str, dataset, opts: BasisOptions, *, default: bool, device,
                experiments: bool = True) -> None:
    """Refuse, before any work, a basis that does not fit layer ``path`` (one line);
    ``experiments``: whether the units' ablation (or a generator's interventions) runs, which
    ``--basis-ablation`` runs beside."""
    names = opts.features(default)
    if opts.ablation and not experiments:
        off = "--no-interventions" if loaded.kind == "generator" else "--no-ablation"
        raise DissectError(f"--basis-ablation runs beside the units' experiments, which {off} turns off: "
                           f"drop one of the two")
    if opts.ablation and not names:
        raise DissectError("--basis-ablation needs a basis besides the units: add --basis sae (or pca, nmf, rotation)")
    if not names:
        return
    if opts.data is not None and loaded.kind == "generator":
        raise DissectError("--basis-data is for classifiers: a generator's bases are fit on its own samples")
    with torch.no_grad(), Trace(loaded.module.to(device), [path], stop=True) as tr:
        loaded.module.eval()(dataset.example_input(device))
    for basis in names:
        opts.check_layer(basis, int(tr[path].shape[1]), path)


def bases_for_report(loaded, layer: dict[str, Any], stats: LayerStats, dataset, config: DissectConfig,
                     opts: BasisOptions, parts: dict, cache_dir: Path, run_dir: Path, *, default: bool,
                     force: bool = False, progress: bool = True,
                     formulas: FormulaOptions | None = None) -> tuple[dict[str, Any], dict, dict] | None:
    """The bases of ``layer`` (its results record, with ``slug``; ``stats``: its units'
    statistics) that ``opts`` asks for (``default``: whether this model gets the default
    SAE): ``(entry, dictionaries, feature_stats)``, the entry of the results' ``bases``, the
    fitted dictionaries by basis and their features' statistics by basis (for what the
    features do: :mod:`dissect.bases.ablation`, :mod:`dissect.bases.interventions`), or None
    when there are none. With ``formulas`` whose length was asked for (``--formula-length``)
    and a layer labelled with formulas (its ``formulas`` block), the features get formulas of
    the same length, searched the same way (:mod:`dissect.formulas`)."""
    names = opts.features(default)
    if not names:
        return None
    path = layer["name"]
    # the features' IoUs without the bootstrap's third pass: the comparison needs none, and
    # a dictionary has more features than the layer has units
    config = dataclasses.replace(config, intervals=IntervalOptions(replicates=0))
    t0 = time.time()
    fitted = fit_bases(loaded.module, path, names, layer["num_units"], dataset, opts, parts, cache_dir,
                       input_size=loaded.input_size, mean=loaded.mean, std=loaded.std, config=config, force=force)
    t1 = time.time()
    stats_by_basis = dissect_bases(loaded.module, path, fitted, dataset, config, parts, cache_dir, force=force,
                                   progress=progress)
    index = dataset.index
    records: dict[str, dict] = {"units": layer}
    best = {"units": best_by_concept(stats, index)}
    features = []
    for basis in names:
        summary = summarize_layer(stats_by_basis[basis], dataset, config)
        summary["name"] = path
        if distributed.is_main():   # the images go to the site, which rank 0 writes
            strips = render_unit_strips(stats_by_basis[basis], dataset, run_dir, basis_slug(layer["slug"], basis),
                                        tile_size=config.tile_size, progress=progress)
            for unit, strip in zip(summary["units"], strips):
                unit["strip"] = strip
        record = feature_record(basis, fitted[basis], summary, opts)
        record["slug"] = basis
        features.append(record)
        records[basis] = record
        best[basis] = best_by_concept(stats_by_basis[basis], index)
    # asked for (not the toy's default length, which its units alone get: the default report's time)
    length = (layer.get("formulas") or {}).get("length", 1) if formulas is not None and formulas.length else 1
    if length > 1:
        _feature_formulas(loaded.module, path, fitted, features, stats_by_basis, layer["slug"], dataset, config,
                          formulas, length, parts, cache_dir, run_dir, force, progress)
    if progress and distributed.is_main():
        for r in features:
            ev = f", explained variance {r['explained_variance']:.3f}" if r["explained_variance"] is not None else ""
            print(f"dissect: {layer.get('alias') or path} {r['title']}: {r['num_features']} features, "
                  f"{r['summary']['detectors']} detectors, {r['summary']['unique_concepts']} unique concepts{ev}")
        print(f"dissect: bases fit in {t1 - t0:.1f}s, dissected in {time.time() - t1:.1f}s", flush=True)
    return {"version": BASES_VERSION, "layer": path, "alias": layer.get("alias"), "layer_slug": layer["slug"],
            "num_units": layer["num_units"], "features": features,
            "comparison": compare_bases(records, best, index)}, {b: fitted[b]["dictionary"] for b in names}, \
        stats_by_basis


def _feature_formulas(model, path: str, fitted: dict, features: list[dict], stats_by_basis: dict[str, LayerStats],
                      layer_slug: str, dataset, config: DissectConfig, options: FormulaOptions, length: int,
                      parts: dict, cache_dir: Path, run_dir: Path, force: bool, progress: bool) -> None:
    """Formulas of ``length`` concepts for every basis's features, as for the units: their
    records' ``formula`` (per feature), ``formulas`` (per basis) and the parts' strips."""
    wrapper = FeatureMaps(model, path, {f["basis"]: fitted[f["basis"]]["dictionary"] for f in features})
    layers = [{"name": f"bases.{f['basis']}", "slug": basis_slug(layer_slug, f["basis"]), "units": f["units"]}
              for f in features]
    add_formulas(wrapper, layers, dataset, {f"bases.{b}": s for b, s in stats_by_basis.items()}, config, options,
                 {rec["name"]: length for rec in layers}, progress, cache_dir=cache_dir,
                 cache_parts={**parts, "bases": {f["basis"]: fitted[f["basis"]]["key"] for f in features}},
                 force=force, strips_dir=run_dir)
    for f, rec in zip(features, layers):
        f["formulas"] = rec.get("formulas")
