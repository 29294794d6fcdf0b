"""File-system-safe names for what the site and the cache write: model, layer and concept slugs."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slugify(name: object, fallback: str = "item") -> str:
    """``name`` with each run of characters other than letters, digits, ``.``, ``_`` and ``-``
    replaced by one ``-``, leading and trailing ``.`` and ``-`` removed; ``fallback`` when
    nothing is left."""
    return _UNSAFE.sub("-", str(name or "")).strip("-.") or fallback
