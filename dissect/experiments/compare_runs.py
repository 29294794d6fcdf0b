"""The dissections a comparison adds to a model's report: other weights of the same
architecture on the same probe set (its comparison *members*: training snapshots, a
fine-tuned model) and the rotation experiment (:mod:`dissect.experiments.rotation`).

Both dissect one layer with the model's own probe set and parameters, so that their counts
are comparable with the model's, and both keep per-unit labels only (no unit images, no
pages): they are cheap next to a full report. All the networks of one call run side by side
in one module (:class:`SideBySide`), so the probe set is read once for all of them. Their
statistics are cached like any dissection's, keyed by every network's weights (and the
rotations).
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dissect.experiments.comparison import layer_counts, mean_live_iou, member_record
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.experiments.rotation import ROTATION_METHOD, random_rotation, rotate_layer, rotation_path
from dissect.hooks import Trace
from dissect.models.loading import LoadedModel


class SideBySide(nn.Module):
    """Several networks fed the same input; network ``i``'s layer ``path`` is ``nets.i.path``.
    The forward pass returns nothing: only the traced layers matter."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> None:
        for net in self.nets:
            net(x)


def _dissect_side_by_side(nets: Sequence[nn.Module], path: str, dataset, config: DissectConfig, parts: dict,
                          cache_dir: Path, force: bool, progress: bool) -> list[dict]:
    """Layer ``path`` of each of ``nets`` dissected in one pass over ``dataset``: their summaries."""
    side = SideBySide(nets)
    paths = [f"nets.{i}.{path}" for i in range(len(nets))]
    stats = dissect_layers(side, paths, dataset, config, cache_dir=cache_dir, cache_parts=parts,
                           force=force, progress=progress)
    out = []
    for p in paths:
        summary = summarize_layer(stats[p], dataset, config)
        summary["name"] = path
        out.append(summary)
    return out


def probe_subset(dataset, n: int):
    """The first ``n`` images of ``dataset`` (all of them when it has fewer), as a dataset."""
    subset = copy.copy(dataset)
    subset.indices = list(dataset.indices[:n])
    return subset


def members_for_report(members: Sequence[tuple[LoadedModel, str, int | None, str]], path: str,
                       alias: str | None, dataset, config: DissectConfig, parts: dict, cache_dir: Path, *,
                       force: bool = False, progress: bool = True, probe: dict | None = None) -> list[dict]:
    """Each member ``(model, name, step, role)`` dissected at layer ``path`` on ``dataset``:
    the ``members`` of the results' ``comparison`` section. ``parts`` identifies the probe
    set (the members' weights are added to it); ``probe``: how ``dataset`` differs from the
    model's probe set (e.g. ``{"num_images": 400}``)."""
    if not members:
        return []
    key = {**parts, "members": [m.weights_sha256 for m, _, _, _ in members]}
    summaries = _dissect_side_by_side([m.module for m, _, _, _ in members], path, dataset, config, key,
                                      cache_dir, force, progress)
    return [member_record(name, loaded.weights, loaded.weights_sha256, [{"alias": alias, **summary}],
                          step=step, role=role, probe=probe)
            for (loaded, name, step, role), summary in zip(members, summaries)]


def rotation_for_report(loaded: LoadedModel, path: str, alias: str | None, dataset, config: DissectConfig,
                        amounts: Sequence[float], seed: int, parts: dict, cache_dir: Path, *,
                        force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Layer ``path`` dissected under each rotation ``R(t)``, ``t`` in ``amounts`` (each on
    its own copy of the network, hooked): the results' ``comparison.rotation`` (counts per
    amount, the seed and the method)."""
    rotations = _rotations(loaded, path, dataset, amounts, seed)
    copies = [copy.deepcopy(loaded.module) for _ in amounts]
    with contextlib.ExitStack() as hooks:
        for net, rot in zip(copies, rotations):
            hooks.enter_context(rotate_layer(net, path, rot))
        key = {**parts, "rotation": {"seed": seed, "amounts": list(amounts), "version": 1}}
        summaries = _dissect_side_by_side(copies, path, dataset, config, key, cache_dir, force, progress)
    cats = list(dataset.index.categories)
    points = []
    for t, summary in zip(amounts, summaries):
        counts = layer_counts(summary, cats)
        points.append({"amount": t, **{k: counts[k] for k in
                                       ("detectors", "unique", "detectors_by_category", "unique_by_category")},
                       "mean_iou": mean_live_iou(summary)})
    return {"layer": path, "alias": alias, "num_units": int(rotations[0].shape[0]), "seed": seed,
            "method": ROTATION_METHOD, "points": points}


def _rotations(loaded: LoadedModel, path: str, dataset, amounts: Sequence[float], seed: int) -> list[torch.Tensor]:
    """The rotations ``R(t)`` for ``path``, sized by its number of units."""
    with torch.no_grad(), Trace(loaded.module, [path], stop=True) as tr:
        loaded.module.eval()(dataset.example_input(next(loaded.module.parameters()).device))
    return rotation_path(random_rotation(int(tr[path].shape[1]), seed), amounts)
