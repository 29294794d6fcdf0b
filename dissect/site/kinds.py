"""The list of layer page kinds, in the order the model overview links to them."""

from __future__ import annotations

from typing import Any

from dissect.site.ablation import ABLATION
from dissect.site.bases import FEATURES
from dissect.site.interventions import INTERVENTIONS
from dissect.site.pagekind import LayerPageKind, LayerPages

#: Every layer page kind the site knows; a new kind is one module, its template(s) and an entry here.
LAYER_PAGE_KINDS: tuple[LayerPageKind, ...] = (ABLATION, INTERVENTIONS, FEATURES)


def layer_pages(results: dict[str, Any], layer: dict[str, Any]) -> LayerPages:
    """The kinds that have a page for ``layer``, each with the layer's entry in ``results``."""
    found: LayerPages = []
    for kind in LAYER_PAGE_KINDS:
        entry = kind.entry(results, layer)
        if entry is not None:
            found.append((kind, entry))
    return found
