"""The layer page that compares its units with its feature bases (``features.html``), and the
layer-like records whose grids and feature pages the build writes beside the layer's folder
(docs/bases.md). The entry is the layer's record in the results' ``bases``."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image

from dissect.site.cells import units_by_number
from dissect.site.charts import PALETTE, layout
from dissect.site.context import ModelContext
from dissect.site.format import fmt_iou, fmt_num, pct, unit_file, unit_label
from dissect.site.interventions import copy_media as copy_intervention_media
from dissect.site.interventions import find_experiment, main_point
from dissect.site.interventions import layer_entry as intervention_entry
from dissect.site.pagekind import LayerPageKind, Record

#: The comparison page's file in the layer folder.
FEATURES_FILE = "features.html"
#: The unit and feature colors of the comparison chart (units first).
_COLORS = ("#6c6f7d",) + PALETTE


def _entry(results: Record, layer: Record) -> Record | None:
    return next((b for b in results.get("bases") or [] if b.get("layer") == layer.get("name")), None)


def basis_folder(layer_slug: str, basis: str) -> str:
    """The folder, beside the layer's, of a basis's grid and feature pages."""
    return f"{layer_slug}--{basis}"


def basis_records(results: Record, layer: Record) -> list[Record]:
    """One layer-like record per basis of ``layer`` (its ``units`` are the features), with the
    folder ``slug`` its pages go to: the build writes them as it writes a layer's."""
    entry = _entry(results, layer)
    if entry is None:
        return []
    name = layer.get("alias") or layer["name"]
    return [{**feat, "name": layer["name"], "alias": f"{name} · {feat['title']}",
             "slug": basis_folder(layer["slug"], feat["basis"]), "unit_word": "feature",
             "basis_intro": _intro(feat, f"../{layer['slug']}/{FEATURES_FILE}")}
            for feat in entry["features"]]


def _intro(feat: Record, compare_href: str) -> Record:
    """What a basis's grid says about the basis above its features."""
    ev, active = feat.get("explained_variance"), feat.get("mean_active")
    return {"title": feat["title"], "num": fmt_num(feat["num_features"]), "method": feat["method"],
            "explained": None if ev is None else f"{ev:.1%}", "active": None if active is None else fmt_num(active),
            "note": feat.get("note"), "compare_href": compare_href}


def _view(ctx: ModelContext, layer: Record, entry: Record) -> Record:
    features = {f["basis"]: f for f in entry["features"]}
    cats = [c for c in ctx.categories if any(c in r["mean_best_iou_by_category"] for r in entry["comparison"])]
    rows = []
    for r in entry["comparison"]:
        f = features.get(r["basis"])
        rows.append({
            "title": r["title"],
            "href": "index.html" if f is None else f"../{basis_folder(layer['slug'], r['basis'])}/index.html",
            "num": fmt_num(r["num_features"]), "detectors": fmt_num(r["detectors"]),
            "unique": fmt_num(r["unique_concepts"]),
            "by_cat": [fmt_iou(r["mean_best_iou_by_category"].get(c)) if c in r["mean_best_iou_by_category"] else "–"
                       for c in cats],
            "only_here": ", ".join(r["only_here"]) or "–" if f is not None else "",
            "only_units": ", ".join(r["only_units"]) or "–" if f is not None else "",
            "explained": "–" if f is None or f.get("explained_variance") is None
            else f"{f['explained_variance']:.1%}",
            "active": "–" if f is None or f.get("mean_active") is None else fmt_num(f["mean_active"]),
        })
    chart = {
        "data": [{"type": "bar", "name": html.escape(r["title"]), "x": [html.escape(c) for c in cats],
                  "y": [r["mean_best_iou_by_category"].get(c) for c in cats],
                  "marker": {"color": _COLORS[i % len(_COLORS)]},
                  "hovertemplate": "%{x}: mean best IoU %{y:.3f}<extra>" + html.escape(r["title"]) + "</extra>"}
                 for i, r in enumerate(entry["comparison"])],
        "layout": layout("category", "mean best IoU", barmode="group"),
    }
    counts = {
        "data": [{"type": "bar", "name": label, "x": [html.escape(r["title"]) for r in entry["comparison"]],
                  "y": [r[key] for r in entry["comparison"]], "marker": {"color": color}}
                 for label, key, color in (("detectors", "detectors", PALETTE[0]),
                                           ("unique concepts", "unique_concepts", PALETTE[1]))],
        "layout": layout("basis", "count", barmode="group"),
    }
    return {
        "layer": {"name": layer["name"], "alias": layer.get("alias"), "num_units": fmt_num(entry["num_units"])},
        "categories": cats,
        "rows": rows,
        "iou_chart": chart,
        "counts_chart": counts,
        "iou_threshold": fmt_num(ctx.iou_threshold),
        "features": [_basis_row(layer, f) for f in entry["features"]],
        "ablation": _ablation_view(entry.get("ablation")),
        "interventions": _interventions_view(ctx, layer, entry),
    }


