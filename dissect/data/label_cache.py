"""The label cache: a probe set's decoded label planes, kept on disk so that they are decoded once.

A dissection reads, for every probe image, its pixel-label PNGs (``R + 256 * G``, one per
category layer; :func:`dissect.data.broden.decode_label_png`), checks their numbers against
``label.csv`` and resizes them to the probe set's label size. Every later run on the same
probe set (another layer, model, snapshot, rotation) would decode the same PNGs again. The
first pass over a probe set instead writes the planes it decoded into one cache entry,
``<cache>/labels/labels-<key>.bin``, and later runs read them from it (a memory map: the
operating system pages in what a batch needs; memory does not grow with the probe set).

An entry is keyed like every cache entry (:func:`dissect.cache.cache_key`) by the probe
set's fingerprint: its tables' SHA-256, its files' identity (size and modification time, or
content with ``--hash-files``), the images used and the label size. Its layout::

    [0, 4096)       header: MAGIC, then JSON (format, key, dtype, slots, planes, height, width)
    crc             uint32 [slots]: CRC-32 of each image's planes
    present         uint8  [slots]: 1 when the image's planes are held (0: an unreadable image)
    data            dtype  [planes, height, width], from offset 64-aligned, images in order

``dtype`` is the narrowest unsigned type that holds every label number (uint8 up to 256
labels, as the toy world; uint16 up to 65,536, as Broden's ~1,200; int32 beyond), so an
entry takes ``planes x height x width x itemsize`` bytes: 2,000 toy-world images at 64 px
(five 64 x 64 planes each, uint8) 41 MB; Broden's 63,305 images (two to three 112 x 112
planes each, uint16) about 4-5 GB.

Trust nothing: an entry whose size, header or key does not match what the probe set asks
for is ignored and written again; each image's planes are checked against their CRC-32 when
read, and an entry with a damaged image is removed (that image is decoded from its PNGs, and
the next run writes the entry again). An entry is written whole under a temporary name and
renamed into place (:mod:`dissect.atomic`), so two runs filling it at once each write their
own and a reader never sees half of one. The writer is the main process (it copies each
batch's labels as the loader hands them over); under torchrun (several processes, each with
its shard) entries are read but not written.

``--label-cache`` (:class:`LabelCacheOptions`): ``auto`` (default) writes an entry that takes
at most ``AUTO_MAX_MB`` and a quarter of the cache disk's free space; ``MB`` at most that;
``off`` neither reads nor writes. An entry over its budget is not written (said once);
results are the same either way. Clear the cache with ``rm -r <cache>/labels``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import distributed
from ..atomic import clean_leftovers, temp_path
from ..cache import cache_key
from ..errors import DissectError

FORMAT = 1
MAGIC = b"DISSECT-LABEL-CACHE\n"
HEADER_BYTES = 4096
#: ``auto``: the largest entry written (and never more than a quarter of the free disk).
AUTO_MAX_MB = 8192
AUTO_DISK_FRACTION = 0.25
MODES = ("auto", "off")
_SAID: set[str] = set()   # messages said once per process


@dataclass(frozen=True)
class LabelCacheOptions:
    """``--label-cache``: ``mode`` ``auto`` (a budget of ``AUTO_MAX_MB`` and a quarter of the
    free disk), ``off`` (no entry read or written), or ``budget`` (``budget_mb``: an entry of
    at most that many MB is written; 0 reads existing entries and writes none)."""

    mode: str = "auto"          # auto | off | budget
    budget_mb: int = 0          # with mode "budget"

    @classmethod
    def parse(cls, value: "str | int | LabelCacheOptions | None") -> "LabelCacheOptions":
        """``auto``, ``off``, a whole number of MB (``>= 0``), or options as they are."""
        if isinstance(value, LabelCacheOptions):
            value.validate()
            return value
        if value is None:
            return cls()
        if isinstance(value, bool):
            return cls("auto" if value else "off")
        text = str(value).strip().lower()
        if text in MODES:
            return cls(text)
        try:
            mb = int(text)
        except ValueError:
            raise DissectError(f"--label-cache takes auto, off or a size in MB (a whole number >= 0), "
                               f"not {value!r}") from None
        opts = cls("budget", mb)
        opts.validate()
        return opts

    def validate(self) -> None:
        if self.mode not in (*MODES, "budget"):
            raise DissectError(f"the label cache's mode must be auto, off or budget, not {self.mode!r}")
        if self.mode == "budget" and (isinstance(self.budget_mb, bool) or not isinstance(self.budget_mb, int)
                                      or self.budget_mb < 0):
            raise DissectError(f"--label-cache takes auto, off or a size in MB (a whole number >= 0), "
                               f"not {self.budget_mb!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LabelCacheOptions":
        return cls.parse(args.label_cache)

    def budget_bytes(self, folder: Path) -> int:
        """The largest entry this run writes into ``folder`` (its disk's free space for ``auto``)."""
        if self.mode == "off":
            return 0
        if self.mode == "budget":
            return self.budget_mb * 2 ** 20
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            free = 0
        return int(min(AUTO_MAX_MB * 2 ** 20, free * AUTO_DISK_FRACTION))

    def describe(self) -> str:
        return {"auto": f"auto (up to {AUTO_MAX_MB} MB and a quarter of the free disk)",
                "off": "off"}.get(self.mode, f"{self.budget_mb} MB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's group of :class:`LabelCacheOptions`."""
    g = parser.add_argument_group("label cache", "the probe set's decoded label planes, kept on disk "
                                  "so that later runs (another layer, model, snapshot) do not decode "
                                  "the label PNGs again; results are the same with or without it")
    g.add_argument("--label-cache", default="auto", metavar="auto|off|MB",
                   help=f"auto (default): write the entry when it takes at most {AUTO_MAX_MB} MB and a "
                   "quarter of the free disk; MB: at most MB (0: read entries, write none); off: "
                   "neither. It takes label planes x label pixels x 1 byte (up to 256 labels; 2 up "
                   "to 65,536): 41 MB for 2,000 toy-world images at 64 px, about 4-5 GB for Broden "
                   "(63,305 images, 2-3 planes of 112 x 112 px each); in <cache>/labels, remove it to clear")


def storage_dtype(num_labels: int) -> np.dtype:
    """The narrowest type that holds every label number below ``num_labels``."""
    if num_labels <= 2 ** 8:
        return np.dtype(np.uint8)
    if num_labels <= 2 ** 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        print(f"dissect: label cache: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Layout:
    slots: int
    planes: int
    height: int
    width: int
    dtype: str

    @property
    def crc_at(self) -> int:
        return HEADER_BYTES

    @property
    def present_at(self) -> int:
        return self.crc_at + 4 * self.slots

    @property
    def data_at(self) -> int:
        return -(-(self.present_at + self.slots) // 64) * 64

    @property
    def total(self) -> int:
        return self.data_at + self.planes * self.height * self.width * np.dtype(self.dtype).itemsize


class LabelCache:
    """One entry of the label cache for the images ``records`` (record numbers of the index,
    in the dataset's order) of a probe set: read (:meth:`planes`) once it is complete, written
    (:meth:`store`) by the main process while it is not."""

    def __init__(self, path: Path, key: str, records: Sequence[int], counts: Sequence[int],
                 size: tuple[int, int], dtype: np.dtype, writing: bool):
        self.path = Path(path)
        self.key = key
        self.slot_of: dict[int, int] = {}
        for slot, r in enumerate(records):
            self.slot_of.setdefault(int(r), slot)
        self.offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=self.offsets[1:])
        self.layout = _Layout(len(records), int(self.offsets[-1]), int(size[0]), int(size[1]), np.dtype(dtype).str)
        self.writing = writing
        self._owner = os.getpid()
        self._mm = None            # the whole file, mapped (reader or writer)
        self._tmp: Path | None = None
        self._seen = np.zeros(len(records), dtype=bool) if writing else None
        self._cleanup = None
        self._broken = False       # damaged, abandoned, or (in a loader worker) not complete yet

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d.update(_mm=None, _cleanup=None, _seen=None, _tmp=None, writing=False)   # a worker only reads
        if self.writing:
            d["_broken"] = True    # not complete yet: nothing to read
        return d

    # ------------------------------------------------------------------ views
    def _views(self, mm: np.ndarray):
        lay = self.layout
        crc = mm[lay.crc_at:lay.present_at].view(np.uint32)
        present = mm[lay.present_at:lay.present_at + lay.slots]
        data = mm[lay.data_at:lay.total].view(np.dtype(lay.dtype)).reshape(lay.planes, lay.height, lay.width)
        return crc, present, data

    def header(self) -> bytes:
        lay = self.layout
        meta = {"format": FORMAT, "key": self.key, "dtype": lay.dtype, "slots": lay.slots,
                "planes": lay.planes, "height": lay.height, "width": lay.width}
        blob = MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n"
        return blob.ljust(HEADER_BYTES, b" ")

    def check(self) -> str | None:
        """Why the committed entry at :attr:`path` cannot be used (None: it can): its size,
        header or key differs from what this probe set asks for."""
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(HEADER_BYTES)
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
        if size != self.layout.total:
            return f"{size} bytes, not {self.layout.total} (truncated or of another probe set)"
        if head != self.header():
            return "its header does not match this probe set (a stale or damaged entry)"
        return None

    # ------------------------------------------------------------------ reading
    def planes(self, record: int) -> np.ndarray | None:
        """``[layers, height, width]`` label planes of ``record`` (storage dtype), or None when
        the entry does not hold them (not written yet, an unreadable image, a damaged entry)."""
        slot = self.slot_of.get(int(record))
        if slot is None or self.writing or self._broken:
            return None
        if self._mm is None:
            try:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.layout.total,))
            except (OSError, ValueError):
                self._broken = True
                return None
        crc, present, data = self._views(self._mm)
        if not present[slot]:
            return None
        out = np.array(data[self.offsets[slot]:self.offsets[slot + 1]])
        if zlib.crc32(out) != int(crc[slot]):
            self._damaged()
            return None
        return out

    def _damaged(self) -> None:
        """A CRC mismatch: stop reading this entry and remove it (the next run writes it again)."""
        self._broken = True
        with contextlib.suppress(OSError):
            if self.path.is_file():
                os.unlink(self.path)

    # ------------------------------------------------------------------ writing
    def store(self, records: Sequence[int], pixel_labels, bad_records: Sequence[int] = ()) -> None:
        """Keep the planes of a batch: ``pixel_labels[b, :layers]`` (``[B, L, H, W]``, padded)
        are those of ``records[b]``; ``bad_records`` were unreadable (no planes). Commits the
        entry once every image has been seen."""
        if not self.writing:
            return
        if self._mm is None:
            self._open_for_writing()
        crc, present, data = self._views(self._mm)
        dtype = np.dtype(self.layout.dtype)
        labels = None if pixel_labels is None else (
            pixel_labels.numpy() if hasattr(pixel_labels, "numpy") else np.asarray(pixel_labels))
        for b, r in enumerate(records):
            slot = self.slot_of.get(int(r))
            if slot is None or self._seen[slot]:
                continue
            lo, hi = self.offsets[slot], self.offsets[slot + 1]
            planes = np.ascontiguousarray(labels[b, :hi - lo], dtype=dtype)
            data[lo:hi] = planes
            crc[slot] = zlib.crc32(planes)
            present[slot] = 1
            self._seen[slot] = True
        for r in bad_records:
            slot = self.slot_of.get(int(r))
            if slot is not None:
                self._seen[slot] = True
        if self._seen.all():
            self._commit()

    def _open_for_writing(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(self.path.parent)   # temporary entries of killed runs
        self._tmp = temp_path(self.path)
        with open(self._tmp, "wb") as f:
            f.truncate(self.layout.total)   # sparse until written
        self._cleanup = weakref.finalize(self, _remove, self._tmp, self._owner)
        self._mm = np.memmap(self._tmp, dtype=np.uint8, mode="r+", shape=(self.layout.total,))

    def _commit(self) -> None:
        self._mm[:HEADER_BYTES] = np.frombuffer(self.header(), dtype=np.uint8)
        self._mm.flush()
        self._mm = None
        os.replace(self._tmp, self.path)    # whole, or not at all
        self._cleanup.detach()
        self.writing, self._seen, self._tmp = False, None, None

    def abandon(self) -> None:
        """Stop writing (the temporary file is removed); nothing is committed."""
        if self.writing:
            self._mm = None
            if self._cleanup is not None:
                self._cleanup()
            self.writing, self._seen = False, None
            self._broken = True


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:   # never from a forked loader worker
        with contextlib.suppress(OSError):
            os.unlink(path)


def attach_label_cache(dataset, cache_dir: Path, options: "LabelCacheOptions | str | int | None",
                       fingerprint: Sequence[str], *, writer: bool = True) -> LabelCache | None:
    """Give ``dataset`` (a :class:`~dissect.data.broden.BrodenDataset`) its label cache entry
    in ``cache_dir/labels``, keyed by ``fingerprint`` (the probe set's tables and files, e.g.
    ``index.sha256()`` and ``index.files_fingerprint()``): read when a valid entry is there,
    else written by this run's first pass over the labels (when ``writer`` and it fits the
    budget). Returns the entry (also ``dataset.label_cache``), or None (off, over budget)."""
    opts = LabelCacheOptions.parse(options)
    dataset.label_cache = None
    if opts.mode == "off":
        return None
    index = dataset.index
    records = list(dataset.indices)
    counts = [len(index.records[r].pixel_files) for r in records]
    size = tuple(dataset.label_size)
    dtype = storage_dtype(index.num_labels)
    key = cache_key("labels", FORMAT, list(fingerprint), size, index.num_labels, dtype.str,
                    cache_key(records))
    folder = Path(cache_dir) / "labels"
    clean_leftovers(folder)   # temporary entries of killed runs (a live run's are kept)
    entry = LabelCache(folder / f"labels-{key}.bin", key, records, counts, size, dtype, writing=False)
    if entry.path.is_file():
        why = entry.check()
        if why is None:
            dataset.label_cache = entry
            return entry
        _say_once(f"{entry.path} is {why}; writing it again")
    if not writer or distributed.world_size() > 1:   # a shard per process: read only
        return None
    budget = opts.budget_bytes(folder)
    if entry.layout.total > budget:
        _say_once(f"the labels of {index.root} would take {entry.layout.total / 2 ** 20:.0f} MB, over "
                  f"the budget of {budget / 2 ** 20:.0f} MB (--label-cache {opts.describe()}); "
                  "decoding the label PNGs as before (same results)")
        return None
    entry = LabelCache(entry.path, key, records, counts, size, dtype, writing=True)
    dataset.label_cache = entry
    return entry
