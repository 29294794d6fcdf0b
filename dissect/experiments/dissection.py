"""Network dissection, exactly as METHOD.md section 1 gives it.

Pass 1 runs the model over the probe images and tallies, per unit, the top-``q`` quantile
threshold ``T_k`` and the top-k images by maximum activation. Pass 2 upsamples each
activation map to the label resolution (bilinear), binarises it with ``S_k > T_k`` (strict;
``S_k >= T_k`` for a saturated unit, whose threshold is its maximum: :func:`binarize`) and
tallies intersections and unions with every concept. Pass 3 (unless
``config.intervals.replicates`` is 0) tallies, for each unit's best concept, the Poisson
bootstrap of its IoU over images (:mod:`dissect.stats.intervals`). Every pass streams:
memory does not grow with the probe set. Layer activations from pass 1 are kept in RAM for
passes 2 and 3 only while they fit ``activation_cache_mb`` (otherwise those passes run the
model again), which changes speed, never results.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dissect.version import __version__

from ..atomic import atomic_save, clean_leftovers
from .. import distributed, memory
from ..cache import cache_key
from ..data.broden import BrodenDataset, make_loader, warn_bad
from ..devices import resolve_device
from ..errors import DissectError
from ..hooks import Trace
from ..slugs import layer_title
from ..stats.finite import NONFINITE_POLICIES, FiniteCheck
from ..inference import PRECISIONS, autocast, resolve_precision
from ..stats.intervals import BootstrapTally, IntervalOptions, decision, too_small
from ..stats.iou import IoUTally, concept_counts
from ..stats.quantile import TopQuantile
from ..stats.topk import TopK
from .metrics import rounded

QUANTILE_SPACES = ("activation", "upsampled")
#: How a unit's map is binarised (part of the cache key and of results.json ``params``).
MASK_RULE = "S_k > T_k (strict); S_k >= T_k for a saturated unit (T_k = its maximum)"
#: Two values closer than this many float32 roundings (relative) are equal: the bilinear
#: upsampling of a map that is constant at ``v`` gives ``v`` only to within ~2 roundings.
TIE_ULPS = 8


@dataclass
class DissectConfig:
    """Parameters of a dissection; every one is written into the report."""

    quantile: float = 0.005          # q: P(a_k > T_k) = q  (2017 default; 2020 used 0.01)
    quantile_space: str = "activation"  # "activation": layer maps (2017); "upsampled" (2020)
    iou_threshold: float = 0.04      # a unit is a detector of its best concept above this
    top_k: int = 10                  # top images per unit
    top_concepts: int = 5            # concepts kept per unit
    batch_size: int = 64             # on CUDA, grown to what the free memory holds (memory.batch_size)
    num_workers: int | None = None   # image decoding processes (None: up to 4)
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    activation_cache_mb: int = 2048  # --cache-budget: keep pass-1 activations for pass 2 up to this size
    precision: str = "auto"          # auto | fp32 | bf16 | fp16: the forward pass (autocast); tallies stay float32+
    tile_size: int = 0               # unit image tile size in px (0: label size, >= 96)
    nonfinite: str = "error"         # NaN/inf activations: "error" stops, "invalid" reports the units
    intervals: IntervalOptions = field(default_factory=IntervalOptions)   # best-IoU intervals (--bootstrap)

    def validate(self) -> None:
        if not 0.0 < self.quantile < 0.5:
            raise DissectError(f"--quantile must be in (0, 0.5), got {self.quantile}")
        if self.quantile_space not in QUANTILE_SPACES:
            raise DissectError(f"--quantile-space must be one of {', '.join(QUANTILE_SPACES)}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise DissectError(f"--iou-threshold must be in [0, 1], got {self.iou_threshold}")
        if self.top_k < 1:
            raise DissectError(f"--top-k must be at least 1, got {self.top_k}")
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise DissectError(f"--nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {self.nonfinite!r}")
        if self.activation_cache_mb < 0:
            raise DissectError(f"--cache-budget must be at least 0 MB, got {self.activation_cache_mb}")
        if self.precision not in PRECISIONS:
            raise DissectError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.intervals.validate()

    def stats_key(self) -> dict:
        """The fields that change the tallied statistics (the cache key)."""
        return {"quantile": self.quantile, "quantile_space": self.quantile_space,
                "top_k": self.top_k, "mask": MASK_RULE,
                **({"nonfinite": self.nonfinite} if self.nonfinite != "error" else {}),
                "intervals": self.intervals.key()}


@dataclass
class LayerStats:
    """Everything tallied for one layer (mergeable, cacheable)."""

    layer: str
    shape: tuple[int, int, int]
    thresholds: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    tally: dict
    top_values: torch.Tensor
    top_indices: torch.Tensor
    top_maps: torch.Tensor
    num_images: int
    skipped: list[str] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)   # units with non-finite activations
    reading: str = ""   # how the output was read as maps (feature_maps.MapLayout.describe)
    # pass 3 (None when off): float64 [units, 2], the interval of each unit's best IoU, the
    # best concepts it is for (label numbers, -1: none) and IntervalOptions.describe()
    intervals: torch.Tensor | None = None
    interval_concepts: torch.Tensor | None = None
    bootstrap: dict | None = None

    def __post_init__(self) -> None:
        self._ious: dict[tuple, torch.Tensor] = {}   # iou() per label set; not part of the state

    def iou(self, primary_category: torch.Tensor, num_categories: int) -> torch.Tensor:
        """``[units, labels]`` IoU of every unit with every label, from the tallies, for labels
        whose category index is ``primary_category[label]``. Computed once per label set and
        kept, so that the summary and the interventions share one computation."""
        key = (num_categories, tuple(primary_category.tolist()))
        if key not in self._ious:
            t = IoUTally(self.shape[0], primary_category.numel(), primary_category, num_categories)
            t.load_state_dict(self.tally)
            self._ious[key] = t.iou()
            self._ious[key][self.invalid] = 0.0   # an invalid unit matches no concept
        return self._ious[key].clone()

    @property
    def saturated(self) -> torch.Tensor:
        """``[units]`` bool: the units whose threshold is their maximum (:func:`saturated_units`)."""
        return saturated_units(self.thresholds, self.minimum, self.maximum, self.invalid)

    def to_state(self) -> dict:
        """The tallies as a dict of tensors and plain values (what the cache file holds)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_state(cls, d: dict) -> "LayerStats":
        """The inverse of :meth:`to_state`."""
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


