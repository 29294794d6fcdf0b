"""Colors and plotly layouts shared by the charts of every page.

Figures are plain dicts that the templates embed as JSON; plotly reads tags and entities in
trace text, so names go into figures HTML-escaped (by the views that build the traces).
"""

from __future__ import annotations

from typing import Any

#: Category colors: the CSS classes ``cat-0`` … ``cat-7`` and the chart colors agree.
PALETTE = ("#2f6fbd", "#d9730d", "#2e8b57", "#8e44ad", "#c0392b", "#a67c00", "#138d90", "#6c6f7d")
_KNOWN = ("object", "part", "scene", "material", "texture", "color")


def category_classes(categories: list[str]) -> dict[str, int]:
    """Palette index per category: Broden's categories keep fixed colors, others follow."""
    out: dict[str, int] = {}
    extra = len(_KNOWN)
    for name in categories:
        if name in out:
            continue
        if name in _KNOWN:
            out[name] = _KNOWN.index(name)
        else:
            out[name] = extra % len(PALETTE)
            extra += 1
    return out


def layout(xtitle: str, ytitle: str, **more: Any) -> dict[str, Any]:
    """The layout of a 300 px chart with titled axes and a legend on top; ``more`` overrides."""
    lay = {
        "height": 300,
        "margin": {"l": 52, "r": 8, "t": 8, "b": 44},
        "xaxis": {"title": {"text": xtitle}},
        "yaxis": {"title": {"text": ytitle}},
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
    }
    lay.update(more)
    return lay


def curve_layout(xtitle: str, ytitle: str, sizes: list[int], yaxis: dict[str, Any], hline: float | None,
                 color: str, dash: str) -> dict[str, Any]:
    """A curve over N units: a log x axis ticked at ``sizes``, the y axis titled and set by
    ``yaxis``, and a horizontal reference line at ``hline`` (none when it is None)."""
    shapes = [] if hline is None else [{
        "type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": hline, "y1": hline,
        "line": {"color": color, "width": 1, "dash": dash},
    }]
    return layout(xtitle, ytitle,
                  xaxis={"title": {"text": xtitle}, "type": "log", "tickvals": sizes,
                         "ticktext": [str(n) for n in sizes]},
                  yaxis={"title": {"text": ytitle}, **yaxis},
                  shapes=shapes)
