"""Images of the site: copy each unit's strip and make its grid thumbnail.

A strip is the top-k probe images of a unit, side by side, separated by a few pixels of
white gap, each with the unit's region highlighted. The thumbnail is the first few tiles
of the strip scaled to the grid's height (or the whole strip when no tiles are found).
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dissect.errors import DissectError

#: How many tiles of a strip a grid thumbnail shows.
THUMB_TILES = 4
#: A column whose darkest pixel is at least this bright counts as part of a white gap.
_WHITE = 232


@dataclass(frozen=True)
class SiteImage:
    """An image written into the site: its path relative to the layer folder and size."""

    src: str
    width: int
    height: int


def _tile_spans(img: Image.Image) -> list[tuple[int, int]]:
    """Column spans ``[start, stop)`` of the tiles of a strip, found at white gaps."""
    gray = np.asarray(img.convert("L"))
    white = gray.min(axis=0) >= _WHITE
    spans: list[tuple[int, int]] = []
    start = None
    for x, is_white in enumerate(white.tolist()):
        if not is_white and start is None:
            start = x
        elif is_white and start is not None:
            spans.append((start, x))
            start = None
    if start is not None:
        spans.append((start, len(white)))
    # A tile is at least a quarter as wide as the strip is high; anything narrower is a
    # sliver between two white-ish stretches inside one image, so merge it away.
    min_width = max(2, img.height // 4)
    merged: list[tuple[int, int]] = []
    for s in spans:
        if merged and (s[1] - s[0] < min_width or merged[-1][1] - merged[-1][0] < min_width):
            merged[-1] = (merged[-1][0], s[1])
        else:
            merged.append(s)
    return [s for s in merged if s[1] - s[0] >= min_width]


def _thumbnail(img: Image.Image, height: int) -> Image.Image:
    spans = _tile_spans(img)
    if spans:
        last = spans[min(THUMB_TILES, len(spans)) - 1]
        img = img.crop((spans[0][0], 0, last[1], img.height))
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)


def _save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    path.write_bytes(buf.getvalue())


def write_strip(
    source: Path, dest_dir: Path, stem: str, *, thumb_height: int, jpeg_quality: int
) -> tuple[SiteImage, SiteImage]:
    """Copy ``source`` to ``dest_dir/<stem>.jpg`` and write ``dest_dir/<stem>-thumb.jpg``.

    A JPEG strip is copied byte for byte; any other format is re-encoded as JPEG.
    Returns the full strip and the thumbnail, with paths relative to ``dest_dir.parent``.
    """
    full = dest_dir / f"{stem}.jpg"
    thumb = dest_dir / f"{stem}-thumb.jpg"
    try:
        with Image.open(source) as img:
            img.load()
            is_jpeg = img.format == "JPEG"
            rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DissectError(f"cannot read unit image {source}: {exc}") from exc
    # Writing errors (a full disk, a read-only folder) are the caller's, not the image's.
    if is_jpeg:
        shutil.copyfile(source, full)
    else:
        _save_jpeg(rgb, full, jpeg_quality)
    size = rgb.size
    small = _thumbnail(rgb, thumb_height)
    _save_jpeg(small, thumb, jpeg_quality)
    rel = dest_dir.name
    return (
        SiteImage(f"{rel}/{full.name}", size[0], size[1]),
        SiteImage(f"{rel}/{thumb.name}", small.width, small.height),
    )


def copy_image(source: Path, dest_dir: Path, name: str) -> SiteImage:
    """Copy the JPEG ``source`` to ``dest_dir/name`` byte for byte; its path relative to
    ``dest_dir.parent`` and its size."""
    try:
        with Image.open(source) as img:
            size = img.size
    except (OSError, ValueError) as exc:
        raise DissectError(f"cannot read image {source}: {exc}") from exc
    shutil.copyfile(source, dest_dir / name)
    return SiteImage(f"{dest_dir.name}/{name}", size[0], size[1])
