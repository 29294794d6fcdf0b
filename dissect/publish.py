"""Publishing a finished site: measure it, and pack it into one reproducible archive.

    >>> from dissect.publish import site_size, format_size_report, zip_site
    >>> print(format_size_report(site_size("site")))     # doctest: +SKIP
    >>> zip_site("site", "supplement.zip")                # doctest: +SKIP

The archive is deterministic: entries in sorted order, one fixed timestamp and fixed
permissions, so the same site always zips to the same bytes.
"""

from __future__ import annotations

import os
import secrets
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from dissect.atomic import is_temp_name
from dissect.errors import DissectError

#: The timestamp of every archive entry (the earliest a zip file can hold).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class SiteSize:
    """How big a site folder is: total bytes, file count, and the largest files."""

    total_bytes: int
    num_files: int
    largest: list[tuple[str, int]] = field(default_factory=list)  # (posix path, bytes), largest first
    by_kind: dict[str, int] = field(default_factory=dict)         # bytes per file suffix ("" for none)

    @property
    def total_mb(self) -> float:
        return self.total_bytes / 1e6


def _site_files(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every regular file under ``root`` (symlinks are not followed; dissect's temporary files
    and folders, :func:`dissect.atomic.is_temp_name`, left out), sorted by posix path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_temp_name(d))
        for name in filenames:
            p = Path(dirpath, name)
            if is_temp_name(name) or p.is_symlink() or not p.is_file():
                continue
            if exclude is not None and p.resolve() == exclude:
                continue
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def site_size(root: str | os.PathLike[str], top: int = 5) -> SiteSize:
    """Measure the site at ``root``; ``top`` largest files are listed."""
    root = Path(root)
    if not root.is_dir():
        raise DissectError(f"no site at {root}")
    sizes = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in _site_files(root)]
    by_kind: dict[str, int] = {}
    for rel, n in sizes:
        suffix = Path(rel).suffix.lower()
        by_kind[suffix] = by_kind.get(suffix, 0) + n
    largest = sorted(sizes, key=lambda t: (-t[1], t[0]))[:top]
    return SiteSize(sum(n for _, n in sizes), len(sizes), largest, dict(sorted(by_kind.items())))


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n / 1e3:.1f} kB"


def format_size_report(size: SiteSize, zip_bytes: int | None = None) -> str:
    """A few lines for the end of a run: total, the largest files, and what to trim."""
    kinds = sorted(size.by_kind.items(), key=lambda t: (-t[1], t[0]))[:4]
    lines = [
        f"site size: {_mb(size.total_bytes)} in {size.num_files:,} files"
        + (f"; zip {_mb(zip_bytes)}" if zip_bytes is not None else "")
        + " (" + ", ".join(f"{k or 'other'} {_mb(n)}" for k, n in kinds) + ")",
        "largest files:",
    ]
    lines += [f"  {_mb(n):>10}  {rel}" for rel, n in size.largest]
    lines.append("smaller: --top-k (images per unit), --thumb-height (grid thumbnails), "
                 "--jpeg-quality (re-encoded images)")
    return "\n".join(lines)


def zip_site(root: str | os.PathLike[str], zip_path: str | os.PathLike[str], *,
             folder: str | None = None) -> Path:
    """Write the site at ``root`` into one deterministic zip archive at ``zip_path``.

    Entries sit under one top folder (``folder``, default: the site folder's name) so that
    unpacking makes a single folder. Dot files (``.nojekyll``) are included; the archive
    itself is left out when it is inside the site. Written to a temporary file beside
    ``zip_path`` and renamed at the end. Returns ``zip_path``.
    """
    root = Path(root)
    zip_path = Path(zip_path)
    if not root.is_dir():
        raise DissectError(f"no site at {root} to zip")
    if zip_path.is_dir():
        raise DissectError(f"--zip {zip_path} is a folder; give a file name such as site.zip")
    top = folder if folder is not None else (root.resolve().name or "site")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(f".{zip_path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for p in _site_files(root, exclude=zip_path.resolve()):
                rel = p.relative_to(root).as_posix()
                info = zipfile.ZipInfo(f"{top}/{rel}" if top else rel, date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so the permission bits below are read
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                # Images are already compressed: storing them again costs time, saves nothing.
                if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip"):
                    info.compress_type = zipfile.ZIP_STORED
                with open(p, "rb") as f:
                    zf.writestr(info, f.read(), compresslevel=6)
        os.replace(tmp, zip_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DissectError(f"cannot write --zip {zip_path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path
