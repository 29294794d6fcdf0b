"""The view of the site's comparison page (``compare.html``) from its comparison
(:func:`dissect.experiments.comparison.build_comparison`): per comparable group the stacked
bars of unique detectors and of detector units per category, the snapshot curves and label
timelines, the fine-tuning transitions (a plotly Sankey), and the rotation curves. Every
chart comes with a table of the same numbers.
"""

from __future__ import annotations

import html
from typing import Any

from dissect.experiments.comparison import NO_LABEL
from dissect.site.charts import PALETTE, category_classes, layout
from dissect.site.format import fmt_num, unit_file

Record = dict[str, Any]
_CHANGES = ("kept", "changed", "gained", "lost", "none")
_CHANGE_TEXT = {"kept": "kept its label", "changed": "changed label", "gained": "gained a label",
                "lost": "lost its label", "none": "no label before or after"}


def _cls(cat_index: dict[str, int], category: str | None) -> str:
    return "cat-none" if category is None else f"cat-{cat_index.get(category, 7)}"


def _bars(rows: list[Record], cats: list[str], cat_index: dict[str, int], field: str, ytitle: str) -> Record:
    x = [html.escape(f"{r['run']} · {r['layer']}") for r in rows]
    traces = [{"type": "bar", "name": html.escape(c), "x": x, "y": [r[field][c] for r in rows],
               "marker": {"color": PALETTE[cat_index[c]]},
               "hovertemplate": "%{x}: %{y}<extra>" + html.escape(c) + "</extra>"}
              for c in cats if any(r[field][c] for r in rows)]
    return {"data": traces, "layout": layout("", ytitle, barmode="stack",
                                             xaxis={"type": "category", "tickangle": -30, "automargin": True})}


def _curve(xs: list[float], ys: dict[str, list[int]], cat_index: dict[str, int], xtitle: str, ytitle: str,
           xaxis: Record | None = None) -> Record:
    traces = [{"type": "scatter", "mode": "lines+markers", "name": html.escape(c), "x": xs, "y": v,
               "line": {"color": PALETTE[cat_index[c]]}} for c, v in ys.items() if any(v)]
    return {"data": traces, "layout": layout(xtitle, ytitle, xaxis={"title": {"text": xtitle}, **(xaxis or {})},
                                             yaxis={"title": {"text": ytitle}, "rangemode": "tozero"})}


def _sankey(tr: Record, cat_index: dict[str, int]) -> Record:
    """The Sankey of the units with a label before or after (the units with none stay out of
    the figure; the tables count them)."""
    links = [lk for lk in tr["links"] if not (lk["source_category"] is None and lk["target_category"] is None)]
    left = list(dict.fromkeys((lk["source"], lk["source_category"]) for lk in links))
    right = list(dict.fromkeys((lk["target"], lk["target_category"]) for lk in links))

    def color(cat: str | None) -> str:
        return "#9aa0aa" if cat is None else PALETTE[cat_index.get(cat, 7)]

    return {
        "data": [{
            "type": "sankey", "arrangement": "snap",
            "node": {"label": [html.escape(n) for n, _ in left] + [html.escape(n) for n, _ in right],
                     "color": [color(c) for _, c in left + right], "pad": 8, "thickness": 14},
            "link": {"source": [left.index((lk["source"], lk["source_category"])) for lk in links],
                     "target": [len(left) + right.index((lk["target"], lk["target_category"])) for lk in links],
                     "value": [lk["units"] for lk in links],
                     "color": ["rgba(120,130,150,0.35)"] * len(links)},
        }],
        "layout": {**layout("", ""), "height": max(300, 14 * (len(left) + len(right)))},
    }


def _unit_href(run_href: str | None, layer_slug: str | None, unit: int) -> str | None:
    if not run_href or not layer_slug:
        return None
    return f"{run_href.rsplit('/', 1)[0]}/{layer_slug}/{unit_file(unit)}"


