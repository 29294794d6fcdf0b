"""The formula search over a model's layers: each beam step is one streaming pass over the
probe set (the model run again, its unit masks made by :func:`~dissect.experiments.
dissection.active_masks` from the dissection's thresholds, exactly as the IoU pass makes
them), each layer's counts tallied on the model's device (:mod:`dissect.stats.formula_counts`).
The first pass keeps each batch reduced to what the counts need (its label atoms and the units'
on-pixels, :func:`~dissect.stats.formula_counts.reduce_batch`: about 0.5% of the pixels) while
they fit ``REPLAY_BUDGET`` bytes; the later steps then replay them instead of running the model
again. Memory is the tallies plus one batch plus at most that budget, whatever the probe set's size."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import atomic_save
from ..cache import cache_key
from ..data.broden import BrodenDataset, make_loader
from ..devices import resolve_device
from ..experiments.dissection import (DissectConfig, LayerStats, active_masks, dataset_view, forward_layers,
                                      unit_scores)
from ..inference import resolve_precision
from ..stats.formula_counts import reduce_batch
from ..stats.iou import prepare_labels
from ..version import __version__
from .search import FormulaOptions, LayerFormulas, LayerSearch, formula_fields
from .strips import render_formula_strips

#: The reduced batches kept from the first pass for the later steps (bytes, all layers).
REPLAY_BUDGET = 512 * 2 ** 20


def search_formulas(model: torch.nn.Module, lengths: dict[str, int], dataset: BrodenDataset,
                    stats: dict[str, LayerStats], config: DissectConfig, options: FormulaOptions,
                    progress: bool = True) -> dict[str, LayerFormulas]:
    """Formulas of up to ``lengths[layer]`` concepts for each layer (those of length 1 need
    no pass: their formula is the dissection's label)."""
    index = dataset.index
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    prim = index.primary_category_tensor()
    searches = {}
    for layer, length in lengths.items():
        s = stats[layer]
        scores = unit_scores(s, index)
        searches[layer] = LayerSearch(s.shape[0], index.num_labels, prim, scores.valid,
                                      scores.dead | scores.invalid, length, options,
                                      initial_iou=scores.iou, device=device)
    t0, passes = time.time(), 0
    model = model.to(device).eval()
    lo, hi = distributed.shard(len(dataset))
    sh, sw = dataset.label_size
    kept: list[dict] | None = []          # the first pass's reduced batches (None: over budget)
    size = 0
    while True:
        counters = {layer: c for layer, s in searches.items() if (c := s.counter()) is not None}
        if not counters:
            break
        passes += 1
        if passes > 1 and kept is not None:   # replay the first pass's batches: no model run
            for reduced in kept:
                for layer, counter in counters.items():
                    counter.add_reduced(reduced[layer])
        else:
            part = dataset_view(dataset, indices=dataset.indices[lo:hi], with_labels=True)
            thresholds = {layer: stats[layer].thresholds.to(device) for layer in counters}
            saturated = {layer: stats[layer].saturated for layer in counters}
            with torch.no_grad():
                for batch in tqdm(make_loader(part, config.batch_size, config.num_workers,
                                              pin_memory=device.type == "cuda"),
                                  desc=f"dissect: formulas, step {passes + 1}", unit="batch", leave=False,
                                  total=math.ceil((hi - lo) / config.batch_size), disable=not progress):
                    if len(batch["index"]) == 0:
                        continue
                    acts = forward_layers(model, list(counters), batch["image"].to(device, non_blocking=True), dtype)
                    labels = prepare_labels(batch["pixel_labels"].to(device).long(), batch["image_labels"].to(device),
                                            index.num_labels, prim.to(device), len(index.categories),
                                            index.segmenter_labeled)
                    reduced = {}
                    for layer, counter in counters.items():
                        img, unit, masks = active_masks(acts[layer], thresholds[layer], (sh, sw),
                                                        saturated=saturated[layer])
                        reduced[layer] = reduce_batch(img, unit, masks, labels, counter.num_units,
                                                      counter.num_labels)
                        counter.add_reduced(reduced[layer])
                    if passes == 1 and kept is not None:
                        size += sum(r.nbytes() for r in reduced.values())
                        if size <= REPLAY_BUDGET:
                            kept.append(reduced)
                        else:
                            kept = None
        counters = distributed.merge_tallies(counters, lambda layer: searches[layer].counter())
        for layer, counter in counters.items():
            searches[layer].absorb(counter)
    if progress and passes:
        tqdm.write(f"dissect: formulas for {len(searches)} layer(s), {passes} pass(es) in {time.time() - t0:.1f}s")
    return {layer: s.result() for layer, s in searches.items()}


def formula_lengths(options: FormulaOptions, layers: list[str], toy_classifier: bool) -> dict[str, int]:
    """Each dissected layer's formula length (:meth:`FormulaOptions.length_for`)."""
    return {layer: options.length_for(i, len(layers), toy_classifier) for i, layer in enumerate(layers)}


def add_formulas(model: torch.nn.Module, layer_results: list[dict], dataset: BrodenDataset,
                 stats: dict[str, LayerStats], config: DissectConfig, options: FormulaOptions,
                 lengths: dict[str, int], progress: bool = True, cache_dir: Path | None = None,
                 cache_parts: dict | None = None, force: bool = False, strips_dir: Path | None = None) -> None:
    """Search the formulas of the layers whose length is above 1 and add them to their
    results (``formulas`` per layer, ``formula`` per unit: docs/results-schema.md). With
    ``cache_dir`` and ``cache_parts`` (what identifies the model and data, as for
    :func:`~dissect.experiments.dissection.dissect_layers`) each layer's search is kept in
    the cache, keyed by those, the dissection parameters and the formula options. With
    ``strips_dir`` (the run folder of the unit strips; layer records with ``slug``) each
    formula's parts are drawn on the unit's top images (:mod:`dissect.formulas.strips`),
    the unit's ``formula.strips``."""
    todo = {layer: n for layer, n in lengths.items() if n > 1}
    if not todo:
        return
    paths, found = {}, {}
    if cache_dir is not None and cache_parts is not None:
        for layer, n in todo.items():
            key = cache_key(cache_parts, layer, config.stats_key(),
                            str(resolve_precision(config.precision, resolve_device(config.device))), len(dataset),
                            dataset.index.annotation_rule, n, options.beam, options.search, CACHE_FORMAT,
                            __version__)
            paths[layer] = Path(cache_dir) / f"formulas-{key}.json"
            if paths[layer].is_file() and not force:
                try:
                    found[layer] = _from_json(json.loads(paths[layer].read_text(encoding="utf-8")))
                except Exception:  # noqa: BLE001  (any damaged entry is searched again)
                    found.pop(layer, None)
    rest = {layer: n for layer, n in todo.items() if layer not in found}
    if rest:
        searched = search_formulas(model, rest, dataset, stats, config, options, progress)
        found.update(searched)
        if distributed.is_main():
            for layer, res in searched.items():
                if layer in paths:
                    paths[layer].parent.mkdir(parents=True, exist_ok=True)
                    text = json.dumps(_to_json(res))
                    atomic_save(paths[layer], lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
    for layer in layer_results:
        if layer["name"] in found:
            layer["formulas"] = formula_fields(found[layer["name"]], dataset.index, options,
                                               todo[layer["name"]], layer["units"])
            if strips_dir is not None and distributed.is_main():   # rank 0 writes the site's images
                _add_strips(layer, found[layer["name"]], stats[layer["name"]], dataset, strips_dir,
                            config.tile_size, progress)


def _add_strips(layer: dict, res: LayerFormulas, stats: LayerStats, dataset: BrodenDataset, strips_dir: Path,
                tile_size: int, progress: bool) -> None:
    """Each unit's ``formula.strips``: its formula's rows over its top images, each with what
    it shows (``part``: the concept with its operator, then ``= formula``)."""
    forms = [f if u.get("formula") else None for f, u in zip(res.formulas, layer["units"])]
    rows = render_formula_strips(stats, dataset, forms, strips_dir, layer["slug"], tile_size, progress=progress)
    for u, rels in zip(layer["units"], rows):
        if rels is None:
            continue
        names = [f"{p['op']} {p['name']}" if p["op"] else p["name"] for p in u["formula"]["parts"]]
        u["formula"]["strips"] = [{"part": n, "src": rel}
                                  for n, rel in zip(names + ["= formula"], rels)]


#: The layout of a cached search (:func:`_to_json`); a change makes old entries unused.
CACHE_FORMAT = 1


def _to_json(res: LayerFormulas) -> dict:
    form = lambda f: None if f is None else [list(f[0]), list(f[1])]  # noqa: E731
    return {"formulas": [form(f) for f in res.formulas], "ious": res.ious, "by_length": res.by_length,
            "exact": None if res.exact is None else [[form(f), v] for f, v in res.exact],
            "single_iou": None if res.single_iou is None else res.single_iou.tolist()}


def _from_json(d: dict) -> LayerFormulas:
    form = lambda f: None if f is None else (tuple(f[0]), tuple(f[1]))  # noqa: E731
    return LayerFormulas([form(f) for f in d["formulas"]], list(d["ious"]), d["by_length"],
                         None if d["exact"] is None else [(form(f), float(v)) for f, v in d["exact"]],
                         None if d["single_iou"] is None else np.asarray(d["single_iou"], dtype=np.float64))
