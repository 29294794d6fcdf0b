"""The ablation page kind: a classifier layer's ``results["ablation"]`` as ``ablation.html``.

Which units each class depends on (curves of accuracy as top units are removed or kept),
units many classes depend on, and the adversarial view; each unit page lists the classes
that depend on it. Every number is formatted here, the templates only lay out; names go
into plotly figures HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import PurePath
from typing import Any

from dissect.site.cells import unit_cell, units_by_number
from dissect.site.charts import PALETTE, curve_layout, layout
from dissect.site.context import ModelContext
from dissect.site.format import fmt_iou, fmt_num, pct, unit_label
from dissect.site.pagekind import LayerPageKind

#: Per-class sections shown on the page (the rest are in results.json).
MAX_CLASSES_SHOWN = 40
#: Top units listed per class on the page.
UNITS_SHOWN = 10
#: The page in the layer folder.
PAGE = "ablation.html"

_COLORS = {"remove": "#c0392b", "keep": "#2f6fbd", "random_remove": "#e6a39b", "random_keep": "#9fbbe0",
           "baseline": "#6c6f7d"}


def layer_entry(results: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any] | None:
    """The ablation record of ``layer`` (None when there is none or it failed)."""
    abl = results.get("ablation")
    if not isinstance(abl, dict):
        return None
    entry = (abl.get("layers") or {}).get(layer.get("name"))
    if not isinstance(entry, dict) or entry.get("error") or not entry.get("classes"):
        return None
    return entry


def _folder_name(path: str | None) -> str:
    """The labeled data's folder by its name only: a page names no local path."""
    return PurePath(path).name or "–" if path else "–"


def _pts(x: float | None) -> str:
    """An accuracy difference in percentage points, signed (never "-0.0")."""
    return "–" if x is None else f"{round(100 * x, 1) + 0.0:+.1f}"


def _interval_pts(iv: list[float | None] | None) -> str:
    """A drop's 95% interval in signed points, ``"–"`` without one."""
    if not iv or iv[0] is None or iv[1] is None:
        return "–"
    return f"{_pts(iv[0])} to {_pts(iv[1])}"


def _straddles(iv: list[float | None] | None) -> bool:
    """Whether a drop's interval reaches 0 or below: the drop is not told from no effect."""
    return bool(iv) and iv[0] is not None and iv[0] <= 0


def _pct_interval(value: float | None, iv: list[float | None] | None) -> str:
    """A balanced accuracy in percent with its interval, e.g. ``"97.1 (94.0–99.2)"``."""
    if value is None:
        return "–"
    if not iv or iv[0] is None or iv[1] is None:
        return pct(value)
    return f"{pct(value)} ({pct(iv[0])}–{pct(iv[1])})"


def _error_bars(ys: list[float | None], ivs: list[Any] | None) -> dict[str, Any] | None:
    """Plotly asymmetric error bars (percent) for curve points ``ys`` with intervals ``ivs``."""
    if not ivs:
        return None
    up, down = [], []
    for y, iv in zip(ys, ivs):
        ok = y is not None and iv and iv[0] is not None and iv[1] is not None
        up.append(round(100 * (iv[1] - y), 3) if ok else None)
        down.append(round(100 * (y - iv[0]), 3) if ok else None)
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down, "thickness": 1, "width": 3}


