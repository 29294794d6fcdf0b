"""What a feature does in a classifier: the class-by-class ablation of the units
(:func:`dissect.experiments.ablation.ablate_layer`) run on a basis's features instead, and set
beside the units' (the results' ``bases[i].ablation``, docs/bases.md).

Removing feature ``f`` from the layer is ``a' = a - z_f(a) d_f`` at every position (its code
along its decoder direction, :class:`~dissect.experiments.runner.Directions`); the features of
each class are ranked by the same rule as the units (the drop in the class's balanced accuracy
on the ranking split when the feature alone is removed) and the top N removed together, the
balanced accuracy reported on the held-out split with its interval, next to N random features.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from dissect.bases.dictionary import Dictionary
from dissect.bases.features import TITLES
from dissect.experiments.ablation import AblationConfig, ablate_layer, split_runners
from dissect.experiments.metrics import rounded
from dissect.experiments.runner import Directions

#: Top features listed per class and basis.
LISTED = 5


def feature_directions(d: Dictionary, device: torch.device | str) -> Directions:
    """A dictionary's features as the directions an experiment removes or sets."""
    d = d.to(device)
    return Directions(d, d.decoder)


def basis_ablation(model, layer: str, labeled, dictionaries: dict[str, Dictionary], units_result: dict,
                   features: dict[str, list[dict]], config: AblationConfig, device: torch.device | str,
                   progress: bool = False) -> dict[str, Any]:
    """The results' ``bases[i].ablation`` of ``layer``: for each basis of ``dictionaries`` (its
    feature records ``features[basis]``, for the labels), each class's balanced accuracy with
    its top N features removed, beside the units' (``units_result``: the layer's entry of the
    results' ``ablation.layers``)."""
    t0 = time.time()
    units_sizes = units_result["top_n"]
    config = dataclasses.replace(config, list_units=LISTED)
    runs = {}
    for basis, d in dictionaries.items():
        rank, ev = split_runners(model, layer, labeled, config, device, progress, feature_directions(d, device))
        runs[basis] = ablate_layer(model, layer, labeled, config, device=device, progress=progress,
                                   runners=(rank, ev))
    num_units = units_result["num_units"]
    sizes = [n for n in units_sizes if n < num_units and all(n in r["top_n"] for r in runs.values())]
    classes = []
    for c_units in units_result["classes"]:
        name = c_units["name"]
        row: dict[str, Any] = {"name": name, "balanced_accuracy": c_units["balanced_accuracy"],
                               "remove_top": {}, "remove_top_interval": {}, "random_remove": {}, "top_features": {}}
        for basis, r in [("units", units_result)] + list(runs.items()):
            c = next(x for x in r["classes"] if x["name"] == name)
            at = [r["top_n"].index(n) for n in sizes]
            curve, iv, rnd = c.get("remove_top"), c.get("remove_top_interval"), c.get("random_remove")
            row["remove_top"][basis] = None if curve is None else [curve[i] for i in at]
            row["remove_top_interval"][basis] = None if iv is None else [iv[i] for i in at]
            row["random_remove"][basis] = None if rnd is None else [rnd[i] for i in at]
            if basis != "units":
                recs = features[basis]
                row["top_features"][basis] = [
                    {"feature": t["unit"], "label": recs[t["unit"]].get("label"), "iou": recs[t["unit"]].get("iou"),
                     "drop": t["drop"], "drop_interval": t["drop_interval"]} for t in c.get("top_units") or []]
        classes.append(row)
    mean_drop = {}
    for basis in ["units", *runs]:
        drops = [[c["balanced_accuracy"] - c["remove_top"][basis][j] for c in classes
                  if c["balanced_accuracy"] is not None and c["remove_top"][basis] is not None
                  and c["remove_top"][basis][j] is not None] for j in range(len(sizes))]
        mean_drop[basis] = [rounded(sum(d) / len(d)) if d else None for d in drops]
    return {
        "layer": layer, "method": next(iter(runs.values()))["method"] if runs else units_result["method"],
        "top_n": sizes, "bases": ["units", *runs], "titles": {b: TITLES[b] for b in ["units", *runs]},
        "rule": ("removing feature f: a' = a - z_f(a) d_f at every position of the layer (its code along its "
                 "decoder direction; a unit: zeroed); per class, the features ranked by the units' rule (the drop "
                 f"in the class's balanced accuracy on the {config.rank_split!r} split when the feature alone is "
                 f"removed) and the top N removed together, the balanced accuracy on the {config.eval_split!r} split"),
        "classes": classes, "mean_drop": mean_drop,
        "random_draws": config.random_draws, "seconds": round(time.time() - t0, 2),
    }


def report_step(entry: dict | None, dictionaries: dict[str, Dictionary], progress: bool = True
                ) -> Callable[..., None] | None:
    """What :func:`dissect.experiments.ablation.ablation_for_report` runs after each layer's
    units: the features' ablation of the bases' layer, written into ``entry`` (the results'
    ``bases`` entry) as ``ablation``; None when there is nothing to ablate."""
    if entry is None or not dictionaries:
        return None

    def step(model, layer: str, labeled, units_result: dict, config: AblationConfig, device) -> None:
        if layer != entry["layer"]:
            return
        features = {f["basis"]: f["units"] for f in entry["features"]}
        entry["ablation"] = basis_ablation(model, layer, labeled, dictionaries, units_result, features, config,
                                           device, progress)
        if progress:
            m = entry["ablation"]["mean_drop"]
            n = entry["ablation"]["top_n"]
            at = n.index(min(5, n[-1])) if n else None
            shown = ", ".join(f"{TITLES[b]} {m[b][at]:.3f}" if m[b][at] is not None else f"{TITLES[b]} -"
                              for b in m) if n else "no common N"
            print(f"dissect: bases ablation of {layer}: mean class accuracy drop, top {min(5, n[-1]) if n else '-'} "
                  f"removed: {shown} ({entry['ablation']['seconds']:.1f}s)", flush=True)
    return step
