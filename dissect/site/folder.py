"""The site folder: the marker that makes a folder a dissect site, the check of ``--out``,
and the atomic swap of a freshly built site into place."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from dissect.errors import DissectError

#: The file at the root of every dissect site (it lists the site's models).
MARKER = ".dissect-site"
#: Top-level names the site owns; anything else in an existing site is kept as it is.
OWNED = {"index.html", "compare.html", "comparison.json", "assets", ".nojekyll", MARKER}


def check_out_dir(out: Path) -> None:
    """Refuse ``out`` unless it is new, an empty folder or a dissect site (one with a MARKER);
    it reads nothing else, so callers can check ``--out`` before any work is done."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DissectError(f"--out {out} is a file, not a folder; choose an empty or new folder")
    if not (out / MARKER).is_file() and any(out.iterdir()):
        raise DissectError(f"--out {out} is not empty and is not a dissect site; choose an empty or new folder")


def existing_models(out: Path) -> list[str]:
    """Model slugs of the dissect site at ``out`` ([] when ``out`` is new or empty)."""
    check_out_dir(out)
    marker = out / MARKER
    if not marker.is_file():
        return []
    try:
        slugs = json.loads(marker.read_text(encoding="utf-8")).get("models", [])
    except (ValueError, AttributeError):
        slugs = []
    found = {p.parent.name for p in out.glob("*/results.json")}
    return sorted(s for s in set(slugs) | found if isinstance(s, str) and (out / s / "results.json").is_file())


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder ``parent/<prefix><random hex>``."""
    while True:
        p = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a kept folder into the new site; hard links where the file system allows."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, copy_function=link_or_copy, symlinks=True)
    else:
        link_or_copy(str(src), str(dst))


def swap(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``: move the old site away, move the new one in, delete the old."""
    if not out.exists():
        os.rename(new, out)
        return
    old = fresh_dir(out.parent, f".{out.name}.old-")
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
