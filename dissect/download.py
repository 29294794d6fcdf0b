"""Downloads and archives: streamed, resumable, checksummed, and atomic.

A download is written to a partial file next to its destination (kept when the connection
breaks, and resumed with an HTTP Range request by the next try), checked, and only then
renamed into place, so a partial or corrupt file never sits at the destination. An archive
is unpacked into a temporary folder that is renamed into place whole. ``file://`` URLs work
too (urllib handles them), which is how the tests and offline mirrors use this module.

Every file that a model, a probe set or a segmenter needs from the network is described by a
:class:`RemoteFile` record (its URL, checksum and destination); each of them says which it
needs (``weights_files``, ``data_files``, ``segmenter_files``), so that ``dissect fetch``
downloads them all beforehand and a report checks them before any work
(:func:`ensure_files`): offline, it fails at once with one line per missing file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from tqdm.auto import tqdm

from dissect.atomic import folder_lock, fresh_dir
from dissect.errors import DissectError

CHUNK = 1 << 20
USER_AGENT = "dissect/0.1 (python-urllib)"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_size: int = CHUNK) -> str:
    """Hex digest of a file by ``algorithm`` (a :mod:`hashlib` name), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = CHUNK) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    return file_digest(path, "sha256", chunk_size)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def md5_file(path: str | os.PathLike, chunk_size: int = CHUNK) -> str:
    """MD5 hex digest of a file (the checksum Broden's and Places' archives are published with)."""
    return file_digest(path, "md5", chunk_size)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def verified_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered for this process while the file's size and
    modification time stay the same (a large checkpoint is hashed once per run)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def partial_path(dest: str | os.PathLike) -> Path:
    """Where an interrupted download of ``dest`` is kept, to be resumed by the next one."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.part"


def checksum_problem(path: Path, sha256: str | None = None, hash_prefix: str | None = None,
                     md5: str | None = None) -> str | None:
    """What is wrong with ``path``'s checksums (None: every given one matches)."""
    expected, prefix, md5 = (sha256 or "").lower(), (hash_prefix or "").lower(), (md5 or "").lower()
    if expected or prefix:
        digest = verified_sha256(path)
        if (expected and digest != expected) or (prefix and not digest.startswith(prefix)):
            return f"expected sha256 {expected or prefix + '...'}, got {digest}"
    if md5:
        got = md5_file(path)
        if got != md5:
            return f"expected md5 {md5}, got {got}"
    return None


