"""``dissect models``: every registered model with its weights' source, size and whether
they are already on this machine (no download, no checkpoint read; a model whose download
size is unknown is built on PyTorch's ``meta`` device, without memory, to count its
parameters). ``dissect layers MODEL``: a model's layers as one forward pass runs them."""

from __future__ import annotations

import torch

from dissect.download import format_bytes
from dissect.models.loading import LoadedModel, paper_name
from dissect.models.registry import ModelSpec, get_model_spec, list_models
from dissect.models.weights import WEIGHTS_DIR, weights_files
from dissect.slugs import layer_title


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


def layer_rows(loaded: LoadedModel) -> list[str]:
    """The table of ``dissect layers``: every module in the order one forward pass on a
    dummy input (an image of the model's size, or a latent) starts them, one row per call of
    a module that runs several times (named ``path#K``), then the modules that did not run;
    with its paper name, output shape (``-``: not one tensor, or did not run), units
    (channels), calls per forward pass, and ``*`` on the default layer(s)."""
    calls = sorted(loaded.layer_calls(), key=lambda c: c.started)
    ran = {c.path for c in calls}
    defaults = set(loaded.default_layers)
    rows = []
    for c in calls:
        units = c.map_shape[0] if c.map_shape else (c.shape[1] if c.shape and len(c.shape) > 1 else None)
        rows.append(("*" if c.name in defaults else "", c.name, paper_name(loaded, c.name) or "",
                     c.shape_text, "-" if units is None else str(units), str(c.calls)))
    for path, _ in loaded.module.named_modules(remove_duplicate=False):
        if path and path not in ran:
            rows.append(("", path, paper_name(loaded, path) or "", "-", "-", "0"))
    head = ("", "layer", "alias", "output", "units", "calls")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = (False, False, False, True, True, True)

    def line(r: tuple[str, ...]) -> str:
        return " ".join(v.rjust(w) if rt else v.ljust(w) for v, w, rt in zip(r, widths, right)).rstrip()

    size = "x".join(str(d) for d in loaded.dummy_input().shape[1:])
    multi = sorted({c.path for c in calls if c.calls > 1})
    out = [f"{loaded.name}: {len(rows)} rows, in the order one forward pass on a {size} "
           f"{'latent' if loaded.kind == 'generator' else 'input'} runs them", line(head)]
    out += [line(r) for r in rows]
    default = ", ".join(layer_title({"name": d, "alias": paper_name(loaded, d)}) for d in loaded.default_layers)
    out.append(f"* default layer: {default or 'none'}: {loaded.default_reason or 'the model default'}")
    if multi:
        out.append(f"{len(multi)} module(s) run more than once per forward pass ({', '.join(multi[:5])}"
                   f"{', ...' if len(multi) > 5 else ''}): name one call as NAME#K, e.g. "
                   f"--layer {multi[0]}#{max(c.call for c in calls if c.path == multi[0])}")
    return out
