"""The cache: where it lives and how its entries are named."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$DISSECT_CACHE``, else ``$XDG_CACHE_HOME/dissect``, else ``~/.cache/dissect``."""
    if os.environ.get("DISSECT_CACHE"):
        return Path(os.environ["DISSECT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dissect"


def cache_key(*parts) -> str:
    """A short hash (24 hex digits) of ``parts``, as sorted JSON (other objects by ``str``)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]
