"""What a layer page kind declares: one page in a layer's folder beside the unit grid.

A kind is shown for a layer when ``entry`` finds the layer's record in the results; then the
build copies its media, renders ``template`` with the layer's shared context plus ``view``,
the model overview links to it, and each unit page of the layer shows its section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dissect.site.context import ModelContext

#: A record of the results (a JSON object).
Record = dict[str, Any]


@dataclass(frozen=True)
class LayerPageKind:
    """One kind of layer page; a module defines one and ``kinds.LAYER_PAGE_KINDS`` lists it."""

    #: File name in the layer folder.
    file: str
    #: Template of the page (it extends ``base.html``).
    template: str
    #: Name of the page: its last breadcrumb, the head of its title, its link text on the overview.
    label: str
    #: ``entry(results, layer)``: the layer's record for this page, None when it has no page.
    entry: Callable[[Record, Record], Record | None]
    #: ``view(ctx, layer, entry)``: the page's own data (the shared context is added by the build).
    view: Callable[[ModelContext, Record, Record], Record]
    #: Template of the page's section on a unit page (it reads ``section.view``); None: no section.
    unit_template: str | None = None
    #: ``unit_section(ctx, layer, entry, unit)``: the data of that section.
    unit_section: Callable[[ModelContext, Record, Record, Record], Any] | None = None
    #: ``copy_media(entry, run_dir, layer_dir)``: copy the page's files into the layer folder
    #: and repoint the entry's paths at the copies (they are written to results.json).
    copy_media: Callable[[Record, Path, Path], None] | None = None
    #: Whether the page loads plotly.
    plotly: bool = True


#: The kinds that have a page for one layer, each with the layer's entry (``kinds.layer_pages``).
LayerPages = list[tuple[LayerPageKind, Record]]