def dissect_layers(model: torch.nn.Module, layers: Sequence[str], dataset: BrodenDataset,
                   config: DissectConfig, cache_dir: Path | None = None,
                   cache_parts: dict | None = None, force: bool = False,
                   progress: bool = True) -> dict[str, LayerStats]:
    """Dissect ``layers`` of ``model`` on ``dataset`` in one pass over the data.

    With ``cache_dir`` and ``cache_parts`` (what identifies the model and data), finished
    layers are saved and reused by identical reruns; ``force`` recomputes.
    """
    config.validate()
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)     # None: float32
    index = dataset.index
    n = len(dataset)
    if n == 0:
        raise DissectError("the probe set has no images")

    paths: dict[str, Path] = {}
    results: dict[str, LayerStats] = {}
    if cache_dir is not None and cache_parts is not None:
        for layer in layers:
            key = cache_key(cache_parts, layer, config.stats_key(), n, __version__,
                            index.annotation_rule, *([str(dtype)] if dtype is not None else []))
            paths[layer] = Path(cache_dir) / f"stats-{key}.pt"
            if paths[layer].is_file() and not force:
                try:
                    results[layer] = LayerStats.from_state(
                        torch.load(paths[layer], map_location="cpu", weights_only=True))
                except Exception:  # any damaged entry (truncated, unpicklable, old) is recomputed
                    results.pop(layer, None)
    todo = [layer for layer in layers if layer not in results]
    if not todo:
        return results

    model = model.to(device).eval()
    shapes, readings = _layer_shapes(model, todo, dataset, device)
    for layer, shape in shapes.items():
        if len(shape) != 3 or shape[1] * shape[2] < 1:
            raise DissectError(f"layer {layer!r} has output shape {list(shape)}, without spatial "
                               "extent; dissection needs a conv feature map [units, h, w]")
    sh, sw = dataset.label_size
    upsampled = config.quantile_space == "upsampled"
    act_bytes = _map_bytes(shapes)
    # on CUDA the batch grows to what the free memory holds (memory.batch_size); an
    # out-of-memory error runs a batch in smaller parts with the same results (memory.Parts)
    batch_size = memory.batch_size(device, config.batch_size,
                                   probe_item_bytes(model, todo, dataset, device, dtype, act_bytes))
    forward_parts = memory.Parts(what="forward pass")
    tally_parts = memory.Parts(what="IoU tally")

    def forward(x: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
        """``forward_layers`` of the batch ``x``, in parts when the whole does not fit the device."""
        parts = forward_parts.run(len(x), lambda s: forward_layers(model, todo, x[s], dtype, where))
        return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in todo}

    # ----------------------------------------------------------------- pass 1
    # Pass 1 keeps the activations (and labels) of the first images of this process's shard
    # of the probe set while they fit the budget; pass 2 reads those from memory and runs
    # the model again only for the rest. One pass over the data when the whole shard fits;
    # memory is the budget plus a constant, whatever the probe set's size.
    lo, hi = distributed.shard(n)
    per_image = act_bytes + 8 * sh * sw * 2  # <= 8 int16 label layers
    n_keep = min(hi - lo, config.activation_cache_mb * 2 ** 20 // per_image)
    cached: list[tuple[dict, dict]] = []  # per batch: (activations per layer, labels)
    # the kept activations stay on a CUDA device when they fit it beside the batches
    keep_on = device if memory.fits(device, n_keep * act_bytes, share=0.25) else torch.device("cpu")

    def new_quantile(layer: str) -> TopQuantile:
        c, h, w = shapes[layer]
        return TopQuantile(c, config.quantile, n * ((sh * sw) if upsampled else (h * w)), device=device)

    def new_topk(layer: str) -> TopK:
        return TopK(shapes[layer][0], config.top_k, shapes[layer][1:], device=device)

    quant = {layer: new_quantile(layer) for layer in todo}
    topk = {layer: new_topk(layer) for layer in todo}
    pin = device.type == "cuda"

    def loader(start: int, stop: int, labels: bool):
        """Batches of probe images ``[start, stop)`` (their ``index`` counted from 0 over the
        whole probe set), with or without labels."""
        if stop > start:
            part = dataset_view(dataset, indices=dataset.indices[start:stop], with_labels=labels)
            for batch in make_loader(part, batch_size, config.num_workers, pin_memory=pin, device=device):
                batch["index"] = batch["index"] + start
                yield batch

    def pass1_batches():
        yield from loader(lo, lo + n_keep, True)
        yield from loader(lo + n_keep, hi, False)

    skipped: list[str] = []
    finite = FiniteCheck(config.nonfinite, lambda i: index.records[dataset.indices[i]].image)
    t0 = time.time()
    with torch.no_grad():
        for batch in tqdm(pass1_batches(), desc="dissect: thresholds", unit="batch",
                          total=math.ceil((hi - lo) / batch_size), disable=not progress,
                          leave=False):
            skipped += [p for p, _ in batch["bad"]]
            warn_bad(batch["bad"], index.images)
            if len(batch["index"]) == 0:
                continue
            acts = finite.check(forward(batch["image"].to(device, non_blocking=True), _batch_name(dataset, batch)),
                                batch["index"])
            for layer, a in acts.items():
                q_in = F.interpolate(a, size=(sh, sw), mode="bilinear", align_corners=False) if upsampled else a
                quant[layer].add(q_in.transpose(0, 1).reshape(a.shape[1], -1))
                topk[layer].add(a, batch["index"])
            if "pixel_labels" in batch:
                cached.append(({k: v.to(keep_on) for k, v in acts.items()},   # labels: int16 (see BrodenDataset)
                               {"pixel_labels": batch["pixel_labels"], "image_labels": batch["image_labels"],
                                "index": batch["index"]}))
    quant = distributed.merge_tallies(quant, new_quantile)
    topk = distributed.merge_tallies(topk, new_topk)
    if len(set(skipped)) >= n:
        raise DissectError(f"none of the {n} probe images could be read (the first: {skipped[0]})")
    thresholds = {layer: quant[layer].thresholds() for layer in todo}
    # (a unit that is invalid on another process is reported invalid, whatever its mask rule)
    saturated = {layer: saturated_units(thresholds[layer], quant[layer].min, quant[layer].max,
                                        finite.units(layer)) for layer in todo}
    t1 = time.time()

    # ----------------------------------------------------------------- pass 2
    prim = index.primary_category_tensor()

    def new_tally(layer: str) -> IoUTally:
        return IoUTally(shapes[layer][0], index.num_labels, prim, len(index.categories),
                        device=device, all_annotated=index.segmenter_labeled)

    tallies = {layer: new_tally(layer) for layer in todo}

    bootstrap = config.intervals

    def batches(release: bool):
        """Every (activations, labels) batch of this shard: the kept ones (freed as they are
        read when ``release``), then the model run again on the rest."""
        if release:
            while cached:
                yield cached.pop(0)   # free each batch once it is tallied
        else:
            yield from cached
        for batch in loader(lo + n_keep, hi, True):
            if len(batch["index"]):
                yield finite.check(forward(batch["image"].to(device, non_blocking=True), _batch_name(dataset, batch)),
                                   batch["index"]), batch

    with torch.no_grad():
        for acts, batch in tqdm(batches(release=not bootstrap.enabled), desc="dissect: IoU", unit="batch",
                                total=math.ceil((hi - lo) / batch_size), disable=not progress,
                                leave=False):
            labels = None
            for layer, a in acts.items():
                tally = tallies[layer]
                if labels is None:
                    labels = tally.prepare(batch["pixel_labels"].long(), batch["image_labels"])
                a = a.to(device)
                # add_sparse changes the tally only once its part is computed: a part that ran
                # out of memory is retried smaller and never counted twice
                tally_parts.run(len(a), lambda s: tally.add_sparse(
                    *active_masks(a[s], thresholds[layer], (sh, sw), saturated=saturated[layer]),
                    labels.rows(s)))
    tallies = distributed.merge_tallies(tallies, new_tally)
    # every rank's unreadable images, and its units with non-finite values (--nonfinite invalid)
    parts = distributed.gather_objects((skipped, {layer: finite.units(layer) for layer in todo}))
    skipped = [p for part, _ in parts for p in part]
    invalid = {layer: sorted({k for _, units in parts for k in units[layer]}) for layer in todo}
    done: dict[str, LayerStats] = {}
    for layer in todo:
        tk = topk[layer]
        done[layer] = LayerStats(
            layer=layer, shape=tuple(shapes[layer]), thresholds=thresholds[layer].cpu(),
            minimum=quant[layer].min.cpu(), maximum=quant[layer].max.cpu(),
            tally=tallies[layer].state_dict(), top_values=tk.values.cpu(),
            top_indices=tk.indices.cpu(), top_maps=tk.maps.cpu(),
            num_images=n - len(skipped), skipped=sorted(set(skipped)), invalid=invalid[layer],
            reading=readings[layer])
    t2 = time.time()

    # ----------------------------------------------------------------- pass 3
    # The bootstrap of each unit's best IoU: the best concepts are known now (the same choice
    # as summarize_layer's), so each image's intersection and union with them are tallied
    # under the Poisson weights of that image (dissect.stats.intervals).
    if bootstrap.enabled:
        concepts = {layer: torch.from_numpy(unit_scores(done[layer], index).best).to(device) for layer in todo}

        def new_boot(layer: str) -> BootstrapTally:
            return BootstrapTally(shapes[layer][0], bootstrap.replicates, bootstrap.seed, device=device)

        boots = {layer: new_boot(layer) for layer in todo}
        with torch.no_grad():
            for acts, batch in tqdm(batches(release=True), desc="dissect: intervals", unit="batch",
                                    total=math.ceil((hi - lo) / batch_size), disable=not progress,
                                    leave=False):
                labels = None
                for layer, a in acts.items():
                    if labels is None:
                        labels = tallies[layer].prepare(batch["pixel_labels"].long(), batch["image_labels"])
                    img, unit, masks = active_masks(a.to(device), thresholds[layer], (sh, sw),
                                                    saturated=saturated[layer])
                    inter, union = concept_counts(img, unit, masks, labels, concepts[layer],
                                                  tallies[layer].primary_category)
                    boots[layer].add(batch["index"], inter, union)
        boots = distributed.merge_tallies(boots, new_boot)
        for layer in todo:
            done[layer].intervals = boots[layer].intervals(bootstrap.level).cpu()
            done[layer].interval_concepts = concepts[layer].cpu()
            done[layer].bootstrap = bootstrap.describe()
    cached.clear()  # (already empty: each batch was popped once tallied)

    for layer in todo:
        stats = results[layer] = done[layer]
        if layer in paths and distributed.is_main():
            paths[layer].parent.mkdir(parents=True, exist_ok=True)
            clean_leftovers(paths[layer].parent)   # temporary files of killed runs
            atomic_save(paths[layer], lambda tmp: torch.save(stats.to_state(), tmp))
    if progress:
        tqdm.write(f"dissect: {n} images, {len(todo)} layer(s) in {time.time() - t0:.1f}s "
                   f"(thresholds {t1 - t0:.1f}s, IoU {t2 - t1:.1f}s"
                   + (f", intervals {time.time() - t2:.1f}s)" if bootstrap.enabled else ")")
                   + (f", {len(set(skipped))} unreadable image(s) skipped" if skipped else ""))
    return results


def _tie_floor(x: torch.Tensor) -> torch.Tensor:
    """The smallest value that counts as equal to ``x`` (``TIE_ULPS`` float32 roundings below)."""
    return x - TIE_ULPS * torch.finfo(torch.float32).eps * x.abs()


def saturated_units(thresholds: torch.Tensor, minimum: torch.Tensor, maximum: torch.Tensor,
                    invalid: Sequence[int] = ()) -> torch.Tensor:
    """``[units]`` bool: the units whose top-q threshold ``T_k`` equals their maximum over the
    probe set (a saturating activation: ReLU6, hard-tanh, sigmoid), that are neither dead
    (``max_k > min_k``) nor ``invalid``. For them the strict mask ``S_k > T_k`` is empty
    although the unit is at its strongest, so their mask is ``S_k >= T_k`` (:func:`binarize`).
    Equal means within ``TIE_ULPS`` roundings, so that a maximum reached only through the
    rounding of upsampling (``--quantile-space upsampled``) still ties."""
    sat = (thresholds >= _tie_floor(maximum)) & (maximum > minimum)
    sat[list(invalid)] = False
    return sat


def binarize(values: torch.Tensor, thresholds: torch.Tensor,
             saturated: torch.Tensor | None = None) -> torch.Tensor:
    """The unit mask of ``values`` (upsampled maps, or their peaks): ``values > thresholds``,
    and ``values >= thresholds`` where ``saturated`` (both broadcast against ``values``).

    The one place a unit mask is made (the IoU tallies, the unit images). For a saturated
    unit ``>=`` allows ``TIE_ULPS`` roundings: bilinear upsampling of a map that is at the
    cap everywhere gives the cap only to within ~2 roundings, and such a pixel is at the cap.
    ``saturated=None`` means no saturated unit: the strict rule everywhere.
    """
    strict = values > thresholds
    if saturated is None or not bool(saturated.any()):
        return strict
    return torch.where(saturated, values >= _tie_floor(thresholds), strict)


def active_masks(acts: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int], *,
                 saturated: torch.Tensor | None = None):
    """The unit masks (:func:`binarize`) at ``size`` that are not empty, as (image, unit, mask).

    ``saturated`` (``[units]`` bool, :func:`saturated_units`; None: none is) picks the units
    binarised with ``S_k >= T_k``, the others with ``S_k > T_k``. Bilinear upsampling takes
    convex combinations of a map's values, so a map whose maximum fails the rule (is at most
    ``T_k``; for a saturated unit, below it) upsamples to an empty mask: only the other maps
    are upsampled. The result equals upsampling every map (``tests/test_dissection.py`` and
    ``tests/test_saturation.py`` check it).
    """
    peak = acts.flatten(2).max(dim=2).values                            # [B, units]
    sat = None if saturated is None else saturated.to(acts.device)
    img, unit = binarize(peak, thresholds.view(1, -1),
                         None if sat is None else sat.view(1, -1)).nonzero(as_tuple=True)
    if img.numel() == 0:
        return img, unit, torch.zeros((0, *size), dtype=torch.bool, device=acts.device)
    maps = acts[img, unit].unsqueeze(1)                                 # [M, 1, h, w]
    up = F.interpolate(maps, size=size, mode="bilinear", align_corners=False).squeeze(1)
    return img, unit, binarize(up, thresholds[unit].view(-1, 1, 1),
                               None if sat is None else sat[unit].view(-1, 1, 1))


