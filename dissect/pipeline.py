"""One report: validate the options, load each model, dispatch by kind, write the site.

``dissect report`` and :func:`dissect.report` both come here. Everything a report depends on
travels in one typed object, :class:`ReportOptions`, built once from the command line or
the keywords of :func:`report`. Per model:

* a **classifier** is dissected on its probe set (:func:`dissect.data.probe.open_probe_data`),
  then ablated class by class (:func:`dissect.experiments.ablation.ablation_for_report`);
* a **generator** is dissected on its own samples labeled by a segmenter
  (:func:`dissect.data.generated.open_generated_probe`), then intervened on
  (:func:`dissect.experiments.generator.generator_for_report`).

The results of every model go to :func:`dissect.site.write_site`, which builds the site in a
temporary folder and swaps it in.

    import dissect
    dissect.report(model="toy", out="site")                            # by name
    dissect.report(model=my_module, layers=["layer4"], data="path/to/broden",
                   input_size=224, out="site")                         # a model you hold
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dissect import distributed
from dissect.bases.options import BasisOptions
from dissect.bases.ablation import report_step as basis_report_step
from dissect.bases.interventions import generator_step as basis_generator_step
from dissect.bases.report import bases_for_report, check_bases
from dissect.cache import cache_key, default_cache_dir
from dissect.data.catalog import labeled_data_path
from dissect.data.generated import open_generated_probe
from dissect.data.label_cache import LabelCacheOptions, attach_label_cache
from dissect.data.probe import open_probe_data
from dissect.devices import resolve_device
from dissect.download import ensure_files
from dissect.errors import DissectError
from dissect.experiments.ablation import AblationConfig, ablation_for_report
from dissect.experiments.compare_runs import members_for_report, probe_subset, rotation_for_report
from dissect.experiments.comparison import COMPARISON_VERSION
from dissect.experiments.dissection import MASK_RULE, DissectConfig, dissect_layers, layer_line, summarize_layer
from dissect.experiments.generator import GeneratorExperimentConfig, generator_for_report
from dissect.experiments.rotation import ROTATION_SEED
from dissect.experiments.strips import render_unit_strips
from dissect.formulas.run import add_formulas, formula_lengths
from dissect.formulas.search import FormulaOptions
from dissect.hooks import split_call
from dissect.labelers.clip import LabelerOptions, clip_labels_for_report
from dissect.models.loading import LoadedModel, from_module, load_model, paper_name, resolve_layer, with_class_names
from dissect.models.series import expand_weights, steps_from_names, toy_comparison_weights, weights_section_name
from dissect.publish import format_size_report, site_size, zip_site
from dissect.requirements import ablation_probe, default_ablation_data, default_data_name, report_files
from dissect.segmenters.registry import list_segmenters, unknown_segmenter
from dissect.site.build import write_site
from dissect.site.folder import check_out_dir
from dissect.slugs import layer_title, slugify
from dissect.stats.intervals import SAMPLE_WARNING
from dissect.version import __version__

DEFAULT_MODELS = ("toy", "toygan")
GENERATOR_QUANTILE = 0.01       # METHOD.md section 3: the 2020 default for generators
GENERATOR_QUANTILE_SPACE = "upsampled"
#: Images of the probe set on which the toy classifier's shipped snapshots and fine-tuned
#: weights are compared (the first ones; the default report stays fast).
SHIPPED_COMPARISON_IMAGES = 400


@dataclass(frozen=True)
class ReportOptions:
    """Everything one report depends on; the keywords of :func:`report` are these fields.

    Models: ``model`` is one model or a sequence of them, each a registered name,
    ``package.module:callable``, an ``nn.Module`` or a :class:`LoadedModel`; ``weights``,
    ``layers``, ``input_size``, ``kind`` and ``z_dim`` apply to a single model.

    Comparisons (``docs/compare.md``): ``weights`` may be a list (globs expanded), each
    weights a section of the site named by its file, with training steps from
    ``snapshot_steps`` or read from the file names; ``rotate`` (amounts from 0 to 1) runs the
    rotation experiment on ``rotate_layer`` (default: the deepest dissected layer) with the
    random rotation of ``rotate_seed``; ``shipped_comparisons`` adds, for the toy classifier
    with its own weights, its shipped training snapshots and fine-tuned weights.

    Feature bases (``docs/bases.md``): ``bases`` (a :class:`BasisOptions`; default: an SAE
    of the toy classifier's last layer when it is reported with its own weights and default
    layers, none otherwise) dissects learned directions of the deepest dissected layer
    beside its units.

    Probe set (classifiers): ``data`` (``toyworld``, ``broden1_224``, ``broden1_227``, a
    Broden folder, or a folder of images labeled by ``segmenter``; default: the model's own,
    Broden for a real classifier, the toy world for the toys), ``data_size``, ``data_seed``
    and ``split``. A generator's probe set is ``data_size``
    latents (default 1000) of seed ``data_seed`` labeled by ``segmenter``.
    ``segmenter_weights``: the segmenter's weights (a file, or a folder for ``upp``).

    Dissection: ``config`` (a :class:`DissectConfig`; without it, its defaults, and for
    generators the 2020 paper's quantile 0.01 over upsampled maps unless
    ``generator_quantile`` / ``generator_quantile_space`` say otherwise).

    ``class_names``: the classifier's class names, a list or a file (text, one per line, or
    JSON: a list or a dict of index to name), checked against its number of outputs.

    Formulas: ``formulas`` (a :class:`FormulaOptions`; default: single concepts, except
    formulas of up to 3 concepts for the built-in toy classifier's last layer).

    Experiments: ``ablation`` (True, False or an :class:`AblationConfig`) on
    ``ablation_data`` (a class-per-folder directory, a Broden folder or ``places_val``;
    default: the model's own, e.g. ``places_val``, else the probe set's scene labels, none
    for Broden) for classifiers;
    ``interventions`` (True, False or a :class:`GeneratorExperimentConfig`) for generators.
    Problems with a classifier's ablation data are reported on its page, never fatal.

    Site: ``out``, ``reproducible`` (no run date: identical inputs give identical files),
    ``notes`` (a Markdown file shown on the model pages), ``zip_path`` (also write the site
    as one archive), ``thumb_height`` and ``jpeg_quality``.

    Label cache (:mod:`dissect.data.label_cache`): ``label_cache``, ``"auto"`` (default),
    ``"off"``, a budget in MB, or a :class:`LabelCacheOptions`.

    Run: ``cache_dir`` (default :func:`default_cache_dir`), ``force`` (recompute),
    ``hash_files`` (cache keys by the probe files' content hash, not their size and time),
    ``progress`` (bars and the closing summary), ``command`` (recorded as provenance).
    """

    model: Any = DEFAULT_MODELS
    weights: str | Sequence[str] | None = None
    snapshot_steps: Sequence[int] | None = None
    rotate: Sequence[float] = ()
    rotate_layer: str | None = None
    rotate_seed: int = ROTATION_SEED
    shipped_comparisons: bool = True
    bases: BasisOptions | None = None
    layers: Sequence[str] = ()
    input_size: int | None = None
    kind: str | None = None
    z_dim: int | None = None
    data: str | None = None  # None: the model's own (requirements.default_data_name)
    data_size: int | None = None
    data_seed: int = 1
    split: str | None = None
    config: DissectConfig | None = None
    formulas: FormulaOptions = FormulaOptions()
    ablation: bool | AblationConfig = True
    class_names: str | os.PathLike | Sequence[str] | None = None  # a list, or a text/JSON file of names
    ablation_data: str | os.PathLike | None = None
    segmenter: str | None = None
    segmenter_weights: str | None = None
    generator_quantile: float | None = None
    generator_quantile_space: str | None = None
    interventions: bool | GeneratorExperimentConfig = True
    out: str | os.PathLike = "site"
    reproducible: bool = False
    notes: str | os.PathLike | None = None
    zip_path: str | os.PathLike | None = None
    thumb_height: int = 48
    jpeg_quality: int = 85
    cache_dir: str | os.PathLike | None = None
    force: bool = False
    hash_files: bool = False
    label_cache: LabelCacheOptions | str | int = "auto"
    progress: bool = True
    command: str | None = None
    labeler: LabelerOptions = LabelerOptions()

    @property
    def models(self) -> list[Any]:
        return list(self.model) if isinstance(self.model, (list, tuple)) else [self.model]

    @property
    def dissect_config(self) -> DissectConfig:
        return self.config or DissectConfig()

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def validate(self) -> None:
        """Every check that can be made before any work: one-line :class:`DissectError`."""
        self.dissect_config.validate()
        self.labeler.validate()
        self.basis_options.validate()
        self.formulas.validate()
        LabelCacheOptions.parse(self.label_cache)
        if not (isinstance(self.thumb_height, int) and 8 <= self.thumb_height <= 1024):
            raise DissectError(f"thumb_height must be an integer from 8 to 1024 px, got {self.thumb_height!r}")
        if not (isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 95):
            raise DissectError(f"jpeg_quality must be an integer from 1 to 95, got {self.jpeg_quality!r}")
        if self.zip_path is not None and Path(self.zip_path).is_dir():
            raise DissectError(f"--zip {self.zip_path} is a folder; give a file name such as site.zip")
        check_out_dir(Path(self.out), writable=True)
        if self.segmenter and ":" not in self.segmenter and self.segmenter not in list_segmenters():
            raise unknown_segmenter(self.segmenter)
        models = self.models
        if not models:
            raise DissectError("no model to report on; pass --model NAME")
        if len(models) > 1 and (self.layers or self.weights is not None or self.rotate or self.class_names is not None):
            raise DissectError("--layer, --weights, --rotate and --class-names apply to one model: add --model NAME "
                               f"(this run reports {len(models)} models: {', '.join(map(str, models))})")
        weights = self.weights_list
        if self.snapshot_steps is not None and len(self.snapshot_steps) != len(weights):
            raise DissectError(f"--snapshot-steps gives {len(self.snapshot_steps)} steps for "
                               f"{len(weights)} --weights; give one step per weights file")
        if any(not 0.0 <= t <= 1.0 for t in self.rotate):
            raise DissectError(f"--rotate amounts go from 0 (no rotation) to 1 (a random rotation), got {list(self.rotate)}")

    @property
    def basis_options(self) -> BasisOptions:
        return self.bases or BasisOptions()

    @property
    def weights_list(self) -> list[str]:
        """The ``weights`` choices, globs expanded ([] for the model's own)."""
        if self.weights is None:
            return []
        return expand_weights([self.weights] if isinstance(self.weights, str) else list(self.weights))

    def load_all(self, model: Any) -> list[tuple[LoadedModel, dict | None]]:
        """``model`` loaded once per weights, each with its results' ``comparison`` section
        (None for a single model)."""
        weights = self.weights_list
        if len(weights) < 2:
            return [(self.load(model, weights[0] if weights else None), None)]
        steps = list(self.snapshot_steps) if self.snapshot_steps is not None else steps_from_names(weights)
        out = []
        for i, w in enumerate(weights):
            loaded = dataclasses.replace(self.load(model, w), name=weights_section_name(w))
            step = steps[i] if steps else None
            out.append((loaded, {"version": COMPARISON_VERSION, "group": str(model), "order": i, "step": step,
                                 "role": "snapshot" if step is not None else "weights"}))
        return out

    def read_notes(self) -> str | None:
        if self.notes is None:
            return None
        try:
            return Path(self.notes).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DissectError(f"cannot read --notes {self.notes}: {e.strerror or e}") from None

    def config_for(self, kind: str) -> DissectConfig:
        """The dissection parameters of a model of ``kind``: a generator takes the 2020
        quantile and space unless the options set them (or a config changed them)."""
        config = self.dissect_config
        if kind != "generator":
            return config
        default, given = DissectConfig(), self.config is not None
        quantile = self.generator_quantile if self.generator_quantile is not None else (
            config.quantile if given and config.quantile != default.quantile else GENERATOR_QUANTILE)
        space = self.generator_quantile_space or (
            config.quantile_space if given and config.quantile_space != default.quantile_space
            else GENERATOR_QUANTILE_SPACE)
        return dataclasses.replace(config, quantile=quantile, quantile_space=space)

    def load(self, model: Any, weights: str | None = None) -> LoadedModel:
        """``model`` as a :class:`LoadedModel` (loading it by name if needed, with ``weights``)."""
        if isinstance(model, LoadedModel):
            loaded = model
        elif isinstance(model, nn.Module):
            loaded = from_module(model, name=type(model).__name__, input_size=self.input_size or 224,
                                 kind=self.kind or "classifier", z_dim=self.z_dim)
        else:
            loaded = load_model(str(model), weights=weights, input_size=self.input_size,
                                progress=self.progress, kind=self.kind, z_dim=self.z_dim)
        return loaded if self.class_names is None else with_class_names(loaded, self.class_names)


def report(model: Any = DEFAULT_MODELS, **options: Any) -> Path:
    """Dissect ``model`` (one, or a list of models for one site) and write (or update) the
    site at ``out``; returns the path of its ``index.html``. The keywords are the fields of
    :class:`ReportOptions`. The default reports both toy models."""
    return run_report(ReportOptions(model=model, **options))


def run_report(opts: ReportOptions) -> Path:
    """Run the report that ``opts`` describes (see :func:`report`)."""
    t0 = time.time()
    opts.validate()
    distributed.init_from_env(opts.dissect_config.device)
    notes_md = opts.read_notes()
    ensure_files(report_files(opts), opts.progress)  # offline: fail before any work
    loaded_all = [pair for m in opts.models for pair in opts.load_all(m)]
    slugs = [slugify(m.name, "model") for m, _ in loaded_all]
    if len(set(slugs)) != len(slugs):
        raise DissectError(f"two models share the name {slugs}; report them one at a time")
    runs, summaries = [], []
    for loaded, comparison in loaded_all:
        t_model = time.time()
        run = _generator_run if loaded.kind == "generator" else _classifier_run
        results, run_dir = run(loaded, opts, comparison)
        seconds = time.time() - t_model
        results["provenance"]["seconds"] = None if opts.reproducible else round(seconds, 1)
        runs.append((results, run_dir))
        summaries.append((loaded.name, results["layers"], seconds))

    out = Path(opts.out)
    if not distributed.is_main():   # rank 0 writes the site
        return out / "index.html"
    site_dir = write_site(out, runs, reproducible=opts.reproducible, notes_md=notes_md,
                          thumb_height=opts.thumb_height, jpeg_quality=opts.jpeg_quality)
    zip_bytes = zip_site(out, opts.zip_path).stat().st_size if opts.zip_path is not None else None
    if opts.progress:
        print(format_size_report(site_size(out), zip_bytes))
        for name, layer_results, secs in summaries:
            units = sum(layer["num_units"] for layer in layer_results)
            dets = sum(layer["summary"]["detectors"] for layer in layer_results)
            print(f"dissect: {name}: {len(layer_results)} layer(s), {units} units, "
                  f"{dets} detectors in {secs:.0f}s")
            for layer in layer_results:
                print(layer_line(layer))
        print(f"dissect: done in {time.time() - t0:.0f}s; open {(Path(site_dir) / 'index.html').resolve()}")
    for name, layer_results, _ in summaries:   # warnings: --quiet or not
        for layer in layer_results:
            if layer.get("sample_warning"):
                print(f"dissect: warning: {name} {layer_title(layer)}: {SAMPLE_WARNING} ({layer['sample_warning']})",
                      file=sys.stderr)
    return Path(site_dir) / "index.html"


# ----------------------------------------------------------------------------- per model


def layer_paths(loaded: LoadedModel, layers: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(layer, paper name or None)`` of each layer to dissect (default: the model's), shallow
    to deep (in the order their calls finish in a forward pass, as the pages list them); the
    layer is a dotted path, or ``path#K`` for call K of a module that runs several times."""
    paths: list[tuple[str, str | None]] = []
    for name in (layers or loaded.default_layers):
        path, alias = resolve_layer(loaded, name)
        paths.append((path, alias or paper_name(loaded, path)))
    if not paths:
        why = f" ({loaded.default_reason})" if loaded.default_reason else ""
        raise DissectError(f"no layer to dissect in {loaded.name}{why}: pass --layer NAME "
                           f"(see `dissect layers {loaded.name}`)")
    paths = list(dict.fromkeys(paths))
    if len(paths) < 2:
        return paths
    finished = {}
    for i, c in enumerate(loaded.layer_calls()):
        finished[f"{c.path}#{c.call}"] = i
        if c.calls == 1:
            finished[c.path] = i
    return sorted(paths, key=lambda pa: finished.get(pa[0], len(finished)))   # stable: unknown ones last


def layer_reason(loaded: LoadedModel, layers: Sequence[str]) -> str:
    """Why the layers dissected are these, one sentence."""
    return "named with --layer" if layers else (loaded.default_reason or f"the default of {loaded.name}")


def announce_layers(loaded: LoadedModel, paths: list[tuple[str, str | None]], reason: str,
                    progress: bool) -> None:
    """Say on the console, before the work, which layers are dissected and why (one line)."""
    if progress and distributed.is_main():
        names = ", ".join(layer_title({"name": p, "alias": a}) for p, a in paths)
        print(f"dissect: {loaded.name}: layer{'s' if len(paths) > 1 else ''} {names}: {reason}", flush=True)


def _call_fields(loaded: LoadedModel, layer: str) -> dict[str, Any]:
    """A layer record's ``call`` (K of ``path#K``, else None) and ``calls`` (how many times its
    module runs per forward pass, None when it did not run on the dummy input)."""
    path, call = split_call(layer)
    n = sum(1 for c in loaded.layer_calls() if c.path == path)
    return {"call": call, "calls": n or None}


@dataclass
class Dissection:
    """One model's dissected layers: the raw statistics, the summaries, the run folder."""

    paths: list[tuple[str, str | None]]
    stats: dict
    layer_results: list[dict]
    run_dir: Path


def _dissect(loaded: LoadedModel, paths: list[tuple[str, str | None]], dataset, config: DissectConfig,
             opts: ReportOptions, parts: dict) -> Dissection:
    lengths = formula_lengths(opts.formulas, [p for p, _ in paths],
                              loaded.kind == "classifier" and loaded.weights == "builtin:toy_classifier")
    opts.formulas.check_probe(len(dataset.index.labels), list(lengths.values()))
    stats = dissect_layers(loaded.module, [p for p, _ in paths], dataset, config,
                           cache_dir=opts.cache / "stats", cache_parts=parts, force=opts.force,
                           progress=opts.progress)
    run_dir = opts.cache / "runs" / cache_key(parts, [p for p, _ in paths], config.stats_key(),
                                              config.tile_size, __version__)
    layer_results = []
    for path, alias in paths:
        slug = slugify(alias or path, "model")
        summary = summarize_layer(stats[path], dataset, config)
        if distributed.is_main():   # the images go to the site, which rank 0 writes
            strips = render_unit_strips(stats[path], dataset, run_dir, slug,
                                        tile_size=config.tile_size, progress=opts.progress)
            for unit, strip in zip(summary["units"], strips):
                unit["strip"] = strip
        layer_results.append({"name": path, "alias": alias, "slug": slug, **_call_fields(loaded, path), **summary})
    add_formulas(loaded.module, layer_results, dataset, stats, config, opts.formulas, lengths, opts.progress,
                 cache_dir=opts.cache / "stats", cache_parts=parts, force=opts.force, strips_dir=run_dir)
    return Dissection(paths, stats, layer_results, run_dir)


def _cache_parts(loaded: LoadedModel, dataset, hash_files: bool = False, **more: Any) -> dict:
    """What identifies a dissection's inputs (its cache key): the weights, the model, the
    probe set's tables and files (by size and time, or ``hash_files`` by content), and which
    of its images are used."""
    return {"weights_sha256": loaded.weights_sha256, "model": loaded.name,
            "data_sha256": dataset.index.sha256(),
            "data_files": dataset.index.files_fingerprint(content=hash_files),
            "indices": cache_key(dataset.indices), **more}


def _probe_section(dataset, parts: dict, **fields: Any) -> dict:
    """The results' ``probe`` section: what every probe set reports, plus ``fields``."""
    return {"index_sha256": parts["data_sha256"], "label_size": list(dataset.label_size),
            "categories": dataset.index.categories, "num_concepts": len(dataset.index.labels), **fields}


def _results(loaded: LoadedModel, layer_results: list[dict], probe: dict, config: DissectConfig,
             dataset, opts: ReportOptions) -> dict:
    """The results dict (docs/results-schema.md) without the experiments' sections."""
    return {
        "schema": "dissect.results",
        "schema_version": 1,
        "model": {
            "name": loaded.name, "slug": slugify(loaded.name, "model"), "kind": loaded.kind,
            "weights": loaded.weights, "weights_sha256": loaded.weights_sha256,
            "weights_file_sha256": loaded.weights_file_sha256,
            "num_parameters": sum(p.numel() for p in loaded.module.parameters()),
            "input_size": loaded.input_size, "class_names": loaded.class_names,
            "z_dim": loaded.z_dim, "preprocess": loaded.preprocess,
            "default_layers": [{"name": d, "alias": paper_name(loaded, d)} for d in loaded.default_layers],
            "default_reason": loaded.default_reason or None,
            "layer_reason": layer_reason(loaded, opts.layers),
        },
        "probe": probe,
        "params": {
            "quantile": config.quantile, "quantile_space": config.quantile_space,
            "iou_threshold": config.iou_threshold, "top_k": config.top_k,
            "top_concepts": config.top_concepts, "upsample": "bilinear",
            "upsample_size": list(dataset.label_size),
            "binarize": MASK_RULE,
            "union": dataset.index.annotation_rule,
            "batch_size": config.batch_size, "image_size": loaded.input_size,
        },
        "provenance": {
            "tool": "dissect", "tool_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "device": str(resolve_device(config.device)),
            "command": opts.command or "dissect.report() (Python API)",
            "created": None if opts.reproducible else
            datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        },
        "layers": layer_results,
    }


def _comparisons(loaded: LoadedModel, opts: ReportOptions, comparison: dict | None, run: Dissection,
                 dataset, config: DissectConfig, parts: dict, **extra: Any) -> dict | None:
    """The results' ``comparison`` section: ``comparison`` (this weights' place among
    several), the shipped comparison weights of the toy classifier, the rotation experiment."""
    section = dict(comparison or {})
    path, alias = run.paths[-1]
    shipped, final_step, note = ([], None, None)
    if opts.shipped_comparisons and comparison is None and loaded.weights == "builtin:toy_classifier":
        shipped, final_step, note = toy_comparison_weights()
    if shipped:
        # Cheap enough for the default report: the last layer, on the first images of the probe set,
        # the trained model among them so that the whole series shares one probe set.
        subset = probe_subset(dataset, SHIPPED_COMPARISON_IMAGES)
        members = [(loaded, f"{loaded.name} (trained, step {final_step})", final_step, "model")] + [
            (load_model(loaded.name, weights=str(w.path), input_size=loaded.input_size, progress=False),
             w.name, w.step, w.role) for w in shipped]
        section.update(version=COMPARISON_VERSION, group=loaded.name, order=0, step=None, role="model",
                       members=members_for_report(
                           members, path, alias, subset, config, _cache_parts(loaded, subset, **extra),
                           opts.cache / "stats", force=opts.force, progress=opts.progress,
                           probe={"num_images": len(subset)}),
                       notes=[note] if note else [])
    if opts.rotate:
        rpath, ralias = resolve_layer(loaded, opts.rotate_layer) if opts.rotate_layer else (path, alias)
        section.setdefault("version", COMPARISON_VERSION)
        section["rotation"] = rotation_for_report(loaded, rpath, ralias, dataset, config, opts.rotate,
                                                  opts.rotate_seed, parts, opts.cache / "stats",
                                                  force=opts.force, progress=opts.progress)
    return section or None


def _add_bases(results: dict, loaded: LoadedModel, opts: ReportOptions, run: Dissection, dataset,
               config: DissectConfig, parts: dict, *, default: bool) -> Callable[..., None] | None:
    """The results' ``bases``: the deepest layer's feature bases (:mod:`dissect.bases`); returns
    the step that ablates their features beside the units, or for a generator intervenes with
    them (None: none)."""
    path, _ = run.paths[-1]
    found = bases_for_report(loaded, run.layer_results[-1], run.stats[path], dataset, config, opts.basis_options,
                             parts, opts.cache / "stats", run.run_dir, default=default, force=opts.force,
                             progress=opts.progress, formulas=opts.formulas)
    if found is None:
        return None
    entry, dictionaries, feature_stats = found
    results["bases"] = [entry]
    if not opts.basis_options.ablation:
        return None
    if loaded.kind == "generator":
        return basis_generator_step(entry, dictionaries, feature_stats, opts.progress)
    return basis_report_step(entry, dictionaries, opts.progress)


def _classifier_run(loaded: LoadedModel, opts: ReportOptions, comparison: dict | None = None) -> tuple[dict, Path]:
    config = opts.config_for(loaded.kind)
    paths = layer_paths(loaded, opts.layers)
    announce_layers(loaded, paths, layer_reason(loaded, opts.layers), opts.progress)
    data = opts.data or default_data_name(loaded.spec, loaded.weights)
    with distributed.main_first():   # rank 0 writes the cached probe set, the others read it
        probe = open_probe_data(data, loaded.input_size, loaded.mean, loaded.std, opts.cache,
                                opts.data_size, opts.data_seed, opts.split, opts.progress, opts.segmenter,
                                opts.segmenter_weights, config.batch_size, resolve_device(config.device))
    dataset = probe.dataset
    parts = _cache_parts(loaded, dataset, opts.hash_files, input_size=loaded.input_size)
    default_bases = loaded.weights == "builtin:toy_classifier" and comparison is None and not opts.layers
    check_bases(loaded, paths[-1][0], dataset, opts.basis_options, default=default_bases,
                device=resolve_device(config.device), experiments=opts.ablation is not False)
    attach_label_cache(dataset, opts.cache, opts.label_cache, (parts["data_sha256"], parts["data_files"]))
    run = _dissect(loaded, paths, dataset, config, opts, parts)
    unread = sorted({s for p, _ in run.paths for s in run.stats[p].skipped})
    skipped = probe.skipped + unread  # an image folder's unreadable images, then the probe set's
    labeled_by = {"segmenter": probe.segmenter.provenance()} if probe.segmenter is not None else {}
    probe_info = _probe_section(
        dataset, parts, name=probe.name, path=str(data), num_images=len(dataset) - len(unread),
        num_skipped=len(skipped), skipped=skipped[:100], split=opts.split,
        seed=opts.data_seed if data == "toyworld" else None, **labeled_by)
    results = _results(loaded, run.layer_results, probe_info, config, dataset, opts)
    if opts.labeler.clip:   # open-vocabulary labels beside the IoU labels (dissect.labelers.clip)
        results["params"]["clip_labels"] = clip_labels_for_report(
            loaded, run.layer_results, dataset, opts.labeler, opts.cache, parts, resolve_device(config.device),
            progress=opts.progress, force=opts.force)
    basis_step = _add_bases(results, loaded, opts, run, dataset, config, parts, default=default_bases)
    if opts.ablation is not False:
        acfg = opts.ablation if isinstance(opts.ablation, AblationConfig) else AblationConfig(
            device=config.device, num_workers=config.num_workers)
        ablation_data = opts.ablation_data if opts.ablation_data is not None else \
            default_ablation_data(loaded.spec)
        results["ablation"] = ablation_for_report(
            loaded, run.layer_results, probe.path if ablation_probe(data) else None,
            None if ablation_data is None else labeled_data_path(str(ablation_data), opts.cache),
            acfg, progress=opts.progress, frontend="cli" if opts.command else "python", after_layer=basis_step)
    section = _comparisons(loaded, opts, comparison, run, dataset, config, parts, input_size=loaded.input_size)
    if section:
        results["comparison"] = section
    return results, run.run_dir


def _generator_run(loaded: LoadedModel, opts: ReportOptions, comparison: dict | None = None) -> tuple[dict, Path]:
    config = opts.config_for(loaded.kind)
    paths = layer_paths(loaded, opts.layers)
    announce_layers(loaded, paths, layer_reason(loaded, opts.layers), opts.progress)
    with distributed.main_first():   # rank 0 writes the cached probe set, the others read it
        probe = open_generated_probe(loaded, opts.cache, opts.segmenter, opts.data_size, opts.data_seed,
                                     batch_size=config.batch_size, device=resolve_device(config.device),
                                     progress=opts.progress, segmenter_weights=opts.segmenter_weights)
    dataset, seg = probe.dataset, probe.segmenter
    parts = _cache_parts(loaded, dataset, opts.hash_files, kind="generator")
    check_bases(loaded, paths[-1][0], dataset, opts.basis_options, default=False, device=resolve_device(config.device),
                experiments=opts.interventions is not False)
    attach_label_cache(dataset, opts.cache, opts.label_cache, (parts["data_sha256"], parts["data_files"]))
    run = _dissect(loaded, paths, dataset, config, opts, parts)
    probe_info = _probe_section(
        dataset, parts, name="generated", path=str(probe.path), num_images=len(dataset),
        num_skipped=0, skipped=[], split=None, seed=opts.data_seed,
        latents=f"z ~ N(0, I), z_dim {loaded.z_dim}, latent i from numpy default_rng([{opts.data_seed}, i])",
        segmenter=seg.provenance())
    results = _results(loaded, run.layer_results, probe_info, config, dataset, opts)
    basis_step = _add_bases(results, loaded, opts, run, dataset, config, parts, default=False)
    if opts.interventions is not False:
        gcfg = opts.interventions if isinstance(opts.interventions, GeneratorExperimentConfig) else \
            GeneratorExperimentConfig(device=config.device, batch_size=config.batch_size)
        results["generator"] = generator_for_report(loaded, run.layer_results, run.stats, dataset, seg,
                                                    run.run_dir, gcfg, progress=opts.progress)
        if basis_step is not None:
            basis_step(loaded, run.stats, dataset, seg, run.run_dir, gcfg, results["generator"])
    section = _comparisons(loaded, opts, comparison, run, dataset, config, parts, kind="generator")
    if section:
        results["comparison"] = section
    return results, run.run_dir
