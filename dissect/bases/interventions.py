"""What a feature does in a generator: the generator interventions of the units
(:func:`dissect.experiments.generator.generator_experiments`: ablation, insertion, their
strips) run on a basis's features instead, and set beside the units' (the results'
``bases[i].interventions``, docs/bases.md).

Removing feature ``f`` is ``a' = a - z_f(a) d_f`` at every position; painting it in a region
sets its code there to its high quantile ``v_f`` over the probe set's codes,
``a' = a + (v_f - z_f(a)) d_f`` (:class:`~dissect.experiments.runner.Directions`). A concept's
features are ranked by their IoU for it, as its units are; the concepts are the ones the
units' experiments take on the bases' layer (the model's, else chosen from the units' IoU),
so that the units' and the features' experiments answer the same question.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dissect import distributed
from dissect.bases.ablation import feature_directions
from dissect.bases.dictionary import Dictionary
from dissect.bases.features import TITLES
from dissect.devices import resolve_device
from dissect.experiments.dissection import LayerStats
from dissect.experiments.generator import (GeneratorExperimentConfig, experiment_concepts, generator_experiments,
                                           report_config)
from dissect.segmenters.base import Segmenter
from dissect.site.interventions import find_experiment, main_point


def feature_interventions(loaded, entry: dict, dictionaries: dict[str, Dictionary],
                          feature_stats: Mapping[str, LayerStats], units_stats: LayerStats, dataset,
                          seg: Segmenter, run_dir: Path, config: GeneratorExperimentConfig | None,
                          units_layers: Sequence[dict], progress: bool = False) -> dict[str, Any]:
    """The results' ``bases[i].interventions`` of the bases' layer ``entry["layer"]``: for each
    basis of ``dictionaries`` (its features' statistics ``feature_stats[basis]``, for their
    IoU), the units' generator experiments with its features. ``units_layers``: the results'
    ``generator.layers``; when the layer is not among them, the units' experiments run here
    too, for the comparison. Strips go to ``run_dir/interventions/<layer slug>``, named
    ``<basis>-ablate-<concept>`` and ``<basis>-insert-<concept>``."""
    t0 = time.time()
    layer, slug = entry["layer"], entry["layer_slug"]
    cfg = report_config(loaded, seg, config)
    primary = dataset.index.primary_category_tensor()
    ncat = len(dataset.index.categories)
    units_iou = units_stats.iou(primary, ncat).numpy()
    ablate, insert = experiment_concepts(units_iou, seg, cfg)
    cfg = replace(cfg, ablate=tuple(ablate), insert=tuple(insert))
    out_dir, rel = run_dir / "interventions" / slug, f"interventions/{slug}"
    units = None
    if not any(r.get("layer") == layer for r in units_layers):
        units = generator_experiments(loaded, layer, units_iou, seg, dataset.latents,
                                      cfg, out_dir, rel, progress=progress)
        units["slug"] = slug
    device = resolve_device(cfg.device)
    features = {}
    for basis, d in dictionaries.items():
        res = generator_experiments(loaded, layer, feature_stats[basis].iou(primary, ncat).numpy(), seg,
                                    dataset.latents, cfg, out_dir, rel, progress=progress,
                                    directions=feature_directions(d, device), strip_prefix=f"{basis}-")
        res["slug"] = slug
        features[basis] = res
    return {
        "layer": layer, "ablate": list(ablate), "insert": list(insert), "bases": ["units", *features],
        "titles": {b: TITLES[b] for b in ["units", *features]}, "params": cfg.to_dict(),
        "rule": ("removing feature f: a' = a - z_f(a) d_f at every position of the layer (a unit: zeroed); "
                 "inserting it: its code set to its high quantile v_f over the probe set inside the region, "
                 "a' = a + (v_f - z_f(a)) d_f (a unit: set to v_f); a concept's features ranked by their IoU "
                 "for it, as its units are"),
        "units": units, "features": features, "seconds": round(time.time() - t0, 2),
    }


def generator_step(entry: dict | None, dictionaries: dict[str, Dictionary], feature_stats: Mapping[str, LayerStats],
                   progress: bool = True) -> Callable[..., None] | None:
    """What the report runs after a generator's interventions: the features' experiments on the
    bases' layer, written into ``entry`` (the results' ``bases`` entry) as ``interventions``;
    None when there is nothing to run. The step takes ``(loaded, stats, dataset, seg, run_dir,
    config, generator)``: the units' statistics by layer, the generated probe set and its
    segmenter, the run folder, the interventions' config and the results' ``generator``."""
    if entry is None or not dictionaries:
        return None

    def step(loaded, stats: Mapping[str, LayerStats], dataset, seg: Segmenter, run_dir: Path,
             config: GeneratorExperimentConfig | None, generator: dict) -> None:
        layer = entry["layer"]
        found = feature_interventions(loaded, entry, dictionaries, feature_stats, stats[layer], dataset, seg,
                                      run_dir, config, generator.get("layers") or [], progress)
        entry["interventions"] = found
        if progress and distributed.is_main():
            print(f"dissect: bases interventions of {layer}: {_summary(found, generator)} "
                  f"({found['seconds']:.1f}s)", flush=True)
    return step


def _summary(found: dict, generator: dict) -> str:
    """One line: each removed concept's pixel drop with its top N units or features removed."""
    units = found["units"] or next((r for r in generator.get("layers") or [] if r.get("layer") == found["layer"]), {})
    parts = []
    for concept in found["ablate"]:
        shown = []
        for b in found["bases"]:
            rec = units if b == "units" else found["features"][b]
            exp = find_experiment(rec, "ablation", concept)
            drop = None if exp is None else main_point(exp)["drop"]
            shown.append(f"{found['titles'][b]} {'-' if drop is None else f'{drop:.0%}'}")
        parts.append(f"{concept} pixels removed by the top {found['params']['units']}: {', '.join(shown)}")
    return "; ".join(parts) or "no concept to remove"
