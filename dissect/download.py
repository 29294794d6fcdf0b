"""Downloads and archives: streamed, checksummed, and atomic.

A download is written to a temporary file next to its destination, hashed while it streams,
checked, and only then renamed into place, so a partial or corrupt file never sits at the
destination. ``file://`` URLs work too (urllib handles them), which is how the tests and
offline mirrors use this module.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from dissect.atomic import clean_leftovers, fresh_dir, temp_path
from dissect.errors import DissectError

CHUNK = 1 << 20
USER_AGENT = "dissect/0.1 (python-urllib)"


def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    hint: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``sha256`` (full hex digest) or ``hash_prefix`` (leading hex digits, as in torchvision's
    ``vgg16-397923af.pth``) is checked before the file is moved into place; on a mismatch
    the temporary file is deleted and :class:`DissectError` is raised. Network failures
    raise :class:`DissectError` too; ``hint`` says what the user should do instead.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if hint is None:
        hint = f"check the network connection, or fetch the file by hand and save it as {dest}"
    clean_leftovers(dest.parent, dest.stem)   # what killed downloads of this file left
    tmp = temp_path(dest)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        h = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(
                        total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=not progress, leave=False,
                    ) as bar:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                if total is not None and received != total:
                    raise DissectError(
                        f"could not download {url} (to {dest}): got {received} of {total} bytes; "
                        f"{hint}"
                    )
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                raise DissectError(f"could not download {url} (to {dest}): {_reason(exc)}; {hint}") from exc
        digest = h.hexdigest()
        expected = (sha256 or "").lower()
        prefix = (hash_prefix or "").lower()
        if (expected and digest != expected) or (prefix and not digest.startswith(prefix)):
            want = expected or f"{prefix}..."
            raise DissectError(
                f"checksum mismatch for {url}: expected sha256 {want}, got {digest}; "
                f"the download is corrupt or the file changed upstream, try again or {hint}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path of a zip member, or None if it would escape the target folder."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if not path.parts or path.is_absolute() or ":" in path.parts[0]:  # ":" -> a drive letter
        return None
    if any(part == ".." for part in path.parts):
        return None
    return path


def unzip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract ``zip_path`` into the new folder ``dest_dir`` (which must not exist yet).

    Members are extracted into a temporary folder next to ``dest_dir`` that is renamed into
    place at the end, so ``dest_dir`` is either complete or absent. Members with absolute
    paths or ``..`` components are refused (path traversal), as are symlinks.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if not zip_path.is_file():
        raise DissectError(f"cannot extract {zip_path}: file not found; download it first")
    if dest_dir.exists():
        raise DissectError(f"cannot extract {zip_path.name}: {dest_dir} already exists; remove it to extract again")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(dest_dir.parent, dest_dir.name, "tmp")
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                root = tmp.resolve()
                for info in zf.infolist():
                    rel = _safe_member_path(info.filename)
                    target = (root / rel).resolve() if rel is not None else None
                    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                    if target is None or is_link or (target != root and root not in target.parents):
                        raise DissectError(
                            f"refusing to extract {zip_path}: member {info.filename!r} would be written "
                            f"outside {dest_dir}; the archive is corrupt or malicious, delete it"
                        )
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise DissectError(f"cannot extract {zip_path}: not a valid zip file ({exc}); delete it and download again") from exc
        os.replace(tmp, dest_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir
