"""Rendering: write dissection results as a self-contained static website.

The public API is :func:`write_site`; see ``docs/results-schema.md`` for its input.
"""

from dissect.site._build import MARKER, write_site

__all__ = ["MARKER", "write_site"]
