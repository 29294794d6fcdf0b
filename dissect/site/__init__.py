"""Rendering: write dissection results as a self-contained static website.

The public API is :func:`write_site` (see ``docs/results-schema.md`` for its input),
:data:`MARKER`, the file that makes a folder a dissect site, and :func:`check_out_dir`,
which refuses an output folder before any work is done.

How a page is made (gather, then render): :mod:`~dissect.site.build` builds, for every page,
its shared context once (:mod:`~dissect.site.context`: title, relative root, breadcrumbs,
footer, whether plotly loads) and merges in the page's own view, a plain dict of formatted
data (:mod:`~dissect.site.views` for the site index, model overview, layer grid and unit
pages); the template (``templates/``, each extending ``base.html``) only lays it out.

Page kinds: a layer's other pages (the classifier ablation, the generator interventions)
plug in. Each kind is one module that defines a :class:`~dissect.site.pagekind.LayerPageKind`:
its file and template, how it finds the layer's entry in the results, its view, the media it
copies, the link the model overview shows and the section (a template) it adds to each unit
page of the layer. To add a page: write the module and its template(s), then add the kind to
``LAYER_PAGE_KINDS`` in :mod:`~dissect.site.kinds`; the build, the overview and the unit pages
iterate over that list.

Shared pieces live in modules of their own: :mod:`~dissect.site.format` (numbers and names),
:mod:`~dissect.site.charts` (colors, plotly layouts), :mod:`~dissect.site.cells` (links to unit
pages), :mod:`~dissect.site.images` (strips and thumbnails), :mod:`~dissect.site.resources`
(templates and assets), :mod:`~dissect.site.folder` (the site folder and its atomic swap).
"""

from dissect.site.build import write_site
from dissect.site.folder import MARKER, check_out_dir

__all__ = ["MARKER", "check_out_dir", "write_site"]
