"""The published data sets by name: where each comes from, its checksum, where it is kept.

``--data broden1_224`` (or ``broden1_227``, or ``broden``, the 224 px one) and
``--ablation-data places_val`` name these; each is a zip that is downloaded into the cache
(``<cache>/broden/``, ``<cache>/places/``), checked, and unpacked atomically into a folder of
the same name. :func:`data_files` says which files a name needs (for ``dissect fetch`` and the
offline check), :func:`fetch_data` makes the folder present.

Facts from the reference code: Broden's archives are published at
``http://netdissect.csail.mit.edu/data/`` (the MD5 of ``broden1_224.zip`` is the one
NetDissect's release script checks; none is published for ``broden1_227.zip``, whose archive
is then checked by the zip's own CRCs when unpacked); the Wayback Machine keeps a copy of
both, the second place tried. Places365's validation images for the 2020 ablation, one
folder per class, are ``https://dissect.csail.mit.edu/datasets/places_val.zip``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..download import RemoteFile, fetch_file
from ..errors import DissectError


@dataclass(frozen=True)
class PublishedData:
    """A data set published as one zip."""

    name: str
    url: str
    folder: str                 # the cache subfolder it is kept in
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    expect: str | None = None   # a file the unpacked folder must hold
    size: int | None = None     # bytes of the zip, where known
    description: str = ""


def _wayback(url: str) -> str:
    return f"https://web.archive.org/web/2024id_/{url}"


_BRODEN = "http://netdissect.csail.mit.edu/data/{}.zip"
PUBLISHED_DATA = {
    "broden1_224": PublishedData(
        "broden1_224", _BRODEN.format("broden1_224"), "broden", md5="be13c292eaef3300da03f8d0e48eab1c",
        mirrors=(_wayback(_BRODEN.format("broden1_224")),), expect="index.csv",
        description="Broden 1.0 at 224 px (Bau et al. 2017), about 1 GB"),
    "broden1_227": PublishedData(
        "broden1_227", _BRODEN.format("broden1_227"), "broden",
        mirrors=(_wayback(_BRODEN.format("broden1_227")),), expect="index.csv",
        description="Broden 1.0 at 227 px (for AlexNet), about 1 GB"),
    "places_val": PublishedData(
        "places_val", "https://dissect.csail.mit.edu/datasets/places_val.zip", "places",
        md5="593bbc21590cf7c396faac2e600cd30c",
        description="Places365 validation images, one folder per class (the 2020 ablation)"),
}
DATA_ALIASES = {"broden": "broden1_224"}


def published_name(name: str) -> str | None:
    """The published data set ``name`` stands for (``broden`` -> ``broden1_224``), or None."""
    name = DATA_ALIASES.get(name, name)
    return name if name in PUBLISHED_DATA else None


def data_file(name: str, cache_dir: str | os.PathLike, url: str | None = None,
              md5: str | None = None, sha256: str | None = None, root: str | os.PathLike | None = None,
              flag: str = "--data FOLDER") -> RemoteFile:
    """The published data set ``name`` as a :class:`RemoteFile`: its zip and folder in
    ``cache_dir``'s subfolder for it (``broden/``, ``places/``), or in ``root`` when given;
    ``flag``: the option that takes the unpacked folder instead (``--ablation-data DIR`` for
    the ablation's images).

    ``url`` replaces the published address (another mirror, or ``file:///path/to.zip``);
    the published MD5 is then checked only when it is the published file's (``md5`` or
    ``sha256`` give the copy's own)."""
    key = published_name(name)
    if key is None:
        raise DissectError(f"unknown data set {name!r}; published: {', '.join(PUBLISHED_DATA)}")
    d = PUBLISHED_DATA[key]
    root = Path(root) if root is not None else Path(cache_dir) / d.folder
    rf = RemoteFile(what=f"data set {key}", url=d.url, dest=root / f"{key}.zip", md5=d.md5,
                    mirrors=d.mirrors, unpack_to=root / key, inner=key, expect=d.expect, size=d.size,
                    instead=f"or unzip it yourself and pass the folder as {flag}", flag=flag)
    if url is not None or md5 is not None or sha256 is not None:
        rf = dataclasses.replace(rf, url=url or d.url, mirrors=() if url else d.mirrors,
                                 md5=md5 if md5 or url else d.md5, sha256=sha256)
    return rf


#: The option that takes a folder in place of the published ablation set.
ABLATION_FLAG = "--ablation-data DIR"


def data_files(name: str | None, cache_dir: str | os.PathLike, flag: str = "--data FOLDER") -> list[RemoteFile]:
    """What ``--data NAME`` (or, with ``flag`` :data:`ABLATION_FLAG`, ``--ablation-data
    NAME``) needs from the network: the published set's zip, or nothing (``toyworld``, a folder)."""
    if name is None or published_name(str(name)) is None:
        return []
    return [data_file(str(name), cache_dir, flag=flag)]


def fetch_data(name: str, cache_dir: str | os.PathLike, url: str | None = None, md5: str | None = None,
               sha256: str | None = None, progress: bool = True, flag: str = "--data FOLDER") -> Path:
    """The folder of published data set ``name``, downloaded and unpacked if needed."""
    return fetch_file(data_file(name, cache_dir, url, md5, sha256, flag=flag), progress)


def labeled_data_path(name: str, cache_dir: str | os.PathLike) -> str:
    """What ``--ablation-data NAME`` reads: a published set's folder (``places_val``, fetched
    if needed), or ``name`` itself (a folder)."""
    return str(fetch_data(name, cache_dir, flag=ABLATION_FLAG)) if published_name(name) else name
