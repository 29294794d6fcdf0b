"""How much the device holds: batch and chunk sizes from its free memory, and the retry of
a batch in smaller parts when it runs out.

The one place where memory decides a size:

* :func:`free_bytes`: what a CUDA device can still give this process (``mem_get_info``'s
  free memory plus what PyTorch's caching allocator holds unused); None on the CPU, where
  the sizes stay what they always were;
* :func:`batch_size`: on CUDA the largest power of two (at least the batch asked for, at
  most :data:`MAX_BATCH`) whose items, at an estimated cost each, fit :data:`BATCH_SHARE` of
  the free memory; on the CPU the batch asked for;
* :func:`chunk_bytes`: the ablation's chunk of edited activations: on CUDA
  :data:`CHUNK_SHARE` of the free memory (at least the CPU's), on the CPU the configured MB;
* :func:`peak_bytes`: the peak memory a call takes on a CUDA device (to estimate an item's cost);
* :class:`Parts`: runs a job over rows ``[0, n)`` in parts; on an out-of-memory error
  (:data:`OOM_ERRORS`) it frees the cache, halves the part and goes on *from the part that
  failed* (the parts already done are not run again), and keeps the smaller size for the
  next jobs. A job given to it must change nothing until it has succeeded (compute first,
  then commit), so that a half-processed part is never counted twice; the results are the
  same whatever the parts, for statistics that are sums or exact merges.
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

#: Errors that mean "too big for the device now" (CUDA's; also PyTorch's generic one).
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)
#: The share of the free device memory a batch's items may take (the rest: the model, the
#: tallies, the next batch arriving while this one runs).
BATCH_SHARE = 0.5
#: Batches never grow beyond this many items (larger ones only add latency).
MAX_BATCH = 1024
#: The share of the free device memory one ablation chunk of edited activations may take
#: (the network's tail makes a few intermediate copies of it).
CHUNK_SHARE = 1 / 16


def free_bytes(device: torch.device | str) -> int | None:
    """The bytes a CUDA ``device`` can still give this process; None for another device."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(unused))


def batch_size(device: torch.device | str, requested: int, per_item_bytes: int | None,
               cap: int = MAX_BATCH) -> int:
    """The batch size to use on ``device``: ``requested`` on the CPU (or with no estimate);
    on CUDA the largest power of two ``<= cap`` whose items at ``per_item_bytes`` each fit
    :data:`BATCH_SHARE` of the free memory, never below ``requested`` (an OOM then splits
    the batch: :class:`Parts`)."""
    free = free_bytes(device)
    if free is None or not per_item_bytes or per_item_bytes <= 0:
        return requested
    fits = int(free * BATCH_SHARE // per_item_bytes)
    if fits < 1:
        return requested
    size = 2 ** int(math.floor(math.log2(fits)))
    return max(requested, min(size, max(cap, requested)))


def fits(device: torch.device | str, nbytes: int, share: float = BATCH_SHARE) -> bool:
    """Whether ``nbytes`` fit ``share`` of a CUDA ``device``'s free memory (False on the CPU:
    there nothing is to be kept "on the device")."""
    free = free_bytes(device)
    return free is not None and nbytes <= free * share


def chunk_bytes(device: torch.device | str, cpu_mb: int) -> int:
    """Bytes of one chunk of edited activations: ``cpu_mb`` MB on the CPU; on CUDA
    :data:`CHUNK_SHARE` of the free memory, and never less than ``cpu_mb`` MB."""
    base = cpu_mb * 2 ** 20
    free = free_bytes(device)
    return base if free is None else max(base, int(free * CHUNK_SHARE))


def peak_bytes(device: torch.device | str, fn: Callable[[], object]) -> int | None:
    """The peak bytes ``fn()`` allocates on a CUDA ``device`` beyond what was allocated
    before (``fn`` is run either way); None on another device."""
    device = torch.device(device)
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, int(torch.cuda.max_memory_allocated(device)) - before)


def release(device: torch.device | str | None = None) -> None:
    """Give the caching allocator's unused blocks back (after an out-of-memory error)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Parts:
    """Runs jobs over rows in parts small enough for the device (see the module doc).

    ``limit``: the most rows tried at once (None: all); lowered by every out-of-memory error
    and kept. ``splits``: how many times a part was halved (reported by the benchmark).
    """

    def __init__(self, limit: int | None = None, what: str = "batch"):
        self.limit = limit
        self.what = what
        self.splits = 0

    def run(self, n: int, job: Callable[[slice], T]) -> list[T]:
        """``[job(s) for s in parts of range(n)]``, the parts as large as ``limit`` allows and
        halved on an out-of-memory error, which is re-raised only for a part of one row."""
        out: list[T] = []
        start = 0
        while start < n:
            size = n - start if self.limit is None else min(self.limit, n - start)
            try:
                out.append(job(slice(start, start + size)))
            except OOM_ERRORS:
                if size <= 1:
                    raise
                release()
                self.limit = size // 2
                self.splits += 1
                continue
            start += size
        return out

    def cat(self, n: int, job: Callable[[slice], torch.Tensor], dim: int = 0) -> torch.Tensor:
        """:meth:`run` with the parts' tensors concatenated along ``dim``."""
        parts = self.run(n, job)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)
