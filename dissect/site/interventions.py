"""The interventions page kind: a generator layer's ``results["generator"]`` as ``interventions.html``.

What removing a concept's units takes out of the generated images and what switching them
on in a region puts in, with the strips and animations copied beside the page; each unit
page lists the interventions it takes part in. Numbers are formatted here, templates only
lay out, names going into plotly figures are HTML-escaped.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

from dissect.site.cells import unit_cell, units_by_number
from dissect.site.charts import curve_layout, layout
from dissect.site.context import ModelContext
from dissect.site.format import fmt_iou, fmt_num, pct
from dissect.site.pagekind import LayerPageKind

#: The page in the layer folder.
PAGE = "interventions.html"
_RED, _GREY, _BLUE = "#c0392b", "#9a9ca8", "#2f6fbd"


def layer_entry(results: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any] | None:
    """The generator record of ``layer`` (None when none was run or it has no experiment)."""
    gen = results.get("generator")
    if not isinstance(gen, dict):
        return None
    for entry in gen.get("layers") or []:
        if isinstance(entry, dict) and entry.get("layer") == layer.get("name"):
            return entry if (entry.get("ablation") or entry.get("insertion")) else None
    return None


def copy_media(entry: dict[str, Any], run_dir: Path, layer_dir: Path) -> None:
    """Copy the strips and animations into the layer folder; repoint the entry's paths."""
    for group in ("ablation", "insertion"):
        for exp in entry.get(group) or []:
            for key in ("strip", "animation"):
                rel = exp.get(key)
                if not rel:
                    continue
                src = Path(run_dir) / rel
                dst = layer_dir / "interventions" / Path(rel).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                exp[key] = f"interventions/{Path(rel).name}"


def main_point(exp: dict[str, Any]) -> dict[str, Any]:
    """The point of an experiment's curve at its main size ``n_main`` (else its last)."""
    return next((p for p in exp["curve"] if p["n"] == exp.get("n_main")), exp["curve"][-1])


def find_experiment(record: dict[str, Any] | None, group: str, concept: str) -> dict[str, Any] | None:
    """The experiment on ``concept`` in a layer record's ``group`` (``"ablation"`` or
    ``"insertion"``), or None."""
    return next((e for e in (record or {}).get(group) or [] if e.get("concept") == concept), None)


def _units(ctx: ModelContext, info: dict[int, dict[str, Any]], exp: dict[str, Any]) -> list[dict[str, Any]]:
    """The top ``n_main`` units of an experiment as cells (own label and category, from the
    dissection) with the IoU for *this* concept."""
    ious = exp.get("unit_ious") or [0.0] * len(exp["units"])
    return [{**unit_cell(ctx, info, k), "iou": fmt_iou(iou)}
            for k, iou in list(zip(exp["units"], ious))[:exp.get("n_main") or 10]]


def _ablation_view(ctx: ModelContext, info: dict[int, dict[str, Any]], exp: dict[str, Any], i: int,
                   units_total: int) -> dict[str, Any]:
    c = html.escape(exp["concept"])
    sizes = [p["n"] for p in exp["curve"]]
    base = exp.get("baseline_fraction") or 0.0
    chart = {"data": [
        {"type": "scatter", "mode": "lines+markers", "name": f"top-N {c} units removed", "x": sizes,
         "y": [round(100 * p["fraction"], 4) for p in exp["curve"]], "line": {"color": _RED},
         "hovertemplate": "N=%{x}: %{y:.2f}% " + c + " pixels<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "name": "N random units removed", "x": sizes,
         "y": [round(100 * p["random_fraction"], 4) for p in exp["curve"]],
         "line": {"color": _GREY, "dash": "dot"},
         "hovertemplate": "N=%{x}: %{y:.2f}%<extra>random</extra>"},
    ], "layout": curve_layout(f"N units removed (of {units_total})", f"{c} pixels (%)", sizes,
                              {"rangemode": "tozero"}, round(100 * base, 4), "#6c6f7d", "dash")}
    rows = [{"n": p["n"], "fraction": pct(p["fraction"], 2), "drop": pct(p["drop"]),
             "random_fraction": pct(p["random_fraction"], 2), "random_drop": pct(p["random_drop"]),
             "random_range": f"{pct(p.get('random_drop_min'))} to {pct(p.get('random_drop_max'))}"}
            for p in exp["curve"]]
    main = main_point(exp)

    def effect(d: float | None) -> dict[str, str]:
        if d is None:
            return {"verb": "changes", "amount": "–"}
        return {"verb": "lowers", "amount": f"{pct(d)}%"} if d >= 0 else {"verb": "raises", "amount": f"{pct(-d)}%"}
    return {
        "concept": exp["concept"], "category": exp.get("category"), "anchor": f"ablate-{i}",
        "cls": ctx.cat_class(exp.get("category")),
        "effect_main": effect(main.get("drop")), "random_effect_main": effect(main.get("random_drop")),
        "baseline": pct(base, 2), "samples": fmt_num(exp.get("samples")), "n_main": exp.get("n_main"),
        "units": _units(ctx, info, exp),
        "chart": chart, "chart_id": f"chart-ablate-{i}", "rows": rows,
        "became": [{"label": b["label"], "fraction": pct(b["fraction"])} for b in exp.get("became") or []],
        "strip": exp.get("strip"), "animation": exp.get("animation"),
        "frames": ", ".join(exp.get("animation_frames") or []),
    }