def dataset_view(dataset: BrodenDataset, **flags) -> BrodenDataset:
    """The same dataset, decoding only what a pass needs (``with_images``, ``with_labels``)."""
    view = BrodenDataset.__new__(BrodenDataset)
    view.__dict__.update(dataset.__dict__)
    view.__dict__.update(flags)
    return view


def _batch_name(dataset: BrodenDataset, batch: dict) -> str:
    """The images of a batch, for an error message: ``images 64-127 (a.jpg, b.jpg, ...)``."""
    pos = batch["index"].tolist()
    names = [dataset.index.records[dataset.indices[i]].image for i in pos[:3]]
    return f"the batch of images {pos[0]}-{pos[-1]} ({', '.join(names)}{', ...' if len(pos) > 3 else ''})"


def forward_layers(model, layers, x, dtype: torch.dtype | None = None,
                   where: str = "an example input") -> dict[str, torch.Tensor]:
    """The layers' outputs for inputs ``x``, as float32 (the forward pass under autocast to
    ``dtype`` when given); a model that fails names the images (``where``)."""
    try:
        with Trace(model, layers, stop=True) as tr, autocast(x.device, dtype):
            model(x)
    except (DissectError, *memory.OOM_ERRORS):   # out of memory: the caller runs smaller parts
        raise
    except Exception as e:   # a model that fails on real data: name the images
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DissectError(f"the model failed on {where}: {type(e).__name__}: {first}") from e
    missing = [layer for layer in layers if layer not in tr.outputs]
    if missing:
        raise DissectError(f"layer(s) {missing} did not run in the model's forward pass")
    return {layer: tr.outputs[layer].float() for layer in layers}


