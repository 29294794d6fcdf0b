"""Where the computation runs: the ``--device`` option resolved to a torch device, and the
CPU cores this process may use."""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import DissectError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), or a torch device name such as ``cpu``,
    ``cuda`` or ``cuda:1``; a CUDA device asked for where there is none is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DissectError(f"--device {name!r} is not a device; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DissectError("--device cuda asked for, but no CUDA device is available; use --device auto or cpu")
    return dev


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers and
    ``taskset`` narrow; ``os.cpu_count()`` counts the whole machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(n: int):
    """Run with ``n`` intra-op CPU threads (restored after): a job of many small operations
    is all overhead, and one thread does it fastest, above all on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
