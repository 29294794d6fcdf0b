"""Text shared by the pages: numbers, IoUs, percentages, and the names of layers and units.

Every number a page shows is formatted by these functions; ``–`` stands for a missing value.
"""

from __future__ import annotations

from typing import Any

from dissect.slugs import layer_title  # noqa: F401  (pages name layers as the console does)


def fmt_iou(x: float | None) -> str:
    """An IoU with three decimals."""
    return "–" if x is None else f"{x:.3f}"


def fmt_num(x: float | int | None) -> str:
    """A count with thousands separators, a flag as yes/no, any other number in 6 digits."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.6g}"


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (without the ``%`` sign) with ``digits`` decimals."""
    return "–" if x is None else f"{100 * x:.{digits}f}"


def fmt_shape(shape: list[int] | None) -> str:
    """An activation shape as ``C×h×w``."""
    return "×".join(str(s) for s in shape) if shape else "–"


def call_note(layer: dict[str, Any]) -> str:
    """For a layer that is one call of a module that runs several times per forward pass
    (``name#K``): ``call K of N per forward pass``; else empty."""
    calls, call = layer.get("calls"), layer.get("call")
    return f"call {call} of the {calls} calls of its module per forward pass" if call and (calls or 0) > 1 else ""


def unit_label(unit: dict[str, Any]) -> str:
    """A unit's concept label, ``invalid`` for a unit with non-finite activations, ``none``
    for a dead or unlabeled unit."""
    if unit.get("invalid"):
        return "invalid"
    return "none" if unit.get("dead") or not unit.get("label") else unit["label"]


def unit_file(unit: int) -> str:
    """The file name of a unit's page in its layer folder."""
    return f"unit-{unit:04d}.html"


def fmt_interval(interval: list[float] | None) -> str:
    """A best-IoU interval as ``0.151–0.372`` (three decimals), ``–`` without one."""
    return "–" if not interval else f"{interval[0]:.3f}–{interval[1]:.3f}"


def detector_badge(unit: dict[str, Any], threshold: float | None) -> dict[str, str] | None:
    """The detector badge of a unit: ``detector`` when its best-IoU interval lies above the
    threshold (or it has no interval), ``detector?`` when the interval reaches the threshold;
    None for a unit that is not a detector. ``title`` says why."""
    if not unit.get("detector"):
        return None
    interval, where = unit.get("iou_interval"), unit.get("detector_interval")
    t = fmt_num(threshold)
    if interval is None or where == "above":
        sure = f"; 95% interval {fmt_interval(interval)} above {t}" if interval else ""
        return {"text": "detector", "cls": "ok", "title": f"best IoU {fmt_iou(unit.get('iou'))} > {t}{sure}"}
    what = "straddles" if where == "straddles" else "lies below"
    return {"text": "detector?", "cls": "unsure",
            "title": f"best IoU {fmt_iou(unit.get('iou'))} > {t}, but its 95% interval "
                     f"{fmt_interval(interval)} {what} {t}"}