def _fetch_into(url: str, part: Path, progress: bool, timeout: float, label: str) -> None:
    """Stream ``url`` into ``part``, continuing an earlier partial download (HTTP Range) when
    the server allows it; a server that answers the whole file starts it over."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT}
    if have and url.lower().startswith(("http:", "https:")):
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left past what we hold: it is complete
            return
        raise
    with response:
        resumed = have and getattr(response, "status", None) == 206
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=label, disable=not progress, leave=False,
        ) as bar:
            received = start
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"the connection closed after {received} of {total} bytes (run again to resume)")


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    hash_prefix: str | None = None,
    progress: bool = True,
    hint: str | None = None,
    timeout: float = 60.0,
    md5: str | None = None,
    mirrors: Sequence[str] = (),
) -> Path:
    """Download ``url`` (or, if it fails, each of ``mirrors`` in turn) to ``dest``; return ``dest``.

    The bytes go to :func:`partial_path` first: an interrupted download is kept there and
    the next call resumes it with an HTTP Range request. ``sha256`` (full hex digest),
    ``hash_prefix`` (leading hex digits, as in torchvision's ``vgg16-397923af.pth``) and
    ``md5`` are checked before the file is renamed into place; on a mismatch the partial file
    is deleted (the next call downloads afresh) and :class:`DissectError` is raised. Network
    failures raise :class:`DissectError` too; ``hint`` says what the user should do instead.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if hint is None:
        hint = f"check the network connection, or fetch the file by hand and save it as {dest}"
    part = partial_path(dest)
    failures = []
    for source in (url, *mirrors):
        try:
            _fetch_into(source, part, progress, timeout, dest.name)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()
            failures.append(f"{source}: {_reason(exc)}" if mirrors else _reason(exc))
            continue
        problem = checksum_problem(part, sha256, hash_prefix, md5)
        if problem:
            part.unlink(missing_ok=True)
            raise DissectError(
                f"checksum mismatch for {source}: {problem}; the download is corrupt or the file "
                f"changed upstream (deleted), try again or {hint}"
            )
        os.chmod(part, 0o644)
        os.replace(part, dest)
        return dest
    raise DissectError(f"could not download {url} (to {dest}): {'; '.join(failures)}; {hint}")


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


def unpack_archive(zip_path: str | os.PathLike, target: str | os.PathLike, inner: str | None = None,
                   expect: str | None = None) -> Path:
    """Unpack ``zip_path`` into the new folder ``target``, atomically (see :func:`unzip`).

    ``inner``: the archive's top folder (``broden1_224/``), whose contents become ``target``;
    an archive whose only top entry is another folder is unwrapped the same way, and one with
    several top entries is taken as it is. ``expect``: a file that must be in the result
    (``index.csv``), else nothing is left behind and a DissectError says so.
    """
    zip_path, target = Path(zip_path), Path(target)
    staging = target.parent / f".{target.name}.unpacked"
    if staging.exists():
        shutil.rmtree(staging)
    unzip(zip_path, staging)
    try:
        top = list(staging.iterdir())
        if inner and (staging / inner).is_dir():
            root = staging / inner
        elif len(top) == 1 and top[0].is_dir():
            root = top[0]
        else:
            root = staging
        if expect and not (root / expect).is_file():
            raise DissectError(f"{zip_path} holds no {(inner + '/') if inner else ''}{expect}: not the "
                               f"archive expected for {target.name}; delete it, or unzip it by hand")
        os.replace(root, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class RemoteFile:
    """One file a report needs from the network: where it comes from, how it is checked, and
    where it goes (an archive: also the folder it is unpacked into, which is what is used)."""

    what: str                       # "weights of vgg16-places365", "probe set broden1_224"
    url: str
    dest: Path                      # the downloaded file (the zip, for an archive)
    sha256: str | None = None
    hash_prefix: str | None = None  # torch hub's convention: name-<sha256 prefix>.ext
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    unpack_to: Path | None = None   # archives: the folder the zip is unpacked into
    inner: str | None = None        # archives: their top folder, if they have one
    expect: str | None = None       # archives: a file that must be in the unpacked folder
    size: int | None = None         # bytes, where known
    instead: str = ""               # what else the user can do: "or pass --weights FILE (a copy of x.pth)"
    flag: str = ""                  # the option that takes a copy of it instead: "--weights FILE"
    # a file that a library keeps in its own cache (the Hugging Face hub's): whether it is
    # there, and how that library downloads it (instead of dest and urllib)
    present: Callable[[], bool] | None = None
    fetcher: Callable[[bool], Path] | None = None
    offline_env: str = ""           # an environment variable that also means offline ("HF_HUB_OFFLINE")
    where: str = ""                 # where it goes, when not "save it as <dest>" (a library's cache)

    @property
    def target(self) -> Path:
        """The path that is used: the unpacked folder, or the file."""
        return self.unpack_to or self.dest

    def is_present(self) -> bool:
        """Whether the target is in place (a file: and its checksum matches)."""
        if self.present is not None:
            return self.present()
        if self.unpack_to is not None:
            return self.unpack_to.is_dir()
        return self.dest.is_file() and checksum_problem(self.dest, self.sha256, self.hash_prefix) is None

    def checksum(self) -> str:
        """The checksum a copy of the file must have, in full (``sha256sum`` or ``md5sum``
        can check a copy made by hand): the published SHA-256 or MD5. Where only a SHA-256
        prefix is published (torch hub's ``name-<prefix>.pth``), the full SHA-256 of the copy
        in place when there is one that matches the prefix, else the prefix, said to be one."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.hash_prefix:
            if self.dest.is_file() and checksum_problem(self.dest, hash_prefix=self.hash_prefix) is None:
                return f"sha256 {verified_sha256(self.dest)}"
            return (f"sha256 {self.hash_prefix}... – only these {len(self.hash_prefix)} hex digits are published, "
                    "in the file name; `dissect fetch --list` prints a downloaded copy's full SHA-256")
        if self.md5:
            return f"md5 {self.md5}"
        return "no published checksum"

    def missing_line(self) -> str:
        """One line: what is missing, its URL and checksum, and where to put it."""
        where = self.where or f"save it as {self.dest}"
        if self.unpack_to is not None:
            where += f" (it is unpacked into {self.unpack_to})"
        return f"{self.what}: {self.url} ({self.checksum()}); {where}" + (f", {self.instead}" if self.instead else "")


def fetch_file(rf: RemoteFile, progress: bool = True, timeout: float = 60.0, offline: bool | None = None) -> Path:
    """``rf``'s target, downloaded (resumed, checked) and unpacked if it is not in place yet.
    A file whose checksum does not match (a truncated or changed copy) is fetched again; a
    corrupt archive is deleted, so that the next try downloads it afresh. ``offline``
    (default: :func:`offline_mode`): only unpack an archive already downloaded."""
    if rf.is_present():
        return rf.target
    if rf.fetcher is not None:          # the library's own download, into its own cache
        return rf.fetcher(progress)
    with folder_lock(rf.dest.parent):   # runs sharing a cache fetch a file once; the others wait
        return _fetch_locked(rf, progress, timeout, offline)


def _fetch_locked(rf: RemoteFile, progress: bool, timeout: float, offline: bool | None) -> Path:
    if rf.is_present():
        return rf.target
    offline = offline_mode() if offline is None else offline
    problem = checksum_problem(rf.dest, rf.sha256, rf.hash_prefix, rf.md5) if rf.dest.is_file() else "missing"
    if problem:
        if offline:
            why = "" if problem == "missing" else f"the copy there fails its checksum ({problem}); "
            raise DissectError(f"{rf.missing_line()} [{why}offline (DISSECT_OFFLINE)]")
        hint = f"save a copy as {rf.dest}" + (f", {rf.instead}" if rf.instead else "")
        download(rf.url, rf.dest, sha256=rf.sha256, hash_prefix=rf.hash_prefix, md5=rf.md5,
                 mirrors=rf.mirrors, progress=progress, hint=hint, timeout=timeout)
    if rf.unpack_to is not None:
        try:
            unpack_archive(rf.dest, rf.unpack_to, rf.inner, rf.expect)
        except DissectError as exc:
            rf.dest.unlink(missing_ok=True)
            raise DissectError(f"{exc} (deleted {rf.dest}: run again to download it afresh)") from exc
    return rf.target


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline_mode() -> bool:
    """Whether ``DISSECT_OFFLINE`` asks never to use the network (1, true or yes)."""
    return _env_true("DISSECT_OFFLINE")


def _host(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a network URL; None for local ones (``file://``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ftp") or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port or {"http": 80, "https": 443, "ftp": 21}[parts.scheme]


def _reachable(host: tuple[str, int], timeout: float) -> bool:
    try:
        socket.create_connection(host, timeout=timeout).close()
        return True
    except OSError:
        return False


def reachable_hosts(urls: Sequence[str], timeout: float = 5.0) -> dict[tuple[str, int] | None, bool]:
    """Which hosts of ``urls`` accept a connection, tried at once (at most ``timeout`` s in all)."""
    hosts = sorted({h for h in map(_host, urls) if h is not None})
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(hosts)))) as pool:
        ok = dict(zip(hosts, pool.map(lambda h: _reachable(h, timeout), hosts)))
    ok[None] = True
    return ok


def ensure_files(files: Sequence[RemoteFile], progress: bool = True, offline: bool | None = None,
                 instead: str | None = None) -> list[Path]:
    """Make every file of ``files`` present (downloading what is missing) before any work.

    Hosts are tried first, all at once, so that without a network this fails within seconds:
    one :class:`DissectError` with one line per file that is missing and could not be fetched
    (what it is, its URL, its checksum, where to put it). ``offline`` (default:
    :func:`offline_mode`) never touches the network. ``instead``: what else the user can do
    (default: pass a copy with the option of each missing file, its ``flag``).
    """
    files = list({(f.url, str(f.target)): f for f in files}.values())
    missing = [f for f in files if not f.is_present()]
    offline = offline_mode() if offline is None else offline
    failed: list[tuple[RemoteFile, str]] = []
    if missing:
        off_env = {f.url: bool(f.offline_env) and _env_true(f.offline_env) for f in missing}
        ok = {} if offline else reachable_hosts([u for f in missing if not off_env[f.url]
                                                 for u in (f.url, *f.mirrors)])
        for f in missing:
            local = f.unpack_to is not None and f.dest.is_file()   # a zip to unpack: no network
            if (offline or off_env[f.url]) and not local:
                failed.append((f, f"offline ({f.offline_env if off_env[f.url] else 'DISSECT_OFFLINE'})"))
                continue
            if not local and not any(ok.get(_host(u), False) for u in (f.url, *f.mirrors)):
                failed.append((f, "cannot reach " + ", ".join(sorted({h[0] for u in (f.url, *f.mirrors) if (h := _host(u))}))))
                continue
            try:
                fetch_file(f, progress, offline=offline)
            except DissectError as exc:
                failed.append((f, str(exc)))
    if failed:
        if instead is None:
            flags = list(dict.fromkeys(f.flag for f, _ in failed if f.flag))
            instead = f"(or pass {', '.join(flags)})" if flags else ""
        lines = [f"{len(failed)} file(s) this run needs are missing and could not be downloaded; "
                 f"put each where it says{(' ' + instead) if instead else ''}:"]
        lines += [f"  {f.missing_line()} [{why}]" for f, why in failed]
        raise DissectError("\n".join(lines))
    return [f.target for f in files]


def format_bytes(n: int) -> str:
    """A size for people: ``528 MB``, ``1.1 GB``, ``12 kB`` (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"
