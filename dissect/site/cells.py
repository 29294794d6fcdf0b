"""Table cells that link to a unit's page, for the tables of a layer's other pages."""

from __future__ import annotations

from typing import Any

from dissect.site.context import ModelContext
from dissect.site.format import fmt_iou, unit_file, unit_label


def units_by_number(layer: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The unit records of ``layer`` by unit number."""
    return {u["unit"]: u for u in layer.get("units", [])}


def unit_cell(ctx: ModelContext, units: dict[int, dict[str, Any]], number: int) -> dict[str, Any]:
    """Unit ``number`` as a table cell: its page, its own label, category and best IoU."""
    u = units.get(number, {})
    cat = None if u.get("dead") else u.get("category")
    return {"unit": number, "href": unit_file(number), "label": unit_label(u), "category": cat,
            "cls": ctx.cat_class(cat), "iou": fmt_iou(u.get("iou")), "detector": bool(u.get("detector"))}
