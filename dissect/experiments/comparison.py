"""The comparison of a site's models (the 2017 paper's interpretability benchmark): gathered
from the results dicts alone, written as the site's ``comparison.json`` and shown on its
``compare.html`` (:mod:`dissect.site.compare_page`).

Every count is recomputed here from the units of each run (never read from a summary):
a layer's **detector units** per category (units whose best IoU passes the threshold) and its
**unique detectors** per category (distinct concepts among them).

A *run* is one set of weights dissected on one probe set: a model of the site, or a member
of a model's ``comparison`` section (weights dissected with it, for example its training
snapshots). Runs are **comparable** only when their probe set and dissection parameters are
the same (:data:`COMPARABLE_PROBE`, :data:`COMPARABLE_PARAMS`); runs that are not are never
mixed in one chart: each comparable group is compared on its own, and the page names what
differs between the groups.

Within a group, the runs of one architecture (``comparison.group``) that carry training
steps form a **snapshot series** (the curve of unique detectors against the step, and each
unit's label timeline); other weights of that architecture are compared with the first one
unit by unit (**transitions**: kept, changed, gained, lost).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Version of ``comparison.json`` and of the results' ``comparison`` section.
COMPARISON_VERSION = 1
#: Probe-set fields that must agree for two runs to be compared.
COMPARABLE_PROBE = ("name", "index_sha256", "num_images", "label_size", "split")
#: Dissection parameters that must agree for two runs to be compared.
COMPARABLE_PARAMS = ("quantile", "quantile_space", "iou_threshold", "upsample_size", "binarize", "union")
#: The label of a unit that is not a detector, in transitions and timelines.
NO_LABEL = "(no label)"

Record = dict[str, Any]


def detector_label(unit: Record) -> tuple[str, str] | None:
    """``(category, concept)`` of a detector unit, None for a unit that is not one."""
    if unit.get("detector") and unit.get("label") and unit.get("category"):
        return unit["category"], unit["label"]
    return None


def layer_counts(layer: Record, categories: list[str]) -> Record:
    """Detector units and unique detectors of ``layer``, per category and in total,
    counted from its units."""
    labels = [lab for lab in (detector_label(u) for u in layer["units"]) if lab]
    units = Counter(cat for cat, _ in labels)
    unique = Counter(cat for cat, _ in set(labels))
    cats = categories + sorted(c for c in units if c not in categories)
    return {
        "num_units": len(layer["units"]),
        "detectors": len(labels),
        "unique": len(set(labels)),
        "detectors_by_category": {c: units[c] for c in cats},
        "unique_by_category": {c: unique[c] for c in cats},
    }


def mean_live_iou(layer: Record) -> float | None:
    """The mean IoU of each live unit's best concept (dead and invalid units left out: a dead
    unit has no best concept, and a rotation makes every unit live); None without live units.
    A finer view than the detector counts, which saturate when the probe set has few concepts
    (see docs/compare.md, the rotation experiment)."""
    ious = [u["iou"] for u in layer["units"] if not u.get("dead") and not u.get("invalid")
            and isinstance(u.get("iou"), (int, float))]
    return round(sum(ious) / len(ious), 6) if ious else None


def comparable_key(results: Record) -> Record:
    """The probe-set and parameter fields that two comparable runs share."""
    probe, params = results.get("probe") or {}, results.get("params") or {}
    return {"probe": {k: probe.get(k) for k in COMPARABLE_PROBE},
            "params": {k: params.get(k) for k in COMPARABLE_PARAMS}}


def _layer_entry(layer: Record) -> Record:
    return {"name": layer["name"], "alias": layer.get("alias"), "slug": layer.get("slug"),
            "units": [{"unit": u["unit"], "label": u.get("label"), "category": u.get("category"),
                       "iou": u.get("iou"), "detector": bool(u.get("detector"))} for u in layer["units"]]}


def member_record(name: str, weights: str, weights_sha256: str | None, layers: list[Record], *,
                  step: int | None, role: str, probe: Record | None = None) -> Record:
    """One member of a results' ``comparison`` section: weights dissected with the model, with
    its parameters, on its probe set or on the part of it that ``probe`` describes (the probe
    fields that differ, e.g. ``num_images``), kept as per-unit labels only (no pages)."""
    return {"name": name, "weights": weights, "weights_sha256": weights_sha256, "step": step, "role": role,
            "probe": dict(probe or {}), "layers": [_layer_entry(layer) for layer in layers]}


def _runs(results: Record) -> list[Record]:
    """The runs a results dict holds: the model itself, then its comparison members."""
    comp = results.get("comparison") or {}
    slug = results["model"]["slug"]
    group = comp.get("group") or results["model"]["name"]
    key = comparable_key(results)
    own = {"key": key, "name": results["model"]["name"], "model": slug, "href": f"{slug}/index.html",
           "weights": results["model"].get("weights"), "group": group, "step": comp.get("step"),
           "role": comp.get("role", "model"), "order": comp.get("order", 0),
           "layers": [_layer_entry(layer) for layer in results["layers"]]}
    runs = [own]
    for i, m in enumerate(comp.get("members") or []):
        mkey = {"probe": {**key["probe"], **{k: v for k, v in (m.get("probe") or {}).items() if k in key["probe"]}},
                "params": key["params"]}
        runs.append({"key": mkey, "name": m["name"], "model": slug, "href": None, "weights": m.get("weights"),
                     "group": group, "step": m.get("step"), "role": m.get("role", "weights"),
                     "order": comp.get("order", 0) + (i + 1) / 1000, "layers": m["layers"]})
    return runs


def _layer_key(layer: Record) -> str:
    return layer.get("alias") or layer["name"]


def transitions(before: Record, after: Record) -> Record:
    """How the units of one layer moved between two runs: the per-unit label pairs, the
    counts kept / changed / gained / lost / none, and the Sankey links (one per pair of
    labels, its value the number of units)."""
    a = {u["unit"]: u for u in before["units"]}
    b = {u["unit"]: u for u in after["units"]}
    rows, counts = [], Counter({"kept": 0, "changed": 0, "gained": 0, "lost": 0, "none": 0})
    links: Counter = Counter()
    for unit in sorted(set(a) & set(b)):
        la, lb = detector_label(a[unit]), detector_label(b[unit])
        kind = ("none" if la is None and lb is None else "gained" if la is None else "lost" if lb is None
                else "kept" if la == lb else "changed")
        counts[kind] += 1
        src = la[1] if la else NO_LABEL
        dst = lb[1] if lb else NO_LABEL
        links[(src, la[0] if la else None, dst, lb[0] if lb else None)] += 1
        rows.append({"unit": unit, "before": src, "before_category": la[0] if la else None,
                     "before_iou": a[unit].get("iou"), "after": dst, "after_category": lb[0] if lb else None,
                     "after_iou": b[unit].get("iou"), "change": kind})
    return {
        "counts": dict(counts),
        "units": rows,
        "links": [{"source": s, "source_category": sc, "target": t, "target_category": tc, "units": n}
                  for (s, sc, t, tc), n in sorted(links.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][2]))],
    }


def _differences(keys: list[Record]) -> list[str]:
    """The fields (``probe.name``, ``params.quantile``, ...) on which ``keys`` disagree."""
    out = []
    for part in ("probe", "params"):
        for field in keys[0][part]:
            if len({repr(k[part].get(field)) for k in keys}) > 1:
                out.append(f"{part}.{field}")
    return out


def build_comparison(all_results: list[Record]) -> Record | None:
    """The site's comparison (``comparison.json``) from every model's results, or None when
    there is nothing to compare: no two comparable runs and no rotation experiment."""
    groups: list[Record] = []
    for results in all_results:
        cats = list((results.get("probe") or {}).get("categories") or [])
        for run in _runs(results):
            for g in groups:
                if g["key"] == run["key"]:
                    break
            else:
                g = {"key": run["key"], "categories": [], "runs": []}
                groups.append(g)
            g["categories"] += [c for c in cats if c not in g["categories"]]
            g["runs"].append(run)
            g.setdefault("notes", [])
            g["notes"] += [n for n in (results.get("comparison") or {}).get("notes") or [] if n not in g["notes"]]
    rotations = [dict(r["comparison"]["rotation"], model=r["model"]["slug"], name=r["model"]["name"],
                      href=f"{r['model']['slug']}/index.html")
                 for r in all_results if (r.get("comparison") or {}).get("rotation")]

    out_groups = []
    for g in groups:
        if len(g["runs"]) < 2:
            continue
        cats = g["categories"]
        bars = [{"run": run["name"], "model": run["model"], "href": run["href"], "step": run["step"],
                 "layer": _layer_key(layer), **layer_counts(layer, cats)}
                for run in g["runs"] for layer in run["layers"]]
        out_groups.append({"key": g["key"], "categories": cats, "runs": [
            {k: run[k] for k in ("name", "model", "href", "weights", "group", "step", "role")} for run in g["runs"]],
            "layers": bars, "series": _series(g["runs"], cats), "transitions": _transitions(g["runs"]),
            "notes": g["notes"]})
    if not out_groups and not rotations:
        return None
    lone = [{"name": run["name"], "model": run["model"], "href": run["href"]}
            for g in groups if len(g["runs"]) < 2 for run in g["runs"]]
    return {
        "schema": "dissect.comparison", "version": COMPARISON_VERSION,
        "groups": out_groups,
        "not_comparable": {"runs": lone, "differs": _differences([g["key"] for g in groups])}
        if len(groups) > 1 else None,
        "rotations": rotations,
    }


def _by_group(runs: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for run in sorted(runs, key=lambda r: r["order"]):
        out.setdefault(run["group"], []).append(run)
    return out


def _common_layer(runs: list[Record]) -> str | None:
    """The deepest layer every run has (the last of the first run's that all share)."""
    shared = [_layer_key(layer) for layer in runs[0]["layers"]
              if all(any(_layer_key(m) == _layer_key(layer) for m in r["layers"]) for r in runs[1:])]
    return shared[-1] if shared else None


def _layer_of(run: Record, key: str) -> Record:
    return next(layer for layer in run["layers"] if _layer_key(layer) == key)


def _series(runs: list[Record], cats: list[str]) -> list[Record]:
    """Per architecture with two or more stepped runs: the curve and the label timelines."""
    out = []
    for group, members in _by_group(runs).items():
        stepped = sorted((r for r in members if r["step"] is not None), key=lambda r: r["step"])
        if len(stepped) < 2 or len({r["step"] for r in stepped}) != len(stepped):
            continue
        key = _common_layer(stepped)
        if key is None:
            continue
        layers = [_layer_of(r, key) for r in stepped]
        timeline = []
        for unit in [u["unit"] for u in layers[0]["units"]]:
            labels = []
            for layer in layers:
                u = next((v for v in layer["units"] if v["unit"] == unit), None)
                lab = detector_label(u) if u else None
                labels.append({"label": lab[1] if lab else None, "category": lab[0] if lab else None})
            if any(lab["label"] for lab in labels):
                timeline.append({"unit": unit, "labels": labels})
        out.append({"group": group, "layer": key,
                    "points": [{"step": r["step"], "run": r["name"], "href": r["href"],
                                **layer_counts(layer, cats)} for r, layer in zip(stepped, layers)],
                    "timeline": timeline})
    return out


def _transitions(runs: list[Record]) -> list[Record]:
    """Per architecture: each weights without a step against the first run of the group
    (a fine-tuned model against its base); a snapshot series from its first to its last step."""
    out = []
    for group, members in _by_group(runs).items():
        base = members[0]
        pairs = [(base, r) for r in members[1:] if r["step"] is None]
        stepped = sorted((r for r in members if r["step"] is not None), key=lambda r: r["step"])
        if len(stepped) >= 2:
            pairs.insert(0, (stepped[0], stepped[-1]))
        for before, after in pairs:
            key = _common_layer([before, after])
            if key is None:
                continue
            out.append({"group": group, "layer": key, "before": before["name"], "after": after["name"],
                        "before_href": before["href"], "after_href": after["href"],
                        **transitions(_layer_of(before, key), _layer_of(after, key))})
    return out
