"""The dissections a comparison adds to a model's report: other weights of the same
architecture on the same probe set (its comparison *members*: training snapshots, a
fine-tuned model) and the rotation experiment (:mod:`dissect.experiments.rotation`).

Both dissect one layer with the model's own probe set and parameters, so that their counts
are comparable with the model's, and both keep per-unit labels only (no unit images, no
pages): they are cheap next to a full report. Their statistics are cached like any
dissection's, keyed by the weights (and the rotation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

import torch

from dissect.experiments.comparison import layer_counts, member_record
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.experiments.rotation import ROTATION_METHOD, random_rotation, rotate_layer, rotation_path
from dissect.hooks import Trace
from dissect.models.loading import LoadedModel


def _dissect_one(model, path: str, dataset, config: DissectConfig, parts: dict, cache_dir: Path,
                 force: bool, progress: bool) -> dict:
    stats = dissect_layers(model, [path], dataset, config, cache_dir=cache_dir, cache_parts=parts,
                           force=force, progress=progress)
    return summarize_layer(stats[path], dataset, config)


def members_for_report(members: Sequence[tuple[LoadedModel, str, int | None, str]], path: str,
                       alias: str | None, dataset, config: DissectConfig,
                       cache_parts: Callable[[LoadedModel], dict], cache_dir: Path, *, force: bool = False,
                       progress: bool = True) -> list[dict]:
    """Each member ``(model, name, step, role)`` dissected at layer ``path`` on ``dataset``:
    the ``members`` of the results' ``comparison`` section."""
    out = []
    for loaded, name, step, role in members:
        summary = _dissect_one(loaded.module, path, dataset, config, cache_parts(loaded), cache_dir, force, progress)
        layer = {"name": path, "alias": alias, **summary}
        out.append(member_record(name, loaded.weights, loaded.weights_sha256, [layer], step=step, role=role))
    return out


def rotation_for_report(loaded: LoadedModel, path: str, alias: str | None, dataset, config: DissectConfig,
                        amounts: Sequence[float], seed: int, parts: dict, cache_dir: Path, *,
                        force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Layer ``path`` dissected under each rotation ``R(t)``, ``t`` in ``amounts``: the
    results' ``comparison.rotation`` (counts per amount, the seed and the method)."""
    points = []
    rotations = _rotations(loaded, path, dataset, amounts, seed)
    for t, rot in zip(amounts, rotations):
        with rotate_layer(loaded.module, path, rot):
            summary = _dissect_one(loaded.module, path, dataset, config,
                                   {**parts, "rotation": {"seed": seed, "amount": t, "version": 1}},
                                   cache_dir, force, progress)
        counts = layer_counts(summary, list(dataset.index.categories))
        points.append({"amount": t, **{k: counts[k] for k in
                                       ("detectors", "unique", "detectors_by_category", "unique_by_category")}})
    return {"layer": path, "alias": alias, "num_units": int(rotations[0].shape[0]), "seed": seed, "method": ROTATION_METHOD,
            "points": points}


def _rotations(loaded: LoadedModel, path: str, dataset, amounts: Sequence[float], seed: int) -> list[torch.Tensor]:
    """The rotations ``R(t)`` for ``path``, sized by its number of units."""
    with torch.no_grad(), Trace(loaded.module, [path], stop=True) as tr:
        loaded.module.eval()(dataset.example_input(next(loaded.module.parameters()).device))
    return rotation_path(random_rotation(int(tr[path].shape[1]), seed), amounts)