def _map_bytes(shapes: dict[str, tuple]) -> int:
    """One image's maps of every layer, in float32 bytes."""
    return sum(int(np.prod(s)) * 4 for s in shapes.values())


def dissection_batch_size(model, layers: Sequence[str], dataset: BrodenDataset, config: DissectConfig) -> int:
    """The batch size :func:`dissect_layers` takes for ``layers`` of ``model`` on ``dataset``:
    ``config.batch_size`` on the CPU, more on CUDA when the free memory holds more (for a
    benchmark's forward-pass floor at the same size)."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    model = model.to(device).eval()
    shapes, _ = _layer_shapes(model, layers, dataset, device)
    return memory.batch_size(device, config.batch_size,
                             probe_item_bytes(model, layers, dataset, device, dtype, _map_bytes(shapes)))


def probe_item_bytes(model, layers, dataset, device, dtype, act_bytes: int) -> int | None:
    """The device memory one probe image costs (None on the CPU): the peak of a forward
    pass of the example input, plus its maps several times over (kept, upsampled, masked)
    and its label planes as the tallies index them (int64)."""
    if device.type != "cuda":
        return None
    with torch.no_grad():
        peak = memory.peak_bytes(device, lambda: forward_layers(model, layers, dataset.example_input(device), dtype))
    sh, sw = dataset.label_size
    return peak + 4 * act_bytes + 8 * sh * sw * 8 * 3


def _layer_shapes(model, layers, dataset, device) -> tuple[dict[str, tuple], dict[str, str]]:
    """Each layer's map shape ``(C, H, W)`` and how its output is read as maps."""
    with torch.no_grad(), Trace(model, layers, stop=True) as tr:
        model(dataset.example_input(device))
    missing = [layer for layer in layers if layer not in tr.outputs]
    if missing:
        raise DissectError(f"layer(s) {missing} did not run in the model's forward pass")
    return ({layer: tuple(tr.outputs[layer].shape[1:]) for layer in layers},
            {layer: tr.layouts[layer].describe() for layer in layers})


