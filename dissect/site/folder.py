"""The site folder: the marker that makes a folder a dissect site, the check of ``--out``,
and the atomic swap of a freshly built site into place."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dissect.atomic import fresh_dir, is_temp_name
from dissect.errors import DissectError

#: The file at the root of every dissect site (it lists the site's models).
MARKER = ".dissect-site"
#: Top-level names the site owns; anything else in an existing site is kept as it is.
OWNED = {"index.html", "compare.html", "comparison.json", "assets", ".nojekyll", MARKER}


#: Free space below which a site is not started (plotly alone is about 4.6 MB; a site of the
#: toy models about 13 MB); more is asked for when a previous site must be replaced.
MIN_FREE_BYTES = 64 * 2 ** 20


def site_target(out: Path) -> Path:
    """The folder a site at ``out`` is written into: ``out`` itself, or the folder a symbolic
    link ``out`` points to (the link is kept; the site is swapped in at its target)."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else Path(os.path.abspath(out))


def check_out_dir(out: Path, *, writable: bool = False) -> None:
    """Refuse ``out`` unless it is new, an empty folder or a dissect site (one with a MARKER);
    it reads nothing else, so callers can check ``--out`` before any work is done.

    With ``writable`` (the check of a whole run, before its work) also: the current folder
    (or one holding it), a file on the way to ``out``, a folder that cannot be written, and a
    disk with less free space than a site needs (an estimate)."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise DissectError(f"--out {out} is a symbolic link to a folder that does not exist; "
                           "create its target or choose another folder")
    if out.exists():
        if not out.is_dir():
            raise DissectError(f"--out {out} is a file, not a folder; choose an empty or new folder")
        if not (out / MARKER).is_file() and any(not is_temp_name(p.name) for p in out.iterdir()):
            raise DissectError(f"--out {out} is not empty and is not a dissect site; choose an empty or new folder")
    if not writable:
        return
    target = site_target(out)
    cwd = Path(os.getcwd()).resolve()
    if target == cwd or target in cwd.parents:
        raise DissectError(f"--out {out} is the current folder (or holds it); the site replaces "
                           "its folder whole, so name a folder of its own, e.g. --out site")
    if target.parent == target:
        raise DissectError(f"--out {out} is the root of the file system; name a folder of its own")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DissectError(f"--out {out}: {parent} is a file, so no folder can be made under it; "
                           "choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DissectError(f"--out {out}: cannot write in {parent} (permission denied or read-only); "
                           "choose a folder you can write")
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    need = MIN_FREE_BYTES + (_tree_bytes(target) if target.is_dir() else 0)
    if free < need:
        raise DissectError(f"--out {out}: only {free / 2 ** 20:.0f} MB free on its disk; a site needs "
                           f"about {need / 2 ** 20:.0f} MB (free some space or choose another disk)")


def _tree_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


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
    """Put ``new`` at ``out``: move the old site away, move the new one in, delete the old.
    The caller holds :func:`dissect.atomic.folder_lock` of ``out``'s parent."""
    if not out.exists():
        os.rename(new, out)
        return
    old = fresh_dir(out.parent, out.name, "old")
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
