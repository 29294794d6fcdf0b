"""The views of the core pages: site index, model overview, layer grid, unit page.

A view turns results into the plain dict of one page's own data (the shared context of
:mod:`dissect.site.context` is added by the build); everything a page shows is computed and
formatted here, templates loop and print. Strings from the results stay plain ``str`` (the
templates escape them); the only markup that leaves this module is the sanitized notes HTML.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any

import markdown
import nh3
from markupsafe import Markup

from dissect.site.charts import PALETTE, category_classes
from dissect.site.context import ModelContext
from dissect.site.formulas import formula_terms, length_chart, unit_formula
from dissect.site.format import (call_note, detector_badge, fmt_interval, fmt_iou, fmt_num, fmt_shape,
                                   layer_title, unit_file, unit_label)
from dissect.site.pagekind import LayerPages
from dissect.stats.intervals import MAX_UNDECIDED, MIN_IMAGES, SAMPLE_WARNING

#: Tags allowed in notes: nh3's safe set, minus anything that loads a resource.
_NOTE_TAGS = set(nh3.ALLOWED_TAGS) - {"img", "picture", "source", "audio", "video", "track", "map", "area"}


def render_notes(notes_md: str | None) -> Markup | None:
    """Markdown → HTML, sanitized by nh3 (no raw HTML, scripts, styles or images)."""
    if not notes_md or not notes_md.strip():
        return None
    raw = markdown.markdown(notes_md, extensions=["tables", "fenced_code", "sane_lists"])
    clean = nh3.clean(raw, tags=_NOTE_TAGS, url_schemes={"http", "https", "mailto"})
    return Markup(clean)


# ---------------------------------------------------------------------------- site index

def index_row(results: dict[str, Any]) -> dict[str, Any]:
    """One row of the site index (also read back from an existing model's results.json)."""
    layers = results["layers"]
    units = sum(len(layer["units"]) for layer in layers)
    detectors = sum(1 for layer in layers for u in layer["units"] if u.get("detector"))
    concepts = {u["label"] for layer in layers for u in layer["units"] if u.get("detector") and u.get("label")}
    # Unique concepts per category (a concept counts once per model, under its category).
    pairs = {(u.get("category"), u["label"]) for layer in layers for u in layer["units"]
             if u.get("detector") and u.get("label") and u.get("category")}
    by_cat = Counter(cat for cat, _ in pairs)
    cats = [c for c in results.get("probe", {}).get("categories") or [] if by_cat[c]]
    cats += sorted(c for c in by_cat if c not in cats)
    cat_index = category_classes(list(results.get("probe", {}).get("categories") or []) + cats)
    slug = results["model"]["slug"]
    return {
        "name": results["model"]["name"],
        "slug": slug,
        "href": f"{slug}/index.html",
        "provenance_href": f"{slug}/index.html#provenance",
        "kind": results["model"].get("kind", "–"),
        "probe": results.get("probe", {}).get("name", "–"),
        "layers": len(layers),
        "units": fmt_num(units),
        "detectors": fmt_num(detectors),
        "unique_concepts": fmt_num(len(concepts)),
        "unique_by_category": [{"name": c, "count": by_cat[c], "cls": f"cat-{cat_index[c]}"} for c in cats],
    }


def index_page(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The site index's own data: one row per model (:func:`index_row`)."""
    return {"models": rows}


# ---------------------------------------------------------------------------- model overview

def _concept_counts(ctx: ModelContext, layer: dict[str, Any]) -> list[dict[str, Any]]:
    counts = Counter((u["category"], u["label"]) for u in layer["units"] if u.get("detector") and u.get("label"))
    rows = [
        {"category": cat, "name": name, "count": n, "cls": ctx.cat_class(cat)}
        for (cat, name), n in counts.items()
    ]
    order = {c: i for i, c in enumerate(ctx.categories)}
    rows.sort(key=lambda r: (order.get(r["category"], len(order)), -r["count"], r["name"]))
    return rows


def _concept_chart(ctx: ModelContext, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    traces = []
    for cat in ctx.categories:
        mine = [r for r in rows if r["category"] == cat]
        if not mine:
            continue
        # Plotly reads tags and entities in text, so names go in HTML-escaped.
        traces.append({
            "type": "bar",
            "name": html.escape(cat),
            "x": [html.escape(r["name"]) for r in mine],
            "y": [r["count"] for r in mine],
            "marker": {"color": PALETTE[ctx.cat_index[cat]]},
            "hovertemplate": "%{x}: %{y} detectors<extra>" + html.escape(cat) + "</extra>",
        })
    return {
        "data": traces,
        "layout": {
            "barmode": "relative",
            "height": 300,
            "margin": {"l": 44, "r": 8, "t": 28, "b": 90},
            "xaxis": {"type": "category", "tickangle": -60, "automargin": True},
            "yaxis": {"title": {"text": "detector units"}, "rangemode": "tozero", "dtick": 1 if max(r["count"] for r in rows) <= 8 else None},
            "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
        },
    }


def _histogram(ctx: ModelContext, layer: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    hist = layer.get("summary", {}).get("iou_histogram") or {}
    edges, counts = hist.get("edges") or [], hist.get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return None, []
    table = [
        {"range": f"{lo:.2f}–{hi:.2f}", "count": n}
        for lo, hi, n in zip(edges[:-1], edges[1:], counts)
    ]
    shapes = []
    if ctx.iou_threshold is not None:
        shapes.append({
            "type": "line", "xref": "x", "yref": "paper", "x0": ctx.iou_threshold, "x1": ctx.iou_threshold,
            "y0": 0, "y1": 1, "line": {"color": "#c0392b", "width": 1.5, "dash": "dash"},
        })
    fig = {
        "data": [{
            "type": "bar",
            "x": [round((lo + hi) / 2, 6) for lo, hi in zip(edges[:-1], edges[1:])],
            "width": [round(hi - lo, 6) for lo, hi in zip(edges[:-1], edges[1:])],
            "y": counts,
            "marker": {"color": "#4a5b73"},
            "customdata": [r["range"] for r in table],
            "hovertemplate": "IoU %{customdata}: %{y} units<extra></extra>",
        }],
        "layout": {
            "height": 300,
            "margin": {"l": 44, "r": 8, "t": 8, "b": 44},
            "xaxis": {"title": {"text": "best IoU"}, "rangemode": "tozero"},
            "yaxis": {"title": {"text": "units"}, "rangemode": "tozero"},
            "bargap": 0.05,
            "shapes": shapes,
            "showlegend": False,
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
        },
    }
    return fig, table


#: Provenance fields that differ from run to run of the same inputs (never on a page).
RUN_SPECIFIC = ("created", "seconds")


def _segmenter_row(probe: dict[str, Any]) -> dict[str, str]:
    """The probe table's ``segmenter`` row (a labeled probe set's only): its name and layers."""
    seg = probe.get("segmenter")
    if not isinstance(seg, dict):
        return {}
    return {"segmenter": f"{seg.get('name', '–')} (layers: {', '.join(seg.get('layers') or [])})"}


def _rows(mapping: dict[str, Any], keys: list[str] | None = None) -> list[dict[str, str]]:
    keys = keys if keys is not None else sorted(mapping)
    out = []
    for k in keys:
        if k not in mapping:
            continue
        v = mapping[k]
        if isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v) if v else "–"
        elif isinstance(v, dict):
            v = json.dumps(v, sort_keys=True)
        elif not isinstance(v, str):
            v = fmt_num(v)
        out.append({"key": k, "value": v})
    return out


def _layer_choice(results: dict[str, Any]) -> dict[str, Any] | None:
    """Which layers were dissected and why, and the model's default when they are not it
    (None for results written before these fields)."""
    model = results["model"]
    if not model.get("layer_reason"):
        return None
    dissected = [layer["name"] for layer in results["layers"]]
    defaults = list(model.get("default_layers") or [])
    return {
        "layers": ", ".join(layer_title(layer) for layer in results["layers"]),
        "reason": model["layer_reason"],
        "default": ", ".join(layer_title(d) for d in defaults)
        if defaults and [d["name"] for d in defaults] != dissected else None,
        "default_reason": model.get("default_reason"),
    }


def model_page(ctx: ModelContext, layer_slugs: list[str], notes: Markup | None,
               pages: list[LayerPages]) -> dict[str, Any]:
    """The model overview's own data; ``pages`` are each layer's page kinds, linked per layer."""
    r = ctx.results
    model, probe, prov = r["model"], r.get("probe", {}), dict(r.get("provenance", {}))
    if ctx.reproducible:
        prov["created"] = None
    layers = []
    all_concepts: set[str] = set()
    total_units = total_det = 0
    for i, (layer, slug, kinds) in enumerate(zip(r["layers"], layer_slugs, pages)):
        units = layer["units"]
        det = sum(1 for u in units if u.get("detector"))
        concepts = _concept_counts(ctx, layer)
        all_concepts.update(c["name"] for c in concepts)
        total_units += len(units)
        total_det += det
        by_cat = Counter(c["category"] for c in concepts for _ in range(c["count"]))
        hist, hist_table = _histogram(ctx, layer)
        fchart, ftable, fcheck = length_chart(layer)
        layers.append({
            "name": layer["name"],
            "alias": layer.get("alias"),
            "title": layer_title(layer),
            "call_note": call_note(layer),
            "href": f"{slug}/index.html",
            "csv_href": f"{slug}/units.csv",
            "anchor": f"layer-{i}",
            "num_units": fmt_num(len(units)),
            "shape": fmt_shape(layer.get("activation_shape")),
            "detectors": fmt_num(det),
            "uncertain": (layer.get("intervals") or {}).get("uncertain_detectors", 0),
            "sample_warning": f"{SAMPLE_WARNING}: {layer['sample_warning']}" if layer.get("sample_warning") else None,
            "unique": fmt_num(len({c["name"] for c in concepts})),
            "dead": fmt_num(sum(1 for u in units if u.get("dead"))),
            "by_category": [
                {"name": c, "count": by_cat[c], "cls": ctx.cat_class(c)} for c in ctx.categories if by_cat[c]
            ],
            "concepts": concepts,
            "concept_chart": _concept_chart(ctx, concepts),
            "concept_chart_id": f"chart-concepts-{i}",
            "hist_chart": hist,
            "hist_chart_id": f"chart-iou-{i}",
            "hist_table": hist_table,
            "formula_chart": fchart,
            "formula_chart_id": f"chart-formulas-{i}",
            "formula_table": ftable,
            "formula_check": fcheck,
            "pages": [{"label": kind.label, "href": f"{slug}/{kind.file}"} for kind, _ in kinds],
        })
    created = prov.get("created")
    return {
        "model": {
            "name": model["name"],
            "kind": model.get("kind", "–"),
            "weights": model.get("weights", "–"),
            "probe": probe.get("name", "–"),
            "num_images": fmt_num(probe.get("num_images")),
        },
        "choice": _layer_choice(r),
        "stats": [
            {"label": "layers", "value": fmt_num(len(layers))},
            {"label": "units", "value": fmt_num(total_units)},
            {"label": "detectors", "value": fmt_num(total_det)},
            {"label": "unique concepts", "value": fmt_num(len(all_concepts))},
        ],
        "iou_threshold": fmt_num(ctx.iou_threshold),
        "layers": layers,
        "notes": notes,
        "params": _rows(ctx.params),
        "model_rows": _rows(
            {**model, "class_names": f"{len(model['class_names'])} classes" if model.get("class_names") else None},
            ["name", "kind", "weights", "weights_sha256", "weights_file_sha256", "num_parameters", "input_size",
             "class_names", "default_reason"],
        ),
        "probe_rows": _rows(
            {**probe, "skipped": f"{len(probe.get('skipped') or [])} listed" if probe.get("skipped") else None,
             **_segmenter_row(probe)},
            ["name", "path", "index_sha256", "num_images", "num_skipped", "skipped", "segmenter", "label_size",
             "categories", "num_concepts"],
        ),
        # The run's date and time stay in provenance.json / results.json: pages are identical across runs.
        "provenance_rows": _rows({k: v for k, v in prov.items() if k not in RUN_SPECIFIC}),
        "created": created,
        "reproducible": ctx.reproducible or created is None,
        "skipped": list(probe.get("skipped") or []),
        # a classifier's ablation that could not run at all (no labeled images): one line
        "ablation_note": (r.get("ablation") or {}).get("error"),
    }


def overview_has_charts(overview: dict[str, Any]) -> bool:
    """Whether the model overview ``overview`` (:func:`model_page`) shows a chart: then it loads plotly."""
    return any(layer["concept_chart"] or layer["hist_chart"] or layer["formula_chart"] for layer in overview["layers"])


# ---------------------------------------------------------------------------- layer grid

def layer_page(ctx: ModelContext, layer: dict[str, Any], images: dict[int, Any]) -> dict[str, Any]:
    """The layer grid's own data: one card per unit, the categories to filter by."""
    units = layer["units"]
    cat_counts = Counter(u.get("category") for u in units if u.get("category") and not u.get("dead"))
    cards = []
    for u in units:
        label = unit_label(u)
        clip = (u.get("clip") or {}).get("label")
        concepts = [label] + [t["name"] for t in u.get("top_concepts", [])] + formula_terms(u) + (["saturated"] if u.get("saturated") else []) \
            + ([clip] if clip else [])
        thumb = images[u["unit"]]["thumb"]
        cards.append({
            "unit": u["unit"],
            "href": unit_file(u["unit"]),
            "label": label,
            "category": u.get("category") if not u.get("dead") else None,
            "cls": ctx.cat_class(None if u.get("dead") else u.get("category")),
            "iou": fmt_iou(u.get("iou", 0.0)),
            "iou_raw": repr(float(u.get("iou") or 0.0)),
            "detector": bool(u.get("detector")),
            "badge": detector_badge(u, ctx.iou_threshold),
            "dead": bool(u.get("dead")),
            "invalid": bool(u.get("invalid")),
            "saturated": bool(u.get("saturated")),
            "none_reason": u.get("none_reason") if label in ("none", "invalid") else None,
            "search": " ".join(dict.fromkeys(c.lower() for c in concepts)),
            "formula": unit_formula(u, ctx.cat_class),
            "thumb": thumb,
            "alt": f"{layer.get('unit_word', 'unit')} {u['unit']} top images: {label}",
            "clip": clip,
        })
    det = sum(1 for c in cards if c["detector"])
    intervals = layer.get("intervals") or {}
    return {
        "layer": {
            "name": layer["name"],
            "alias": layer.get("alias"),
            "title": layer_title(layer),
            "call_note": call_note(layer),
            "num_units": fmt_num(len(units)),
            "detectors": fmt_num(det),
            "unique": fmt_num(len({c["label"] for c in cards if c["detector"]})),
            "dead": fmt_num(sum(1 for c in cards if c["dead"])),
            "invalid": sum(1 for c in cards if c["invalid"]),
            "saturated": sum(1 for c in cards if c["saturated"]),
            "shape": fmt_shape(layer.get("activation_shape")),
            "reading": layer.get("reading") or "",
            "uncertain": sum(1 for c in cards if c["badge"] and c["badge"]["text"] == "detector?"),
            "intervals": _interval_note(intervals),
            "clip": _clip_note(layer.get("clip")),
        },
        "sample_warning": {"message": SAMPLE_WARNING, "reason": layer["sample_warning"],
                           "rule": SAMPLE_RULE} if layer.get("sample_warning") else None,
        "iou_threshold": fmt_num(ctx.iou_threshold),
        "categories": [
            {"value": c, "count": cat_counts[c], "cls": ctx.cat_class(c)} for c in ctx.categories if cat_counts[c]
        ],
        "cards": cards,
        "total": len(cards),
    }


#: The rule of the layer page's sample warning, as the page states it (dissect.stats.intervals.too_small).
SAMPLE_RULE = (f"This warning shows when the probe set has fewer than {MIN_IMAGES} images, or when the "
               f"95% intervals of more than {MAX_UNDECIDED:.0%} of the layer's labelled units straddle the "
               "IoU threshold. Each interval is over images and holds the unit's concept fixed: it does "
               "not count the choice of the best of many concepts on the same images, which makes small "
               "samples look better still.")


def _clip_note(clip: dict[str, Any] | None) -> dict[str, Any] | None:
    """The layer page's line on its open-vocabulary labels and their agreement with IoU's."""
    if not clip:
        return None
    agree = clip.get("agreement") or {}
    fraction = agree.get("fraction")
    return {"model": clip.get("model"), "concepts": clip.get("concepts"), "compared": agree.get("compared") or 0,
            "agree": agree.get("agree") or 0, "percent": f"{100 * fraction:.0f}%" if fraction is not None else None}


def _clip_section(u: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any] | None:
    """A unit's open-vocabulary label and its top concepts with their SoftWPMI, for its page."""
    clip = u.get("clip")
    if not clip:
        return None
    scores = [t["score"] for t in clip["top"]]
    lo, hi = min(scores), max(scores)
    return {"label": clip["label"], "score": fmt_num(clip["score"]), "model": (layer.get("clip") or {}).get("model"),
            "same": bool(u.get("label")) and clip["label"].lower() == str(u.get("label")).lower(),
            "top": [{"concept": t["concept"], "iou": fmt_num(t["score"]), "cls": "clip",
                     "bar": _bar(t["score"] - lo, hi - lo) if hi > lo else _bar(1.0, 1.0)} for t in clip["top"]]}


def _interval_note(intervals: dict[str, Any]) -> str:
    """How the layer's intervals were computed, in words ("" without them)."""
    if not intervals:
        return ""
    method = str(intervals.get("method", "?")).replace("poisson", "Poisson")
    return (f"{intervals.get('level', 0.95):.0%} intervals over images by a {method} "
            f"of {fmt_num(intervals.get('replicates'))} replicates (seed {intervals.get('seed')})")


# ---------------------------------------------------------------------------- unit detail

def _image_name(top: dict[str, Any]) -> str:
    """The name a top image is shown by: the user's own file (``source``: an image folder's
    original name), else its file in the probe set (results written before ``source``)."""
    return str(top.get("source") or top.get("image") or "–")


#: What a saturated unit is, on its page (docs/method.md, "Ties at the top").
SATURATED_NOTE = ("yes: its top-q threshold T_k is its largest activation on the probe set (a capped "
                  "activation such as ReLU6, hard-tanh or sigmoid), so the strict region S_k > T_k "
                  "would be empty; its region is where it is at that cap, S_k ≥ T_k")


def _bar(iou: float, scale: float) -> str:
    return f"{max(0.0, min(100.0, 100.0 * iou / scale)):.1f}" if scale > 0 else "0.0"


def _interval_text(layer: dict[str, Any], u: dict[str, Any], threshold: float | None) -> str:
    """The unit page's interval row: the interval, where it lies against the threshold, how
    it was computed."""
    where = {"above": "above the threshold", "below": "below the threshold",
             "straddles": "straddles the threshold"}.get(u.get("detector_interval"), "")
    how = _interval_note(layer.get("intervals") or {})
    return (f"{fmt_interval(u['iou_interval'])} ({where} {fmt_num(threshold)}"
            f"{'; ' + how + ', for this concept' if how else ''})")


def unit_page(
    ctx: ModelContext, layer: dict[str, Any], index: int, images: dict[int, Any], pages: LayerPages
) -> dict[str, Any]:
    """The own data of the page of ``layer["units"][index]``, with the sections of ``pages``."""
    units = layer["units"]
    u = units[index]
    label = unit_label(u)
    tops = u.get("top_concepts", [])
    by_cat = u.get("top_by_category", {})
    scale = max([t.get("iou") or 0.0 for t in tops] + [v.get("iou") or 0.0 for v in by_cat.values()] + [0.0])
    img = images[u["unit"]]
    q = ctx.quantile
    af = u.get("active_fraction")
    ratio = f" (×{af / q:.2f} of q)" if af is not None and q else ""
    rule = "≥" if u.get("saturated") else ">"

    def nav(j: int) -> dict[str, Any] | None:
        if not 0 <= j < len(units):
            return None
        return {"href": unit_file(units[j]["unit"]), "label": f"{layer.get('unit_word', 'unit')} {units[j]['unit']}"}

    cat_order = [c for c in ctx.categories if c in by_cat] + sorted(c for c in by_cat if c not in ctx.categories)
    return {
        "unit": {
            "unit": u["unit"],
            "label": label,
            "category": None if u.get("dead") else u.get("category"),
            "cls": ctx.cat_class(None if u.get("dead") else u.get("category")),
            "iou": fmt_iou(u.get("iou", 0.0)),
            "interval": fmt_interval(u.get("iou_interval")) if u.get("iou_interval") else None,
            "detector": bool(u.get("detector")),
            "badge": detector_badge(u, ctx.iou_threshold),
            "dead": bool(u.get("dead")),
            "invalid": bool(u.get("invalid")),
            "saturated": bool(u.get("saturated")),
            "none_reason": u.get("none_reason") if label in ("none", "invalid") else None,
            "strip": img["full"],
            "formula": unit_formula(u, ctx.cat_class, img.get("formula")),
            "alt": f"{layer.get('unit_word', 'unit')} {u['unit']} top {len(u.get('top_images', []))} images "
                   f"({', '.join(_image_name(t) for t in u.get('top_images', []))}), "
                   f"region where it fires highlighted: {label}",
        },
        "stats": [
            {"key": "best IoU", "value": f"{fmt_iou(u.get('iou', 0.0))} ({'detector' if u.get('detector') else 'not a detector'}; threshold {fmt_num(ctx.iou_threshold)})"},
            *([{"key": "95% interval of the best IoU", "value": _interval_text(layer, u, ctx.iou_threshold)}]
              if u.get("iou_interval") else []),
            {"key": "activation threshold T_k", "value": fmt_num(u.get("threshold"))},
            {"key": f"active fraction P(S_k {rule} T_k)", "value": f"{fmt_num(af)} vs q = {fmt_num(q)}{ratio}"},
            {"key": "max activation", "value": fmt_num(u.get("max_activation"))},
            {"key": "dead (activation never varies)", "value": "yes" if u.get("dead") else "no"},
            *([{"key": "saturated (T_k equals the maximum)", "value": SATURATED_NOTE}] if u.get("saturated") else []),
            *([{"key": "no label because", "value": u["none_reason"]}]
              if label == "none" and u.get("none_reason") else []),
            *([{"key": "invalid", "value": "yes: non-finite activations (NaN or infinity); "
                "no threshold, IoU or label is defined"}] if u.get("invalid") else []),
        ],
        "top_concepts": [
            {"name": t["name"], "category": t.get("category"), "cls": ctx.cat_class(t.get("category")),
             "iou": fmt_iou(t.get("iou")), "bar": _bar(t.get("iou") or 0.0, scale)}
            for t in tops
        ],
        "top_by_category": [
            {"category": c, "cls": ctx.cat_class(c), "name": by_cat[c].get("name"),
             "iou": fmt_iou(by_cat[c].get("iou")), "bar": _bar(by_cat[c].get("iou") or 0.0, scale)}
            for c in cat_order
        ],
        "top_images": [
            {"rank": k + 1, "image": t.get("image", "–"), "source": _image_name(t), "index": t.get("index", "–"),
             "max_activation": fmt_num(t.get("max_activation"))}
            for k, t in enumerate(u.get("top_images", []))
        ],
        "sections": [{"template": kind.unit_template, "view": kind.unit_section(ctx, layer, entry, u)}
                     for kind, entry in pages if kind.unit_template and kind.unit_section],
        "clip": _clip_section(u, layer),
        "prev": nav(index - 1),
        "next": nav(index + 1),
    }