# --------------------------------------------------------------------- summaries
@dataclass
class UnitScores:
    """Every unit's IoU with every concept as the summary reads it, and its best concept."""

    iou: np.ndarray       # [units, labels]: 0 for label numbers the index lacks, dead and invalid units
    dead: np.ndarray      # [units] bool: the activation never varies
    invalid: np.ndarray   # [units] bool: non-finite activations (--nonfinite invalid)
    valid: np.ndarray     # [labels] bool: label numbers of the index
    best: np.ndarray      # [units] int64: the best concept's label number, -1 for none


def unit_scores(stats: LayerStats, index) -> UnitScores:
    """The IoUs of ``stats`` against ``index``'s concepts and each unit's best concept: the
    highest IoU, ties to the lower label number; none (-1) for a dead or invalid unit or when
    no concept's IoU is above 0. The one choice of a unit's label (the summary's and the
    intervals' pass 3)."""
    prim = index.primary_category_tensor()
    iou = stats.iou(prim, len(index.categories)).numpy()                 # [units, labels]
    invalid = np.zeros(iou.shape[0], dtype=bool)
    invalid[list(stats.invalid)] = True              # non-finite activations: no statistic holds
    dead = (stats.maximum <= stats.minimum).numpy() & ~invalid
    valid = np.zeros(iou.shape[1], dtype=bool)
    valid[list(index.labels)] = True
    iou = np.where(valid[None, :], iou, 0.0)
    iou[dead | invalid] = 0.0
    best = iou.argmax(axis=1)                        # the first maximum: ties go to the lower label number
    best = np.where(iou[np.arange(iou.shape[0]), best] > 0, best, -1).astype(np.int64)
    return UnitScores(iou, dead, invalid, valid, best)


