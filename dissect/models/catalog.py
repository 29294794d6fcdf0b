"""``dissect models``: every registered model with its weights' source, size and whether
they are already on this machine (no download, no checkpoint read; a model whose download
size is unknown is built on PyTorch's ``meta`` device, without memory, to count its
parameters)."""

from __future__ import annotations

import torch

from dissect.download import format_bytes
from dissect.models.registry import ModelSpec, get_model_spec, list_models
from dissect.models.weights import WEIGHTS_DIR, weights_files


FLOAT32_BYTES = 4   # a checkpoint's bytes per parameter (the published ones are float32)


def parameter_count(spec: ModelSpec) -> int | None:
    """The number of parameters of ``spec``'s architecture, built on the ``meta`` device
    (None where its builder cannot run there)."""
    try:
        with torch.device("meta"):
            module = spec.builder(spec.num_classes)
        return sum(p.numel() for p in module.parameters())
    except Exception:  # a builder may compute on tensors, which meta tensors cannot give back
        return None


def weights_status(name: str) -> tuple[str, str, str]:
    """``(source, size, cached)`` of model ``name``'s default weights: the source as
    ``--weights`` spells it, the download size where known (else the file's; else estimated
    as 4 bytes per parameter, ``≈233 MB (58,363,629 float32 parameters)``), and ``cached``,
    ``not cached`` or ``built in``."""
    spec = get_model_spec(name)
    source = spec.default_weights or "none"
    if source.startswith("builtin:"):
        path = WEIGHTS_DIR / f"{source.removeprefix('builtin:')}.safetensors"
        return source, format_bytes(path.stat().st_size) if path.is_file() else "missing", "built in"
    files = weights_files(spec, None)
    if not files:
        return source, "-", "-"
    rf = files[0]
    on_disk = rf.dest.is_file()
    size = rf.size or (rf.dest.stat().st_size if on_disk else None)
    if size:
        shown = format_bytes(size)
    else:   # no published size: estimated, in the same unit as the others
        count = parameter_count(spec)
        shown = f"≈{format_bytes(count * FLOAT32_BYTES)} ({count:,} float32 parameters)" if count else "size unknown"
    return source, shown, "cached" if on_disk else "not cached"


def model_rows() -> list[str]:
    """One line per registered model (the output of ``dissect models``)."""
    rows = []
    for name in list_models():
        spec = get_model_spec(name)
        default = spec.default_layer
        default = ", ".join(default) if isinstance(default, tuple) else (default or "-")
        source, size, cached = weights_status(name)
        rows.append(f"{name:22s} {spec.kind:10s} {spec.input_size:4d}px  layer {default:12s} "
                    f"{source}  [{size}, {cached}]")
    return rows
