"""Where the computation runs: the ``--device`` option resolved to a torch device."""

from __future__ import annotations

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