def _group_view(g: Record, gi: int, slugs: dict[tuple[str, str], str]) -> Record:
    cats = g["categories"]
    cat_index = category_classes(cats)
    used = [c for c in cats if any(r["detectors_by_category"].get(c) for r in g["layers"])]
    rows = [{"run": r["run"], "href": r["href"], "layer": r["layer"], "step": fmt_num(r["step"]),
             "units": r["num_units"], "detectors": r["detectors"], "unique": r["unique"],
             "cells": [{"unique": r["unique_by_category"][c], "detectors": r["detectors_by_category"][c]}
                       for c in used]} for r in g["layers"]]
    series = []
    for si, s in enumerate(g["series"]):
        steps = [p["step"] for p in s["points"]]
        xaxis = {"type": "log"} if steps[0] > 0 else {}
        series.append({
            "id": f"chart-series-{gi}-{si}", "group": s["group"], "layer": s["layer"],
            "chart": _curve(steps, {c: [p["unique_by_category"].get(c, 0) for p in s["points"]] for c in used},
                            cat_index, "training step", "unique detectors", xaxis),
            "rows": [{"step": fmt_num(p["step"]), "run": p["run"], "href": p["href"], "unique": p["unique"],
                      "detectors": p["detectors"], "cells": [p["unique_by_category"].get(c, 0) for c in used]}
                     for p in s["points"]],
            "steps": [fmt_num(x) for x in steps],
            "timeline": [{"unit": t["unit"], "labels": [
                {"label": lab["label"] or "–", "cls": _cls(cat_index, lab["category"])} for lab in t["labels"]]}
                for t in s["timeline"]],
        })
    transitions = []
    for ti, t in enumerate(g["transitions"]):
        layer_slug = slugs.get((t["after_href"] or "", t["layer"])) or slugs.get((t["before_href"] or "", t["layer"]))
        href_run = t["after_href"] if slugs.get((t["after_href"] or "", t["layer"])) else t["before_href"]
        transitions.append({
            "id": f"chart-sankey-{gi}-{ti}", "group": t["group"], "layer": t["layer"],
            "before": t["before"], "after": t["after"], "before_href": t["before_href"], "after_href": t["after_href"],
            "chart": _sankey(t, cat_index),
            "counts": [{"change": k, "text": _CHANGE_TEXT[k], "units": t["counts"].get(k, 0)} for k in _CHANGES],
            "links": [{"source": lk["source"], "target": lk["target"], "units": lk["units"],
                       "source_cls": _cls(cat_index, lk["source_category"]),
                       "target_cls": _cls(cat_index, lk["target_category"])} for lk in t["links"]],
            "units": [{"unit": u["unit"], "href": _unit_href(href_run, layer_slug, u["unit"]),
                       "before": u["before"], "before_cls": _cls(cat_index, u["before_category"]),
                       "before_iou": fmt_num(u["before_iou"]), "after": u["after"],
                       "after_cls": _cls(cat_index, u["after_category"]), "after_iou": fmt_num(u["after_iou"]),
                       "change": u["change"]} for u in t["units"] if u["change"] != "none"],
        })
    probe = g["key"]["probe"]
    return {
        "id": f"group-{gi}", "probe": probe.get("name") or "–", "num_images": fmt_num(probe.get("num_images")),
        "params": [{"key": k, "value": str(v)} for k, v in g["key"]["params"].items()],
        "runs": g["runs"],
        "categories": [{"name": c, "cls": _cls(cat_index, c)} for c in used],
        "unique_chart": _bars(g["layers"], used, cat_index, "unique_by_category", "unique detectors"),
        "units_chart": _bars(g["layers"], used, cat_index, "detectors_by_category", "detector units"),
        "rows": rows, "series": series, "transitions": transitions, "notes": g.get("notes") or [],
    }


def compare_page(comparison: Record, all_results: list[Record]) -> Record:
    """The comparison page's own data."""
    slugs = {(f"{r['model']['slug']}/index.html", layer.get("alias") or layer["name"]): layer["slug"]
             for r in all_results for layer in r["layers"]}
    rotations = []
    for i, rot in enumerate(comparison.get("rotations") or []):
        cats = [c for c in rot["points"][0]["unique_by_category"]]
        cat_index = category_classes(cats)
        used = [c for c in cats if any(p["unique_by_category"][c] for p in rot["points"])]
        amounts = [p["amount"] for p in rot["points"]]
        rotations.append({
            "id": f"chart-rotation-{i}", "name": rot["name"], "href": rot["href"],
            "layer": rot.get("alias") or rot["layer"], "seed": rot["seed"], "method": rot["method"],
            "num_units": fmt_num(rot.get("num_units")),
            "categories": [{"name": c, "cls": _cls(cat_index, c)} for c in used],
            "chart": _curve(amounts, {c: [p["unique_by_category"][c] for p in rot["points"]] for c in used},
                            cat_index, "rotation t (0: the units, 1: a random basis)", "unique detectors"),
            "rows": [{"amount": fmt_num(p["amount"]), "unique": p["unique"], "detectors": p["detectors"],
                      "mean_iou": "–" if p.get("mean_iou") is None else f"{p['mean_iou']:.4f}",
                      "cells": [p["unique_by_category"][c] for c in used]} for p in rot["points"]],
        })
    nc = comparison.get("not_comparable")
    return {
        "groups": [_group_view(g, i, slugs) for i, g in enumerate(comparison["groups"])],
        "not_comparable": None if not nc else {"runs": nc["runs"], "differs": nc["differs"]},
        "rotations": rotations,
        "no_label": NO_LABEL,
    }