#: The sizes N the page's table of class accuracy drops shows (those the run has).
_SHOWN_N = (1, 5, 10)


def _ablation_view(ab: Record | None) -> Record | None:
    """The features' class-by-class ablation beside the units' (the entry's ``ablation``): a
    table of each class's drop in balanced accuracy with its top N units or features removed,
    and a chart of the mean drop over the classes by N."""
    if not ab or not ab.get("top_n"):
        return None
    sizes = ab["top_n"]
    shown = [n for n in _SHOWN_N if n in sizes] or sizes[:3]
    bases = ab["bases"]
    titles = ab["titles"]

    def drop(c: Record, b: str, n: int) -> str:
        curve = c["remove_top"].get(b)
        after = None if curve is None else curve[sizes.index(n)]
        return "–" if after is None or c["balanced_accuracy"] is None else f"{c['balanced_accuracy'] - after:+.3f}"

    rows = []
    for c in ab["classes"]:
        top = {b: ", ".join(f"#{t['feature']} {t['label'] or '–'}" for t in c["top_features"].get(b, [])[:3]) or "–"
               for b in bases if b != "units"}
        rows.append({"name": c["name"], "accuracy": fmt_iou(c["balanced_accuracy"]),
                     "drops": [drop(c, b, n) for b in bases for n in shown], "top": [top[b] for b in bases if b != "units"]})
    chart = {
        "data": [{"type": "bar", "name": html.escape(titles[b]), "x": [str(n) for n in sizes],
                  "y": ab["mean_drop"][b], "marker": {"color": _COLORS[i % len(_COLORS)]},
                  "hovertemplate": "top %{x} removed: mean drop %{y:.3f}<extra>" + html.escape(titles[b]) + "</extra>"}
                 for i, b in enumerate(bases)],
        "layout": layout("top N removed", "mean drop in balanced accuracy", barmode="group"),
    }
    return {"columns": [{"title": titles[b], "n": n} for b in bases for n in shown],
            "feature_titles": [titles[b] for b in bases if b != "units"], "rows": rows, "chart": chart,
            "rule": ab["rule"], "method": ab["method"], "draws": fmt_num(ab.get("random_draws"))}


#: Where a layer folder keeps the interventions' strips (the interventions page's copies too).
_STRIPS = "interventions"


def copy_media(entry: Record, run_dir: Path, layer_dir: Path) -> None:
    """Copy the strips of the features' generator experiments (and of the units' run for the
    comparison, when the layer has no interventions of its own) into the layer folder, repoint
    their paths, and note every strip's size in px (``interventions.strip_sizes``, for the
    page's ``<img>``; the units' strips are there when the interventions page copied them first)."""
    iv = entry.get("interventions")
    if not iv:
        return
    for rec in [iv.get("units"), *iv["features"].values()]:
        if rec:
            copy_intervention_media(rec, run_dir, layer_dir)
    sizes = {}
    for png in sorted((layer_dir / _STRIPS).glob("*.png")):
        with Image.open(png) as im:
            sizes[f"{_STRIPS}/{png.name}"] = [im.width, im.height]
    iv["strip_sizes"] = sizes