def summarize_layer(stats: LayerStats, dataset: BrodenDataset, config: DissectConfig) -> dict:
    """Labels, detectors and per-unit records for one layer (results.json ``layers[i]``)."""
    index = dataset.index
    cats = index.categories
    scores = unit_scores(stats, index)
    iou, dead, invalid, valid = scores.iou, scores.dead, scores.invalid, scores.valid
    tally = stats.tally
    active = (tally["active"] / max(tally["pixels"], 1)).numpy()
    primcat = index.primary_category_tensor().numpy()
    intervals = _intervals(stats, scores)
    saturated = stats.saturated.numpy()

    units = []
    for k in range(iou.shape[0]):
        if invalid[k]:
            units.append(_invalid_unit(k, stats, dataset))
            continue
        row = iou[k]
        # best first; ties go to the lower label number, so results are deterministic
        order = np.lexsort((np.arange(row.size), -row))
        has = bool(scores.best[k] >= 0)
        best = int(scores.best[k]) if has else int(order[0])
        interval = intervals[k] if has and intervals is not None else None
        top = [{"name": index.labels[int(c)].display, "category": cats[primcat[c]],
                "iou": rounded(row[c])} for c in order[: config.top_concepts] if row[c] > 0 and valid[c]]
        by_cat = {}
        for gi, g in enumerate(cats):
            sel = np.flatnonzero((primcat == gi) & valid)
            if sel.size == 0:
                continue
            c = int(sel[np.lexsort((sel, -row[sel]))[0]])
            if row[c] > 0:
                by_cat[g] = {"name": index.labels[c].display, "iou": rounded(row[c])}
        units.append({
            "unit": k,
            "label": index.labels[best].display if has else None,
            "category": cats[primcat[best]] if has else None,
            "iou": rounded(row[best]) if has else 0.0,
            "detector": bool(has and row[best] > config.iou_threshold),
            "iou_interval": interval,
            "detector_interval": decision(interval, config.iou_threshold),
            "threshold": _s(stats.thresholds[k].item()),
            "active_fraction": _s(float(active[k])),
            "max_activation": _s(stats.maximum[k].item()),
            "dead": bool(dead[k]),
            "saturated": bool(saturated[k]),
            "none_reason": None if has else _none_reason(bool(dead[k]), bool(saturated[k]),
                                                         float(active[k]), stats.maximum[k].item()),
            "top_concepts": top,
            "top_by_category": by_cat,
            "top_images": [_top_image(dataset, i, _s(float(v)))
                           for v, i in zip(stats.top_values[k].tolist(), stats.top_indices[k].tolist())],
        })

    detectors = [u for u in units if u["detector"]]
    det_by_cat: dict[str, int] = {g: 0 for g in cats}
    uniq_by_cat: dict[str, set] = {g: set() for g in cats}
    for u in detectors:
        det_by_cat[u["category"]] += 1
        uniq_by_cat[u["category"]].add(u["label"])
    edges = [round(i * 0.02, 2) for i in range(0, 26)]
    best_ious = np.array([u["iou"] for u in units if not u.get("invalid")])
    counts, _ = np.histogram(np.clip(best_ious, 0, 0.5 - 1e-9), bins=edges)
    concept_counts: dict[str, dict[str, int]] = {}
    for u in detectors:
        concept_counts.setdefault(u["category"], {})
        concept_counts[u["category"]][u["label"]] = concept_counts[u["category"]].get(u["label"], 0) + 1
    labelled = [u for u in units if u["label"] is not None]
    straddling = sum(1 for u in labelled if u["detector_interval"] == "straddles")
    interval_block = None if stats.bootstrap is None else {
        **stats.bootstrap, "labelled_units": len(labelled), "straddling_units": straddling,
        "uncertain_detectors": sum(1 for u in detectors if u["detector_interval"] != "above")}
    return {
        "name": stats.layer,
        "num_units": int(iou.shape[0]),
        "activation_shape": list(stats.shape),
        "reading": stats.reading,
        "intervals": interval_block,
        "sample_warning": too_small(stats.num_images, len(labelled), straddling),
        "summary": {
            "detectors": len(detectors),
            "unique_concepts": len({u["label"] for u in detectors}),
            "detectors_by_category": det_by_cat,
            "unique_by_category": {g: len(s) for g, s in uniq_by_cat.items()},
            "concept_counts": {g: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                               for g, c in concept_counts.items()},
            "iou_histogram": {"edges": edges, "counts": counts.tolist()},
            "dead_units": int(dead.sum()),
            "invalid_units": int(invalid.sum()),
            "saturated_units": int(saturated.sum()),
            "mean_active_fraction": _s(float(active[~dead & ~invalid].mean()) if (~dead & ~invalid).any() else 0.0),
        },
        "units": units,
    }


