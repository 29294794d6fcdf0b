"""The compositional labels on the site (issue 23): each unit's formula for its card and page,
and a layer's chart of mean IoU by formula length with its table. Reads results.json's
``formula`` (per unit) and ``formulas`` (per layer) fields; absent fields show nothing."""

from __future__ import annotations

from typing import Any

from dissect.site.format import fmt_iou


def unit_formula(u: dict[str, Any], cat_class, strips: list | None = None) -> dict[str, Any] | None:
    """A unit's formula for its card and page, or None without one; ``strips``: the site's
    copies of its rows over the top images (:class:`~dissect.site.images.SiteImage`, in the
    order of ``formula.strips``)."""
    f = u.get("formula")
    if not f:
        return None
    exact = f.get("exact_length2")
    rows = f.get("strips") or []
    return {
        "strips": [{"part": r["part"], "src": img.src, "width": img.width, "height": img.height,
                    "alt": f"top images, the pixels of {f['text'] if r['part'].startswith('=') else r['part']} "
                           "highlighted and the unit's region outlined"}
                   for r, img in zip(rows, strips or [])],
        "text": f["text"],
        "iou": fmt_iou(f.get("iou")),
        "length": f.get("length"),
        "parts": [{"name": p["name"], "op": p.get("op"), "category": p.get("category"),
                   "cls": cat_class(p.get("category"))} for p in f.get("parts", [])],
        "by_length": [{"length": i + 1, "iou": fmt_iou(v)} for i, v in enumerate(f.get("iou_by_length", []))],
        "exact": None if not exact else {"text": exact["text"], "iou": fmt_iou(exact.get("iou"))},
    }


def formula_terms(u: dict[str, Any]) -> list[str]:
    """The concepts of a unit's formula (what the grid's search matches)."""
    return [p["name"] for p in (u.get("formula") or {}).get("parts", [])]


def length_chart(layer: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict | None]:
    """A layer's bar chart of the mean IoU of its units' best formulas by length, its table,
    and the beam-versus-exact check (None each without formulas)."""
    block = layer.get("formulas")
    if not block or not block.get("mean_iou_by_length"):
        return None, [], None
    means = block["mean_iou_by_length"]
    table = [{"length": i + 1, "iou": fmt_iou(v)} for i, v in enumerate(means)]
    fig = {
        "data": [{"type": "bar", "x": [str(r["length"]) for r in table], "y": means,
                  "marker": {"color": "#4a5b73"},
                  "hovertemplate": "length %{x}: mean IoU %{y:.4f}<extra></extra>"}],
        "layout": {"height": 300, "margin": {"l": 44, "r": 8, "t": 8, "b": 44},
                   "xaxis": {"title": {"text": "formula length (concepts)"}, "type": "category"},
                   "yaxis": {"title": {"text": "mean IoU"}, "rangemode": "tozero"},
                   "showlegend": False, "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"},
    }
    check = block.get("exact_check")
    return fig, table, check and {**check, "mean": fmt_iou(check.get("mean_missed_iou")),
                                  "max": fmt_iou(check.get("max_missed_iou"))}
