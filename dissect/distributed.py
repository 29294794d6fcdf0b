"""Several processes on one report: ``torchrun --nproc_per_node N dissect report ...``.

torchrun starts N processes (one node or many) and gives each its ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`init_from_env` joins them into one process group (gloo on the
CPU, NCCL on CUDA, where each process takes the GPU of its ``LOCAL_RANK``). Then:

* the dissection (:func:`dissect.experiments.dissection.dissect_layers`) gives each rank a
  contiguous shard of the probe set (:func:`shard`); every rank tallies its shard and the
  tallies are merged across ranks (:func:`merge_tallies`) in rank order, the same way on every
  rank: the IoU counts are sums (exact), the top-k images merge exactly (ties go to the lower
  image index), and the quantile's exact regime merges exactly (the top ``floor(q n) + 1``
  values of the union of the shards' tops are the top values of the whole set). So the
  labels, IoUs and thresholds equal a one-process run's;
* caches and the site are written by rank 0 only (:func:`is_main`); a step that writes a
  cache shared by all ranks runs on rank 0 first (:func:`main_first`).

A rank that fails (:func:`record_failure`, called by the command line) prints its one line
naming its rank, leaves that line in torchrun's store for the other ranks and in torchrun's
error file (torchrun's summary shows it as the root cause), and exits (status 2 for a
:class:`DissectError`). The others stop within seconds: one waiting in a collective gets
"connection closed" from gloo as soon as the failed process is gone, one still computing gets
torchrun's SIGTERM; either finds the failed rank's line in the store (:func:`peer_failure`)
and stops without a word of its own (:class:`PeerFailure`), or, when the failed rank left no
line (it was killed), says so in one line. Only rank 0 writes the site, and only after the
last collective, so a failed run leaves the previous site as it was.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from .errors import DissectError

T = TypeVar("T")
TIMEOUT = datetime.timedelta(minutes=30)
FAILED = "dissect/failed/"    # store key prefix: + rank -> that rank's one-line error
_store: dist.Store | None = None   # torchrun's key-value store (MASTER_ADDR:MASTER_PORT), a client


class PeerFailure(BaseException):
    """This rank stopped because another rank of the run failed. ``told``: that rank left its
    one-line error (it printed it, so this rank prints nothing). Not an :class:`Exception`:
    like KeyboardInterrupt it passes the handlers that turn a DissectError into part of the
    report (an experiment's ``error``), and it stops the run; cleanups (``finally``) run."""

    def __init__(self, message: str, told: bool):
        super().__init__(message)
        self.told = told


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that writes caches and the site (rank 0, or the only one)."""
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1);
    returns whether there is one. NCCL when the run is on CUDA, else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if device.startswith("cuda:"):
        raise DissectError(f"--device {device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                           "pass --device cuda (or auto)")
    cuda = device != "cpu" and torch.cuda.is_available()
    bind = {}
    if cuda:   # this rank's GPU, bound to the group: NCCL's collectives and barriers run there
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        bind["device_id"] = torch.device("cuda", local)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, **bind)
    except (RuntimeError, ValueError) as e:
        raise DissectError(f"cannot join the torchrun process group: {e}") from None
    _connect_store()
    return True


def _connect_store() -> None:
    """A client of the store the process group was set up through (torchrun's agent hosts
    it, so it outlives a failed rank): where a failing rank leaves its error for the others."""
    global _store
    try:
        _store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                               timeout=datetime.timedelta(seconds=10))
    except (KeyError, ValueError, RuntimeError):   # no store to reach: failures are still seen, unexplained
        _store = None


def record_failure(line: str) -> None:
    """On the rank that failed: leave ``line`` (its error, as printed) for the other ranks
    (:func:`peer_failure`) and for torchrun's summary (``TORCHELASTIC_ERROR_FILE``)."""
    if _store is not None and active():
        with contextlib.suppress(Exception):   # the store may be gone too; the line is printed anyway
            _store.set(FAILED + str(rank()), line)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)


def peer_failure() -> str | None:
    """The error line another rank of this run left when it failed (the lowest such rank),
    or None."""
    if _store is None or not active():
        return None
    with contextlib.suppress(Exception):
        for r in range(world_size()):
            if r != rank() and _store.check([FAILED + str(r)]):
                return _store.get(FAILED + str(r)).decode(errors="replace")
    return None


def _collective(op: Callable[..., T], *args) -> T:
    """``op(*args)``, a collective; a :class:`PeerFailure` when another rank is gone (gloo:
    "connection closed by peer" as soon as its process ended; NCCL: its error or timeout)."""
    try:
        return op(*args)
    except RuntimeError as e:   # torch.distributed.DistError and the backends' errors
        told = peer_failure()
        if told is not None:
            raise PeerFailure(f"stopped: another rank failed ({told})", told=True) from None
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeerFailure(f"another process of this run stopped without saying why (killed?), so this "
                          f"one stopped too ({cause[:300]})", told=False) from None


def shutdown() -> None:
    global _store
    _store = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, r: int | None = None, size: int | None = None) -> tuple[int, int]:
    """``[lo, hi)``: rank ``r``'s contiguous share of ``n`` items (the first ranks take one
    more when ``n`` does not divide)."""
    r = rank() if r is None else r
    size = world_size() if size is None else size
    base, extra = divmod(n, size)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def gather_objects(obj):
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` alone."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _collective(dist.all_gather_object, out, obj)
    return out


def merge_items(items: dict) -> dict:
    """Every rank's ``items`` (their keys disjoint: each rank made its share) as one dict,
    identical on every rank; ``items`` alone."""
    if not active():
        return items
    return {k: v for part in gather_objects(items) for k, v in part.items()}


def merge_tallies(tallies: dict[str, T], make: Callable[[str], T]) -> dict[str, T]:
    """Each tally (``state_dict``, ``load_state_dict``, ``merge``) merged over every rank in
    rank order, into ``make(key)`` (an empty tally like it): identical on every rank."""
    if not active():
        return tallies
    states = gather_objects({k: t.state_dict() for k, t in tallies.items()})
    out = {}
    for k in tallies:
        merged = make(k)
        for state in states:
            part = make(k)
            part.load_state_dict(state[k])
            merged.merge(part)
        out[k] = merged
    return out


def sum_over_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each (CPU) tensor summed over every rank, in rank order: identical on every rank."""
    if not active():
        return tensors
    parts = gather_objects([t.cpu() for t in tensors])
    return [sum((p[i] for p in parts[1:]), parts[0][i].clone()) for i in range(len(tensors))]


def barrier() -> None:
    if active():
        _collective(dist.barrier)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (a cache written once, then read)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def split_items(items: list[T]) -> list[T]:
    """This rank's share of ``items`` (every ``world_size``-th, starting at its rank)."""
    return items[rank()::world_size()]