#: Why a unit has no label (results.json ``none_reason``), one sentence each.
DEAD_REASON = "dead: its activation never varies over the probe set"
INVALID_REASON = "invalid: non-finite activations, so no threshold, IoU or label is defined"


def _none_reason(dead: bool, saturated: bool, active: float, maximum: float) -> str:
    """Why a unit that is not invalid has no concept (``label`` null)."""
    if dead:
        return DEAD_REASON
    if saturated and active == 0:
        return (f"saturated at its maximum {maximum:.6g} only at isolated positions of its map: "
                "upsampling brings every pixel below that cap, so its region S_k >= T_k is empty")
    if saturated:
        return (f"saturated at its maximum {maximum:.6g} (region S_k >= T_k), "
                "and no concept overlaps that region (every IoU is 0)")
    if active == 0:
        return "its region S_k > T_k is empty on every probe image"
    return "no concept overlaps its active region (every IoU is 0)"


def layer_line(layer: dict) -> str:
    """One console line of a summarised layer (:func:`summarize_layer` plus ``name``/``alias``)."""
    s = layer["summary"]
    flags = [f"{s['dead_units']} dead"]
    if s.get("saturated_units"):
        flags.append(f"{s['saturated_units']} saturated (threshold = maximum; masked S_k >= T_k)")
    if s.get("invalid_units"):
        flags.append(f"{s['invalid_units']} invalid")
    return (f"dissect: layer {layer_title(layer)}: {layer['num_units']} units, {s['detectors']} detectors, "
            f"{s['unique_concepts']} unique concepts, " + ", ".join(flags))


