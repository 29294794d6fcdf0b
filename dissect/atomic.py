"""Files and folders written whole: temporary names, atomic renames, locks and leftovers.

Everything dissect writes where another run (or a reader) may look, a cache entry, a unit
image, a probe set, the site, is first written under a temporary name beside its final
place and then renamed into place (``os.replace``, atomic on one file system), so a reader
sees the old entry or the new one, never half of one. Temporary names are recognisable:

* ``.<name>.tmp-<pid>-<hex><suffix>`` for files (:func:`temp_path`),
* ``.<name>.<kind>-<pid>-<hex>`` for folders (:func:`fresh_dir`; kinds ``building``,
  ``old``, ``tmp``).

A run killed before its rename leaves such a name behind; :func:`clean_leftovers` removes
the ones whose process is gone (or every one, when the caller holds the folder's lock, so
no live run can be writing one). :func:`folder_lock` serializes the runs that write the
same folder (an advisory ``flock`` on the folder itself, so no lock file is left behind).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

try:  # POSIX; elsewhere the atomic renames still hold, without waiting
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Kinds of temporary folder; a name ``.<name>.<kind>-...`` is a dissect leftover.
TEMP_KINDS = ("building", "old", "tmp")
_TEMP = re.compile(r"^\..+\.(?:%s)-(?:(\d+)-)?[0-9a-zA-Z_]+" % "|".join(TEMP_KINDS))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of dissect's temporary names (never part of a result)."""
    return bool(_TEMP.match(name))


def _pid_of(name: str) -> int | None:
    m = _TEMP.match(name)
    return int(m.group(1)) if m and m.group(1) else None


def _alive(pid: int) -> bool:
    if sys.platform.startswith("win"):  # os.kill would end the process there
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that keeps its suffix (``.x.tmp-<pid>-<hex>.jpg``)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def atomic_save(path: Path, save: Callable[[Path], None]) -> Path:
    """Write ``path`` whole: ``save(tmp)`` writes a temporary file beside it, which is then
    renamed into place. On any error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """``path.write_bytes(data)``, written whole (:func:`atomic_save`)."""
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


def fresh_dir(parent: Path, name: str, kind: str) -> Path:
    """A new empty folder ``parent/.<name>.<kind>-<pid>-<hex>``."""
    if kind not in TEMP_KINDS:
        raise ValueError(f"kind must be one of {TEMP_KINDS}, not {kind!r}")
    while True:
        p = Path(parent) / f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def clean_leftovers(parent: Path, name: str | None = None, *, locked: bool = False) -> list[str]:
    """Remove the temporary files and folders in ``parent`` (of ``name`` only, if given)
    left by runs that were killed: those whose process is gone, or, with ``locked`` (the
    caller holds :func:`folder_lock` of ``parent``, which every writer of ``name`` takes),
    every one. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        pid = _pid_of(entry.name)
        if not locked and (pid is None or _alive(pid)):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (created if needed) while the block runs;
    a second run that asks for it waits. The lock goes with the process, even when killed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:   # a file system without locks (some network ones): renames still hold
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