def _insertion_view(ctx: ModelContext, info: dict[int, dict[str, Any]], exp: dict[str, Any], i: int,
                    units_total: int) -> dict[str, Any]:
    c = html.escape(exp["concept"])
    sizes = [p["n"] for p in exp["curve"]]
    chart = {"data": [
        {"type": "scatter", "mode": "lines+markers", "name": f"top-N {c} units switched on", "x": sizes,
         "y": [round(p["added_pixels"], 4) for p in exp["curve"]], "line": {"color": _BLUE},
         "hovertemplate": "N=%{x}: %{y:.2f} px<extra></extra>"},
    ], "layout": curve_layout(f"N units (of {units_total})", f"{c} pixels added per insertion", sizes,
                              {"rangemode": "tozero"}, round(exp.get("random_added_pixels") or 0.0, 4), _GREY, "dot")}
    heat = exp.get("heatmap") or []
    heat_chart = {"data": [{"type": "heatmap", "z": [[round(v, 3) for v in row] for row in heat],
                            "colorscale": "Viridis", "hovertemplate": "row %{y}, column %{x}: %{z:.2f} px<extra></extra>",
                            "colorbar": {"title": {"text": "px"}}}],
                  "layout": layout("region column", "region row", height=300,
                                    yaxis={"title": {"text": "region row"}, "autorange": "reversed",
                                           "scaleanchor": "x"},
                                    xaxis={"title": {"text": "region column"}})}
    total = sum(t["count"] for t in exp.get("contexts") or []) or 1
    contexts = [{"context": t["context"], "count": fmt_num(t["count"]), "share": pct(t["count"] / total),
                 "added": f"{t['added_pixels']:.2f}", "success": pct(t.get("success_rate"))}
                for t in exp.get("contexts") or []]
    return {
        "concept": exp["concept"], "category": exp.get("category"), "anchor": f"insert-{i}",
        "cls": ctx.cat_class(exp.get("category")),
        "n_main": exp.get("n_main"), "samples": fmt_num(exp.get("samples")),
        "positions": fmt_num(exp.get("positions")), "insertions": fmt_num(exp.get("insertions")),
        "region": f"{exp['region_cells']}x{exp['region_cells']} cell{'s' if exp['region_cells'] > 1 else ''} of the "
                  f"{exp['layer_size'][0]}x{exp['layer_size'][1]} map ({exp['region_pixels'][0]}x{exp['region_pixels'][1]} px "
                  "of the image)",
        "value_rule": exp.get("value_rule", "–"),
        "random_added": f"{exp.get('random_added_pixels', 0.0):.2f}",
        "units": _units(ctx, info, exp),
        "chart": chart, "chart_id": f"chart-insert-{i}", "heat": heat_chart, "heat_id": f"chart-heat-{i}",
        "rows": [{"n": p["n"], "added": f"{p['added_pixels']:.2f}"} for p in exp["curve"]],
        "contexts": contexts, "strip": exp.get("strip"), "animation": exp.get("animation"),
        "strip_context": exp.get("strip_context"),
    }


def interventions_page(ctx: ModelContext, layer: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The view of ``SITE/<model>/<layer>/interventions.html``."""
    gen = ctx.results.get("generator") or {}
    params = gen.get("params") or {}
    seg = gen.get("segmenter") or {}
    info = units_by_number(layer)
    units_total = layer.get("num_units") or len(info)
    setup = [
        {"key": "method", "value": entry.get("how", "–")},
        {"key": "segmenter", "value": f"{seg.get('name', '–')} (layers: {', '.join(seg.get('layers') or [])})"},
        {"key": "latents", "value": f"seed {fmt_num(params.get('seed'))} (not the probe set's)"},
        {"key": "ablation samples", "value": fmt_num(params.get("samples"))},
        {"key": "insertion samples", "value": fmt_num(params.get("insert_samples"))},
        {"key": "N (curves)", "value": ", ".join(str(n) for n in params.get("top_n") or [])},
        {"key": "random draws per N", "value": fmt_num(params.get("random_draws"))},
    ]
    return {
        "layer": {"name": layer["name"], "alias": layer.get("alias"), "num_units": fmt_num(units_total)},
        "setup": setup,
        "ablation": [_ablation_view(ctx, info, e, i, units_total) for i, e in enumerate(entry.get("ablation") or [])],
        "insertion": [_insertion_view(ctx, info, e, i, units_total) for i, e in enumerate(entry.get("insertion") or [])],
    }


def unit_effects(ctx: ModelContext, layer: dict[str, Any], entry: dict[str, Any],
                 unit: dict[str, Any]) -> list[dict[str, Any]]:
    """The unit page's section: the interventions that switch ``unit`` off or on."""
    rows = []
    for group, verb, prefix in (("ablation", "removed with", "ablate"), ("insertion", "switched on with", "insert")):
        for i, e in enumerate(entry.get(group) or []):
            n = e.get("n_main") or 10
            if unit["unit"] in (e.get("units") or [])[:n]:
                rank = e["units"].index(unit["unit"]) + 1
                rows.append({"text": f"{verb} the top {n} {e['concept']} units (rank {rank})",
                             "href": f"{PAGE}#{prefix}-{i}"})
    return rows


INTERVENTIONS = LayerPageKind(
    file=PAGE, template="interventions.html", label="interventions", entry=layer_entry, view=interventions_page,
    unit_template="_interventions_unit.html", unit_section=unit_effects, copy_media=copy_media,
)