def _curve_chart(sizes: list[int], series: dict[str, list[float | None]], baseline: float | None,
                 num_units: int, intervals: dict[str, list[Any] | None] | None = None) -> dict[str, Any]:
    names = {"remove": "remove top N", "keep": "keep only top N",
             "random_remove": "remove N random", "random_keep": "keep only N random"}
    traces = []
    for key in ("remove", "keep", "random_remove", "random_keep"):
        ys = series.get(key)
        if ys is None:
            continue
        traces.append({
            "type": "scatter", "mode": "lines+markers", "name": names[key], "x": sizes,
            "y": [None if y is None else round(100 * y, 3) for y in ys],
            "line": {"color": _COLORS[key], "dash": "dot" if key.startswith("random") else "solid"},
            "hovertemplate": "N=%{x}: %{y:.1f}%<extra>" + names[key] + "</extra>",
        })
        bars = _error_bars(ys, (intervals or {}).get(key))
        if bars is not None:
            traces[-1]["error_y"] = {**bars, "color": _COLORS[key]}
    return {"data": traces,
            "layout": curve_layout(f"N units (of {num_units})", "balanced accuracy (%)", sizes, {"range": [0, 102]},
                                   None if baseline is None else round(100 * baseline, 3), _COLORS["baseline"],
                                   "dash")}


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _many_chart(ctx: ModelContext, rows: list[dict[str, Any]], important: int) -> dict[str, Any] | None:
    if not rows:
        return None
    traces = []
    cats = [c for c in ctx.categories if any(r["category"] == c for r in rows)]
    groups = [(c, [r for r in rows if r["category"] == c]) for c in cats]
    groups.append((None, [r for r in rows if r["category"] is None]))
    for cat, mine in groups:
        if not mine:
            continue
        traces.append({
            "type": "scatter", "mode": "markers", "name": html.escape(cat or "no label"),
            "x": [r["iou_raw"] for r in mine], "y": [r["num_classes"] for r in mine],
            "text": [html.escape(f"unit {r['unit']}: {r['label']}") for r in mine],
            "marker": {"color": PALETTE[ctx.cat_index[cat]] if cat in ctx.cat_index else "#999999",
                       "size": 8, "opacity": 0.75},
            "hovertemplate": "%{text}<br>IoU %{x:.3f}, top-" + str(important) + " of %{y} classes<extra></extra>",
        })
    return {"data": traces,
            "layout": layout("best IoU (dissection)", f"classes with the unit in their top {important}",
                             yaxis={"title": {"text": f"classes with the unit in their top {important}"},
                                    "rangemode": "tozero", "dtick": 1})}