def _invalid_unit(k: int, stats: LayerStats, dataset: BrodenDataset) -> dict:
    """The record of a unit with non-finite activations (``--nonfinite invalid``): no
    threshold, IoU, label or activation is reported, since none of them is defined."""
    return {"unit": k, "label": None, "category": None, "iou": None, "detector": False,
            "iou_interval": None, "detector_interval": None,
            "threshold": None, "active_fraction": None, "max_activation": None, "dead": False,
            "saturated": False, "none_reason": INVALID_REASON,
            "invalid": True, "top_concepts": [], "top_by_category": {},
            "top_images": [_top_image(dataset, i, None) for i in stats.top_indices[k].tolist()]}


def _top_image(dataset: BrodenDataset, i: int, value: float | None) -> dict:
    """A top image's record: its index in the probe set, its file there, the user's own file
    behind it (``source``: see :meth:`~dissect.data.broden.BrodenIndex.source`) and the
    unit's maximum activation on it."""
    name = dataset.index.records[dataset.indices[int(i)]].image
    return {"index": int(i), "image": name, "source": dataset.index.source(name), "max_activation": value}


def _intervals(stats: LayerStats, scores: UnitScores) -> list[list[float]] | None:
    """Each unit's best-IoU interval ``[lo, hi]`` (rounded as the IoUs are), or None when
    pass 3 did not run. They are for the concepts ``unit_scores`` chooses, by construction."""
    if stats.intervals is None:
        return None
    if not np.array_equal(stats.interval_concepts.numpy(), scores.best):
        raise RuntimeError(f"layer {stats.layer}: the intervals were computed for other concepts than "
                           "the summary's labels (a bug: both come from unit_scores)")
    return [[rounded(lo), rounded(hi)] for lo, hi in stats.intervals.tolist()]


def _s(x: float) -> float | None:
    """``x`` in 6 significant digits; None (JSON null) when it is not finite, never 0.0."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.6g}")
