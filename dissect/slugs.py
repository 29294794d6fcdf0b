"""Names: file-system-safe slugs for what the site and the cache write (model, layer and
concept slugs), and a layer's name as the console and the pages show it."""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slugify(name: object, fallback: str = "item") -> str:
    """``name`` with each run of characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by one ``-``, leading and trailing ``.`` and ``-`` removed; ``fallback`` when
    nothing is left."""
    return _UNSAFE.sub("-", str(name or "")).strip("-.") or fallback


def layer_title(layer: dict[str, Any]) -> str:
    """A layer's name as pages and the console show it (``layer``: a dict with ``name``, the
    module path or ``path#K``, and ``alias``): the paper's name first and the path beside it,
    ``conv4_2 (features.18)``, or the path alone without an alias."""
    return f"{layer['alias']} ({layer['name']})" if layer.get("alias") else layer["name"]
