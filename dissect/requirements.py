"""What a report needs from the network, before any work is done.

Each part of a report says which files it needs as :class:`~dissect.download.RemoteFile`
records (URL, checksum, destination): a model's weights
(:func:`dissect.models.weights.weights_files`), a published probe or ablation set
(:func:`dissect.data.catalog.data_files`) and a segmenter
(:func:`dissect.segmenters.registry.segmenter_files`). :func:`report_files` gathers them for
one report's options; ``dissect fetch`` downloads them (on a cluster's login node, say) and
``dissect report`` checks them first (:func:`dissect.download.ensure_files`), so that a run
without network fails in seconds with one line per missing file rather than midway.

The defaults a report applies are here too, so that the check and the report agree:
:func:`default_data_name` (a real classifier's probe set is Broden, a toy's the toy world)
and :func:`default_ablation_data` (the model's own, e.g. ``places_val`` for the Places365
networks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dissect.data.catalog import ABLATION_FLAG, data_files, published_name
from dissect.data.generated import segmenter_for
from dissect.data.segmented import default_segmenter, is_image_folder
from dissect.download import RemoteFile
from dissect.models.registry import ModelSpec, get_model_spec, is_registered, model_source
from dissect.models.weights import weights_files
from dissect.segmenters.registry import segmenter_files

def default_data_name(spec: ModelSpec | None, weights: str | None = None) -> str:
    """The probe set of a classifier when ``--data`` is not given: the spec's own
    (``broden1_224``, ``broden1_227`` for AlexNet-Places365), else Broden at 224 px for a
    registered model with downloaded weights or a prefixed name (``timm:``, ``hf:``,
    ``openclip:``) with its library's pretrained weights (``weights``: the loaded model's
    weights label, or the name), else the toy world (the toy models, random weights and a
    model you hold, ``package.module:callable``)."""
    if spec is None and weights and model_source(weights) is not None:
        return "broden1_224"
    if spec is not None and spec.default_data:
        return spec.default_data
    if spec is not None and spec.kind == "classifier" and spec.default_weights \
            and not spec.default_weights.startswith("builtin:"):
        return "broden1_224"
    return "toyworld"


def default_ablation_data(spec: ModelSpec | None) -> str | None:
    """The class-labeled images of the ablation when ``--ablation-data`` is not given: the
    spec's own (``places_val``). None: the probe set's own scene labels (the toy world, or a
    Broden folder of yours), but not a published Broden's, whose scenes are not an ImageNet
    model's classes (:func:`ablation_probe`)."""
    return spec.ablation_data if spec is not None and spec.ablation_data else None


def ablation_probe(data: str) -> bool:
    """Whether the probe set ``data`` can stand in for the ablation's labeled images."""
    return published_name(data) is None


def model_files(model: Any, opts: Any) -> list[RemoteFile]:
    """What one model of a report (``opts``: a ReportOptions) needs from the network."""
    name = model if isinstance(model, str) else None
    prefixed = model_source(name) if name is not None else None
    if prefixed is not None:   # timm:NAME, hf:ORG/NAME, openclip:ARCH/PRETRAINED
        source, rest = prefixed
        choices = getattr(opts, "weights_list", None) or [None]
        files = [f for w in choices for f in source.files(rest, w)]
        spec = None
    elif name is not None:   # a name: its weights are still to be read
        spec = get_model_spec(name) if is_registered(name) or ":" not in name else None
        choices = getattr(opts, "weights_list", None) or [None]   # each --weights, or the default
        files = [f for w in choices for f in weights_files(spec, w)]
    else:                  # a LoadedModel (or nn.Module) holds its weights already
        spec, files = getattr(model, "spec", None), []
    kind = spec.kind if spec is not None else getattr(model, "kind", None) or opts.kind or "classifier"
    if kind == "generator":
        # (a generator without a registration: its output size, hence its segmenter, is
        # known only once it runs; its segmenter downloads then)
        seg = opts.segmenter or (segmenter_for(spec, spec.input_size) if spec is not None else None)
        files += segmenter_files(seg) if seg and not opts.segmenter_weights else []
        return files
    data = opts.data or default_data_name(spec, name if prefixed and not getattr(opts, "weights_list", None) else None)
    files += data_files(data, opts.cache)
    seg = opts.segmenter
    if seg is None and data not in (None, "toyworld") and is_image_folder(Path(data).expanduser()):
        seg = default_segmenter(opts.input_size or (spec.input_size if spec is not None else 224))
    if seg and not opts.segmenter_weights:  # images labeled by a segmenter (--data DIR [--segmenter NAME])
        files += segmenter_files(seg)
    if opts.ablation is not False:
        ablation = opts.ablation_data if opts.ablation_data is not None else default_ablation_data(spec)
        files += data_files(os.fspath(ablation) if ablation is not None else None, opts.cache, ABLATION_FLAG)
    return files


def report_files(opts: Any) -> list[RemoteFile]:
    """Every file the report ``opts`` needs from the network (each once)."""
    files = [f for model in opts.models for f in model_files(model, opts)]
    labeler = getattr(opts, "labeler", None)
    files += labeler.files() if labeler is not None else []
    return list({(f.url, str(f.target)): f for f in files}.values())
