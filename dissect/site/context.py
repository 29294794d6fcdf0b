"""The shared page context: what ``base.html`` needs on every page, built in one place.

As mkdocs' ``get_context``: for each page the build asks here for the shared context (title,
relative root, breadcrumbs, footer with the tool version and provenance links, whether plotly
is loaded) and merges in the page's own view, which holds only that page's data.
:class:`ModelContext` holds what every page of one model needs to know about its results.
"""

from __future__ import annotations

from typing import Any

from dissect.site.charts import category_classes
from dissect.site.format import layer_title

#: The first breadcrumb of every page: the site index.
_ALL_MODELS = "All models"


def page_context(*, title: str, root: str, breadcrumbs: list[dict[str, Any]], footer: dict[str, Any],
                 plotly: bool) -> dict[str, Any]:
    """The keys of ``base.html``: ``root`` is the relative path to the site folder (``""``,
    ``"../"``, ``"../../"``), a breadcrumb without ``href`` is the current page, ``footer``
    holds ``version`` and ``links``, ``plotly`` loads the chart library."""
    return {"title": title, "root": root, "breadcrumbs": breadcrumbs, "footer": footer, "plotly": plotly}


def index_context(rows: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The shared context of the site index; ``rows`` are its models (``views.index_row``)."""
    return page_context(
        title="Network dissection",
        root="",
        breadcrumbs=[{"label": _ALL_MODELS, "href": None}],
        footer={"version": version,
                "links": [{"label": f"Provenance of {r['name']}", "href": r["provenance_href"]} for r in rows]},
        plotly=False,
    )


def compare_context(version: str) -> dict[str, Any]:
    """The shared context of the comparison page (``SITE/compare.html``)."""
    return page_context(
        title="Comparison · network dissection",
        root="",
        breadcrumbs=[{"label": _ALL_MODELS, "href": "index.html"}, {"label": "Comparison", "href": None}],
        footer={"version": version, "links": [{"label": "comparison.json", "href": "comparison.json"}]},
        plotly=True,
    )


class ModelContext:
    """What every page of one model needs: categories, colors, the threshold, the shared context."""

    def __init__(self, results: dict[str, Any], version: str, reproducible: bool) -> None:
        self.results = results
        self.version = version
        self.reproducible = reproducible
        probe = results.get("probe", {})
        cats = list(probe.get("categories") or [])
        for layer in results["layers"]:
            for unit in layer["units"]:
                for c in [unit.get("category")] + [t.get("category") for t in unit.get("top_concepts", [])]:
                    if c and c not in cats:
                        cats.append(c)
        self.categories = cats
        self.cat_index = category_classes(cats)
        self.params = results.get("params", {})
        self.iou_threshold = self.params.get("iou_threshold")
        self.quantile = self.params.get("quantile")

    def cat_class(self, category: str | None) -> str:
        """The CSS class of a category's color (``cat-none`` for no category)."""
        return "cat-none" if category is None else f"cat-{self.cat_index.get(category, 7)}"

    def _footer(self, model_root: str) -> dict[str, Any]:
        return {
            "version": self.version,
            "links": [
                {"label": f"Provenance of {self.results['model']['name']}", "href": f"{model_root}index.html#provenance"},
                {"label": "provenance.json", "href": f"{model_root}provenance.json"},
                {"label": "results.json", "href": f"{model_root}results.json"},
            ],
        }

    def overview_context(self, plotly: bool) -> dict[str, Any]:
        """The shared context of the model overview (``SITE/<model>/index.html``)."""
        name = self.results["model"]["name"]
        return page_context(
            title=f"{name} · network dissection",
            root="../",
            breadcrumbs=[{"label": _ALL_MODELS, "href": "../index.html"}, {"label": name, "href": None}],
            footer=self._footer(""),
            plotly=plotly,
        )

    def layer_context(self, layer: dict[str, Any], leaf: str | None = None, title: str | None = None,
                      plotly: bool = False) -> dict[str, Any]:
        """The shared context of a page in ``layer``'s folder: its grid (no ``leaf``), or the
        page named ``leaf`` in the breadcrumbs and, unless ``title`` is given, in the title."""
        model_name = self.results["model"]["name"]
        lname = layer_title(layer)
        crumbs = [{"label": _ALL_MODELS, "href": "../../index.html"},
                  {"label": model_name, "href": "../index.html"},
                  {"label": lname, "href": "index.html" if leaf else None}]
        if leaf:
            crumbs.append({"label": leaf, "href": None})
        head = f"{title or leaf} · " if leaf else ""
        return page_context(
            title=f"{head}{lname} · {model_name}",
            root="../../",
            breadcrumbs=crumbs,
            footer=self._footer("../"),
            plotly=plotly,
        )
