"""What several test files share: a page's visible text, a brute-force IoU, and a user's
``package.module:callable`` file importable from the current folder."""

from __future__ import annotations

import importlib
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np


class VisibleText(HTMLParser):
    """The text a reader sees: every data node outside ``hidden`` tags (by default
    ``<script>`` and ``<style>``), each of those replaced by a space."""

    def __init__(self, hidden: tuple[str, ...] = ("script", "style")) -> None:
        super().__init__()
        self.hidden = set(hidden)
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.hidden

    def handle_endtag(self, tag):
        self.depth -= tag in self.hidden and self.depth > 0

    def handle_data(self, data):
        self.parts.append(" " if self.depth else data)


def visible_text(html: str | Path, hidden: tuple[str, ...] = ("script", "style"), sep: str = "") -> str:
    """The visible text of a page (``html``: its source, or its file), whitespace collapsed;
    ``sep`` goes between text nodes (" " to read table cells apart)."""
    parser = VisibleText(hidden)
    parser.feed(html.read_text(encoding="utf-8") if isinstance(html, Path) else html)
    return " ".join(sep.join(parser.parts).split())


def brute_iou(ds, masks: np.ndarray) -> np.ndarray:
    """IoU of one unit's masks ``masks`` ([images, sh, sw] bool) with every label, one image and
    one label at a time, with NetDissect's category-restricted union (docs/method.md)."""
    idx = ds.index
    prim = idx.primary_category_tensor().numpy()
    items = [ds[i] for i in range(len(ds))]
    out = np.zeros(idx.num_labels)
    for c in idx.labels:
        inter = union_unit = lab = 0
        for i, it in enumerate(items):
            mk = masks[i]
            pl = it["pixel_labels"].numpy()
            il = it["image_labels"].tolist()
            lc = (pl == c).any(0) | (c in il)
            present = set(np.unique(pl).tolist()) | set(il)
            if prim[c] in {prim[p] for p in present if p}:
                union_unit += mk.sum()
            lab += lc.sum()
            inter += (mk & lc).sum()
        den = union_unit + lab - inter
        out[c] = inter / den if den else 0.0
    return out


def user_module(tmp_path: Path, monkeypatch, name: str, source: str):
    """Write ``source`` as ``name.py`` in ``tmp_path`` and import it as a user's model file
    would be (``name:make`` resolvable from the current folder, which becomes ``tmp_path``)."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(name, None)
    return importlib.import_module(name)