def ablation_page(ctx: ModelContext, layer: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The view of ``SITE/<model>/<layer>/ablation.html``."""
    abl = ctx.results.get("ablation") or {}
    params = abl.get("params") or {}
    data = abl.get("data") or {}
    info = units_by_number(layer)
    sizes = list(entry.get("top_n") or [])
    C = entry.get("num_units") or len(info)

    many = entry.get("many_classes") or {}
    important = many.get("important", params.get("important", 5))
    classes = []
    for i, c in enumerate(entry.get("classes", [])[:MAX_CLASSES_SHOWN]):
        base = c.get("balanced_accuracy")
        series = {"remove": c.get("remove_top"), "keep": c.get("keep_top"),
                  "random_remove": c.get("random_remove"), "random_keep": c.get("random_keep")}
        curve_rows = []
        for j, n in enumerate(sizes):
            def at(key: str) -> float | None:
                v = series.get(key)
                return v[j] if v is not None and j < len(v) else None
            def iv(key: str) -> list[float | None] | None:
                v = c.get(f"{key}_top_interval")
                return v[j] if v is not None and j < len(v) else None
            curve_rows.append({"n": n, "remove": _pct_interval(at("remove"), iv("remove")),
                               "keep": _pct_interval(at("keep"), iv("keep")),
                               "random_remove": pct(at("random_remove")), "random_keep": pct(at("random_keep"))})
        top = []
        for r, t in enumerate((c.get("top_units") or [])[:UNITS_SHOWN]):
            cell = unit_cell(ctx, info, t["unit"])
            cell.update({"drop": _pts(t.get("drop")), "drop_rank": _pts(t.get("drop_rank")),
                         "expected": _pts(t.get("expected_drop_rank")),
                         "interval": _interval_pts(t.get("drop_interval")),
                         "important": r < important,
                         "uncertain": r < important and _straddles(t.get("drop_interval"))})
            top.append(cell)
        has_curves = c.get("remove_top") is not None and base is not None
        reason = c.get("no_curves") or (None if has_curves else "its balanced accuracy is undefined on the splits")
        classes.append({
            "name": c["name"],
            "anchor": f"class-{i}",
            "images_rank": fmt_num(c.get("images_rank")),
            "images_eval": fmt_num(c.get("images_eval")),
            "few_images": bool(c.get("few_images")),
            "no_curves": reason,
            "balanced_accuracy": pct(base),
            "balanced_accuracy_interval": _pct_interval(base, c.get("balanced_accuracy_interval")),
            "top_units": top,
            "uncertain": sum(1 for t in top if t["uncertain"]),
            "chart": _curve_chart(sizes, series, base, C, {"remove": c.get("remove_top_interval"),
                                                           "keep": c.get("keep_top_interval")}) if has_curves else None,
            "chart_id": f"chart-class-{i}",
            "curve_rows": curve_rows if has_curves else [],
        })
    hidden = max(0, len(entry.get("classes", [])) - MAX_CLASSES_SHOWN)

    # mean over classes
    shown_all = [c for c in entry.get("classes", []) if c.get("remove_top") is not None and c.get("balanced_accuracy") is not None]
    mean_series: dict[str, list[float | None]] = {}
    for key, src in (("remove", "remove_top"), ("keep", "keep_top"), ("random_remove", "random_remove"),
                     ("random_keep", "random_keep")):
        mean_series[key] = [_mean([c[src][j] for c in shown_all if c.get(src)]) for j in range(len(sizes))]
    mean_base = _mean([c["balanced_accuracy"] for c in shown_all])
    summary_rows = []
    for j, n in enumerate(sizes):
        summary_rows.append({"n": n, **{k: pct(v[j]) for k, v in mean_series.items()}})

    # many classes vs IoU
    scatter_rows = []
    for row in entry.get("units", []):
        u = info.get(row["unit"], {})
        cat = None if u.get("dead") else u.get("category")
        scatter_rows.append({"unit": row["unit"], "num_classes": row.get("num_classes", 0),
                             "iou_raw": round(float(u.get("iou") or 0.0), 6),
                             "label": unit_label(u),
                             "category": cat})
    by_count: dict[int, list[dict[str, Any]]] = {}
    for s in scatter_rows:
        by_count.setdefault(s["num_classes"], []).append(s)
    count_rows = [{"count": n, "units": len(rs),
                   "mean_iou": fmt_iou(sum(x["iou_raw"] for x in rs) / len(rs)),
                   "detectors": sum(1 for x in rs if info.get(x["unit"], {}).get("detector"))}
                  for n, rs in sorted(by_count.items(), reverse=True)]
    many_units = []
    for s in sorted(scatter_rows, key=lambda s: (-s["num_classes"], s["unit"])):
        if s["num_classes"] < 2 or len(many_units) >= 20:
            continue
        cell = unit_cell(ctx, info, s["unit"])
        row = next(x for x in entry["units"] if x["unit"] == s["unit"])
        cell.update({"num_classes": s["num_classes"], "classes": ", ".join(c["class"] for c in row.get("classes", []))})
        many_units.append(cell)

    # attack
    attack_rows = []
    for a in entry.get("attack") or []:
        def units(key: str) -> list[dict[str, Any]]:
            out = []
            for t in (a.get(key) or [])[:5]:
                cell = unit_cell(ctx, info, t["unit"])
                cell["change"] = f"{t['change']:+.2f}"
                out.append(cell)
            return out
        ov = a.get("overlap") or {}
        mc = a.get("mean_change") or {}
        attack_rows.append({
            "source": a["source"], "target": a["target"], "images": fmt_num(a.get("images")),
            "success": pct(a.get("success_rate")),
            "suppressed": units("suppressed"), "activated": units("activated"),
            "overlap_source": fmt_num(ov.get("suppressed_source")),
            "overlap_target": fmt_num(ov.get("activated_target")),
            "chance": fmt_num(ov.get("chance")),
            "change_source": "–" if mc.get("source_top") is None else f"{mc['source_top']:+.2f}",
            "change_target": "–" if mc.get("target_top") is None else f"{mc['target_top']:+.2f}",
            "change_all": "–" if mc.get("all_units") is None else f"{mc['all_units']:+.2f}",
            "important": fmt_num(a.get("important")),
        })
    attack_info = abl.get("attack") or {}
    ap = attack_info.get("params") or {}
    pairs_info = {(p["source"], p["target"]): p for p in attack_info.get("pairs") or []}
    for row in attack_rows:
        p = pairs_info.get((row["source"], row["target"]), {})
        tp = p.get("target_probability") or {}
        row["target_prob"] = f"{pct(tp.get('clean'))} → {pct(tp.get('attacked'))}" if tp else "–"

    acc = entry.get("accuracy") or {}
    skipped = list((entry.get("images") or {}).get("skipped") or [])
    setup = [
        {"key": "method", "value": entry.get("method", "–")},
        {"key": "labeled data", "value": f"{data.get('source', '–')}: {_folder_name(data.get('path'))}"},
        {"key": "ranking split", "value": f"{data.get('rank_split', '–')} ({fmt_num(data.get('rank_images'))} images, accuracy {pct(acc.get('rank'))}%)"},
        {"key": "evaluation split", "value": f"{data.get('eval_split', '–')} ({fmt_num(data.get('eval_images'))} images, accuracy {_pct_interval(acc.get('eval'), acc.get('eval_interval'))}%)"},
        *([{"key": "unreadable images skipped",
            "value": f"{len(skipped)}: " + ", ".join(skipped[:10]) + (" …" if len(skipped) > 10 else "")}]
          if skipped else []),
        {"key": "N (top-N curves)", "value": ", ".join(str(n) for n in sizes) or "–"},
        {"key": "random draws per N", "value": fmt_num(params.get("random_draws"))},
        {"key": "seed", "value": fmt_num(params.get("seed"))},
        {"key": "ranking", "value": f"{params.get('ranking', '–')}: {params.get('ranking_rule', '–')}"},
        {"key": "balanced accuracy", "value": params.get("balanced_accuracy", "–")},
        {"key": "intervals", "value": params.get("interval_rule", "–")},
        {"key": "small-sample rule", "value": params.get("small_sample_rule", "–")},
    ]
    small = entry.get("small_sample") or None
    rho, rho_iv = many.get("spearman"), many.get("spearman_interval")
    return {
        "layer": {"name": layer["name"], "alias": layer.get("alias"), "num_units": fmt_num(C)},
        "setup": setup,
        "messages": [m for m in list(abl.get("messages") or []) + list(entry.get("messages") or [])
                     if not small or m != small.get("warning")],
        "small_sample": None if not small else {"detail": small.get("detail") or small.get("warning"),
                                                "rule": params.get("small_sample_rule")},
        "class_links": [{"name": c["name"], "anchor": c["anchor"], "ba": c["balanced_accuracy"],
                         "images_rank": c["images_rank"], "images_eval": c["images_eval"],
                         "few_images": c["few_images"]} for c in classes],
        "summary_chart": _curve_chart(sizes, mean_series, mean_base, C) if shown_all else None,
        "summary_rows": summary_rows,
        "classes": classes,
        "hidden_classes": hidden,
        "important": important,
        "many_chart": _many_chart(ctx, scatter_rows, important),
        "many_rows": count_rows,
        "many_units": many_units,
        "spearman": "–" if rho is None else f"{rho:+.2f}",
        "spearman_interval": None if not rho_iv else f"{rho_iv[0]:+.2f} to {rho_iv[1]:+.2f}",
        "spearman_note": many.get("spearman_note"),
        "attack": attack_rows,
        "attack_params": {
            "epsilon": f"{ap['epsilon'] * 255:.3g}/255" if ap.get("epsilon") is not None else "–",
            "steps": fmt_num(ap.get("steps")),
            "step": f"{ap['step_size'] * 255:.3g}/255" if ap.get("step_size") is not None else "–",
        },
        "attack_error": attack_info.get("error"),
    }


def unit_dependents(ctx: ModelContext, layer: dict[str, Any], entry: dict[str, Any],
                    unit: dict[str, Any]) -> dict[str, Any]:
    """The unit page's section: the classes whose top units include ``unit``."""
    row = next((x for x in entry.get("units", []) if x.get("unit") == unit["unit"]), None)
    anchors = {c["name"]: f"class-{i}" for i, c in enumerate(entry.get("classes", [])[:MAX_CLASSES_SHOWN])}
    rows = []
    for c in (row or {}).get("classes", []):
        a = anchors.get(c["class"])
        counts = next((x for x in entry.get("classes", []) if x.get("name") == c["class"]), {})
        rows.append({"name": c["class"], "rank": c.get("rank"), "drop": _pts(c.get("drop")),
                     "interval": _interval_pts(c.get("drop_interval")),
                     "uncertain": _straddles(c.get("drop_interval")),
                     "images_rank": fmt_num(counts.get("images_rank")),
                     "images_eval": fmt_num(counts.get("images_eval")),
                     "drop_rank": _pts(c.get("drop_rank")), "expected": _pts(c.get("expected_drop_rank")),
                     "href": f"{PAGE}#{a}" if a else PAGE})
    many = entry.get("many_classes") or {}
    return {"href": PAGE, "classes": rows, "important": many.get("important", 5)}


ABLATION = LayerPageKind(
    file=PAGE, template="ablation.html", label="ablation", entry=layer_entry, view=ablation_page,
    unit_template="_ablation_unit.html", unit_section=unit_dependents,
)