def _interventions_view(ctx: ModelContext, layer: Record, entry: Record) -> Record | None:
    """The generator experiments of the units and of each basis's features, concept by concept:
    the numbers the interventions page gives (the concept's pixels removed by the top N, by N
    random; the pixels painted in), the top directions, and the strips side by side."""
    iv = entry.get("interventions")
    if not iv:
        return None
    records = {"units": iv.get("units") or intervention_entry(ctx.results, layer), **iv["features"]}
    labels = {"units": units_by_number(layer)}
    labels.update({f["basis"]: {u["unit"]: u for u in f["units"]} for f in entry["features"]})
    sizes = iv.get("strip_sizes") or {}

    def strip(exp: Record, alt: str, caption: str) -> Record | None:
        if not exp.get("strip"):
            return None
        src = f"{_STRIPS}/{Path(exp['strip']).name}"
        w, h = sizes.get(src) or (None, None)
        return {"src": src, "width": w, "height": h, "alt": alt, "caption": caption,
                "animation": f"{_STRIPS}/{Path(exp['animation']).name}"}

    def top(b: str, exp: Record) -> list[Record]:
        word = "unit" if b == "units" else "feature"
        folder = "" if b == "units" else f"../{basis_folder(layer['slug'], b)}/"
        return [{"text": f"{word} {k} ({unit_label(labels[b].get(k, {}))})", "href": folder + unit_file(k)}
                for k in exp["units"][:min(3, exp["n_main"])]]

    def word(b: str) -> str:
        return "units" if b == "units" else "features"

    out = {"ablation": [], "insertion": [], "rule": iv["rule"], "seconds": f"{iv['seconds']:.0f}",
           "units_here": iv.get("units") is not None}
    for i, concept in enumerate(iv["ablate"]):
        rows = []
        for b in iv["bases"]:
            exp = find_experiment(records.get(b), "ablation", concept)
            if exp is None:
                rows.append({"title": iv["titles"][b], "missing": True, "strip": None})
                continue
            p = main_point(exp)
            rows.append({"title": iv["titles"][b], "missing": False, "n": exp["n_main"], "baseline": pct(exp["baseline_fraction"], 2),
                         "after": pct(p["fraction"], 2), "drop": pct(p["drop"]), "random_drop": pct(p["random_drop"]),
                         "top": top(b, exp),
                         "strip": strip(exp, f"Generated images before (top row) and after (bottom row) removing the "
                                             f"top {exp['n_main']} {concept} {word(b)} ({iv['titles'][b]})",
                                        f"the top {exp['n_main']} {concept} {word(b)} removed (bottom row); outlined: "
                                        f"what the segmenter labeled {concept} before.")})
        out["ablation"].append({"concept": concept, "anchor": f"basis-ablate-{i}", "rows": rows})
    for i, concept in enumerate(iv["insert"]):
        rows = []
        for b in iv["bases"]:
            exp = find_experiment(records.get(b), "insertion", concept)
            if exp is None:
                rows.append({"title": iv["titles"][b], "missing": True, "strip": None})
                continue
            rows.append({"title": iv["titles"][b], "missing": False, "n": exp["n_main"], "added": f"{main_point(exp)['added_pixels']:.2f}",
                         "random_added": f"{exp.get('random_added_pixels') or 0.0:.2f}",
                         "insertions": fmt_num(exp.get("insertions")), "top": top(b, exp),
                         "strip": strip(exp, f"Generated images before (top row) and after (bottom row) painting the "
                                             f"top {exp['n_main']} {concept} {word(b)} ({iv['titles'][b]}) in the "
                                             "outlined region",
                                        f"the top {exp['n_main']} {concept} {word(b)} set high in the outlined region "
                                        "(bottom row)" + (f", placed where it held {exp['strip_context']}."
                                                          if exp.get("strip_context") else "."))})
        out["insertion"].append({"concept": concept, "anchor": f"basis-insert-{i}", "rows": rows})
    return out


def _basis_row(layer: Record, f: Record) -> Record:
    """A basis as the page's list of bases shows it: its method, its fit, its parameters."""
    fit = (f"{fmt_num(f['fit_vectors'])} activation vectors of the {f['fit_data']}" if f.get("fit_vectors")
           else "no fit (a fixed matrix)")
    return {"title": f["title"], "method": f["method"], "num": fmt_num(f["num_features"]), "fit": fit,
            "href": f"../{basis_folder(layer['slug'], f['basis'])}/index.html",
            "params": ", ".join(f"{k} {v}" for k, v in f["params"].items() if v is not None), "note": f.get("note")}


FEATURES = LayerPageKind(
    file=FEATURES_FILE,
    template="features.html",
    label="units vs features",
    entry=_entry,
    view=_view,
    copy_media=copy_media,
)
