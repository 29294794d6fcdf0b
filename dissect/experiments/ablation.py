"""Classifier ablation, as METHOD.md section 2 gives it: which units each class depends on.

For one layer of a classifier:

* **single-unit importance**: for every unit k and class c, the drop in c's balanced accuracy
  (one-vs-rest decision "predicted == c", ``(recall + TNR) / 2``) when unit k alone is
  zeroed; units are ranked per class on the training split and the drops are reported on
  the held-out split. The default ranking (``ranking="observed"``) is the paper's rule:
  units ordered by that observed drop, ties broken by the drop in *expected* balanced
  accuracy (the balanced accuracy of a decision drawn from the softmax). Ties are common in
  a small, redundant network (zeroing one unit flips few decisions), and the expected drop
  orders them without that quantization. ``ranking="expected"`` orders by the expected drop
  first: smoother, but it favours units that raise the class's own probability and
  underweights those whose removal makes *other* images look like the class (its negative
  evidence), so keeping only its top units keeps the recall and loses the true-negative
  rate (toy classifier, forest, keep only the top 20: 64% balanced accuracy with
  ``expected``, 97% with ``observed``, 97% for the full model). Both drops are recorded;
* **top-N curves**: c's balanced accuracy when its N most important units are removed, and
  when all *but* those N are removed, next to the same for N random units (several draws);
* **units important to many classes**: per unit, the number of classes for which it is among
  the top units, to hold against its best IoU from the dissection.

Speed: the layer's activations ``A`` are computed once per image
(:class:`~dissect.experiments.runner.LayerRunner`). The network is split at the layer with
``torch.fx`` (:func:`~dissect.hooks.split_tail`), so each ablation only re-runs the part after
the layer, ``tail(A * mask)``, and many ablations share one batch. Where the graph cannot be
split (data-dependent control flow, a skip connection around the layer, a module called
twice) every ablation runs the whole network with a hook (:class:`~dissect.hooks.Intervene`)
instead; results are the same either way, only slower.

The labeled images are read by :mod:`dissect.data.labeled`, the scores computed by
:mod:`dissect.experiments.metrics`; the adversarial view (PGD from class A to class B) is in
:mod:`dissect.experiments.attack`.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed, memory
from ..data.labeled import (CLASS_CATEGORY, EVAL_SPLIT, RANK_SPLIT, LabeledData, LabeledSplit,
                            labeled_batches, open_labeled_data)
from ..devices import resolve_device
from ..errors import DissectError, SkipError, unknown_choice
from ..hooks import pools_first
from ..slugs import layer_title
from .attack import attack_layer_summary, run_attack
from .metrics import (BOOTSTRAP_DRAWS, INTERVAL_LEVEL, balanced_accuracy, balanced_accuracy_intervals,
                      resample_counts, rounded, spearman, spearman_interval)
from .runner import UNITS, Directions, LayerRunner

DEFAULT_TOP_N: tuple[int | str, ...] = (1, 2, 3, 4, 5, 10, 20, 50, 100, "all")
RANKINGS = ("expected", "observed")
#: The small-sample rule: a class needs this many images in each split (ranking and held-out)
#: before a drop in its balanced accuracy can be told from chance; with fewer, one image moves
#: its recall by more than 10 points. Below it the page carries a banner and the console warns.
MIN_CLASS_IMAGES = 10
#: Fewer ranked classes than this: the many-classes counts take few values, and their
#: correlation with IoU is shown with a caveat.
MIN_CLASSES_FOR_CORRELATION = 10


# =============================================================================== config
@dataclass
class AblationConfig:
    """Parameters of the ablation experiment; every one is written into ``results.json``."""

    layers: tuple[str, ...] = ()     # dissected layers to ablate (path or alias); () = the deepest, ("all",) = all
    top_n: tuple[int | str, ...] = DEFAULT_TOP_N  # sizes N of the top-N curves; "all" = every unit
    important: int = 5               # a unit is "important" to c when among c's top `important`
    list_units: int = 20             # top units listed per class in the results
    random_draws: int = 5            # random unit sets per N for the baseline
    seed: int = 1                    # seeds the random unit sets, the bootstrap (and the attack's random start)
    bootstrap: int = BOOTSTRAP_DRAWS  # resamples of the held-out images behind every 95% interval
    ranking: str = "observed"        # "observed": the paper's rule (ties: expected drop); "expected": expected drop first
    rank_split: str = RANK_SPLIT     # units are ranked on this split ...
    eval_split: str = EVAL_SPLIT     # ... and accuracies reported on this one
    category: str = CLASS_CATEGORY   # Broden category whose whole-image labels are the classes
    attack: bool = True              # run the adversarial view
    attack_epsilon: float = 16 / 255  # L-inf budget in [0, 1] pixel units (the toy classifier resists 8/255)
    attack_steps: int = 10
    attack_step_size: float | None = None  # default 2.5 * epsilon / steps
    attack_pairs: int = 4            # (A, B) pairs: the most confused ones, one per source class
    attack_pair_names: tuple[tuple[str, str], ...] = ()  # explicit pairs instead
    attack_images: int = 24          # images of A attacked per pair (correctly classified ones)
    batch_size: int = 64
    num_workers: int | None = None
    device: str = "auto"
    chunk_mb: int = 128              # largest batch of ablated activations fed to the tail at once (CUDA: more, from free memory)

    def validate(self) -> None:
        if not self.top_n:
            raise DissectError("--ablation-top-n needs at least one size")
        for n in self.top_n:
            if n != "all" and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
                raise DissectError(f"--ablation-top-n: sizes are positive integers or 'all', got {n!r}")
        for name in ("important", "list_units", "random_draws", "attack_steps", "attack_images",
                     "batch_size", "chunk_mb", "bootstrap"):
            if getattr(self, name) < 1:
                raise DissectError(f"ablation {name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.attack_pairs < 0:
            raise DissectError(f"--attack-pairs must be at least 0, got {self.attack_pairs}")
        if not 0.0 < self.attack_epsilon <= 1.0:
            raise DissectError(f"--attack-epsilon must be in (0, 1] (pixel units), got {self.attack_epsilon}")
        if self.attack_step_size is not None and self.attack_step_size <= 0:
            raise DissectError(f"attack step size must be positive, got {self.attack_step_size}")
        if self.ranking not in RANKINGS:
            raise DissectError(f"ablation ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.rank_split == self.eval_split:
            raise DissectError(f"the ranking and evaluation splits must differ (both {self.rank_split!r})")

    @property
    def step_size(self) -> float:
        return self.attack_step_size or 2.5 * self.attack_epsilon / self.attack_steps

    def sizes(self, num_units: int) -> tuple[list[int], list[int]]:
        """``(sizes used, sizes left out because they exceed the layer)``; "all" = num_units."""
        used, dropped = set(), []
        for n in self.top_n:
            if n == "all":
                used.add(num_units)
            elif n > num_units:
                dropped.append(int(n))
            else:
                used.add(int(n))
        return sorted(used), sorted(set(dropped))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["top_n"] = [n for n in self.top_n]
        d["attack_pair_names"] = [list(p) for p in self.attack_pair_names]
        d["attack_step_size"] = round(self.step_size, 8)
        d["attack_epsilon"] = round(self.attack_epsilon, 8)
        d["attack_space"] = "L-inf in [0, 1] pixel space (= epsilon / std per channel in normalized input space), clipped to the pixel box"
        d["balanced_accuracy"] = "(recall + true-negative rate) / 2 of the one-vs-rest decision predicted == c"
        first, then = ("expected balanced accuracy", "balanced accuracy") if self.ranking == "expected" \
            else ("balanced accuracy", "expected balanced accuracy")
        d["ranking_rule"] = (f"units ranked per class by the drop in the class's {first} on the {self.rank_split!r} "
                             f"split when the unit alone is zeroed, ties broken by the drop in its {then}, then by "
                             "unit number; expected balanced accuracy = (mean softmax p_c over c's images + mean "
                             "(1 - p_c) over the other images) / 2")
        d["interval_rule"] = (f"{round(100 * INTERVAL_LEVEL)}% percentile interval over {self.bootstrap} paired "
                              f"bootstrap resamples of the {self.eval_split!r} images (stratified: each class's images "
                              "resampled within the class; a drop's two balanced accuracies scored on the same "
                              f"resampled images; numpy default_rng({self.seed}))")
        d["small_sample_rule"] = (f"fewer than {MIN_CLASS_IMAGES} images of a ranked class in either split: too few "
                                  "to tell a unit's effect on it from chance")
        d.pop("num_workers")
        d.pop("device")
        return d


def parse_top_n(text: str) -> tuple[int | str, ...]:
    """``"1,2,5,all"`` -> ``(1, 2, 5, "all")`` (for the CLI)."""
    out: list[int | str] = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item == "all":
            out.append("all")
            continue
        try:
            v = int(item)
        except ValueError:
            raise DissectError(f"--ablation-top-n: {item!r} is not an integer or 'all'") from None
        if v < 1:
            raise DissectError(f"--ablation-top-n: sizes must be at least 1, got {v}")
        out.append(v)
    if not out:
        raise DissectError("--ablation-top-n needs at least one size, e.g. 1,2,5,10,all")
    return tuple(dict.fromkeys(out))


def parse_epsilon(text: str) -> float:
    """``"8/255"`` or ``"0.03"`` -> the budget in [0, 1] pixel units (for the CLI)."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise DissectError(f"--attack-epsilon {text!r} is not a number such as 8/255 or 0.03") from None
    if not 0.0 < value <= 1.0:
        raise DissectError(f"--attack-epsilon must be in (0, 1] in pixel units (e.g. 8/255), got {text}")
    return value


# =============================================================================== runner
def _to_logits(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)  # e.g. torchvision's GoogLeNetOutputs
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise DissectError(f"the model returned {type(out).__name__}, not a tensor of class scores")


class AblationRunner(LayerRunner):
    """A layer's activations on a labeled split, computed once, and ablations evaluated on them.

    ``run(masks)`` evaluates many ablations: ``masks[j]`` is a ``[units]`` vector (1 = keep,
    0 = zero the unit); with ``directions`` (a basis's features,
    :class:`~dissect.experiments.runner.Directions`) it is a ``[features]`` vector, 0 = remove
    the feature's contribution ``z_f d_f`` at every position. It returns the predicted classes ``[M, N]`` and the expected balanced
    accuracy of each class ``[M, K]``. ``tail_from``: the runner of the other split of the same
    labeled set, whose tail split is reused.
    """

    def __init__(self, model: nn.Module, layer: str, split: LabeledSplit, *, device: torch.device | str = "cpu",
                 batch_size: int = 64, num_workers: int | None = None, chunk_mb: int = 128,
                 tail_from: LayerRunner | None = None, progress: bool = False,
                 directions: Directions = UNITS):
        super().__init__(model, layer, device, tail_from)
        self.directions = directions
        self.batch_size = batch_size
        # the chunk of edited activations: chunk_mb on the CPU, a share of the free memory on CUDA
        self.chunk_elems = max(1, memory.chunk_bytes(self.device, chunk_mb) // 4)
        self.parts = memory.Parts(what="ablation chunk")   # smaller parts on an out-of-memory error
        acts, imgs, keep, skipped = [], [], [], []
        t0 = time.time()
        rows = range(*distributed.shard(len(split.dataset)))   # under torchrun: this process's share
        with torch.inference_mode():
            for batch in tqdm(labeled_batches(split.dataset, batch_size, num_workers, rows),
                              desc=f"ablation: {layer} activations ({split.name})", unit="batch",
                              disable=not progress, leave=False):
                skipped += [p for p, _ in batch.get("bad", [])]
                if "image" not in batch:
                    continue
                x = batch["image"].to(self.device)
                acts.append(self.parts.cat(len(x), lambda s: self.layer_output(x[s], stop=self.tail is not None)))
                if self.tail is None:
                    imgs.append(x)
                keep.append(batch["index"])
        acts, imgs, keep, skipped = _gather_shares(acts, imgs, keep, skipped, self.device)
        if not acts:
            raise DissectError(f"no readable image in the {split.name!r} split")
        self.acts = torch.cat(acts)
        # a basis's codes at each position, from the map (before any pool: a code is not linear in it)
        self.codes = None if directions.units else torch.cat([directions.codes(a) for a in self.acts.split(batch_size)])
        # a tail that reads the layer only through a global average pool (ResNets, the toy):
        # keep the pooled values, the same numbers the tail computes first (a 0/1 unit mask
        # commutes with the pool; a feature's removal is linear in its pooled code), so that
        # every ablation costs [units], not [units, h, w]
        self.pooled = (self.tail is not None and self.acts.dim() == 4 and self.layout is not None
                       and self.layout.identity and pools_first(self.tail))
        if self.pooled:
            self.acts = F.adaptive_avg_pool2d(self.acts, 1)
            self.codes = None if self.codes is None else F.adaptive_avg_pool2d(self.codes, 1)
        self.images = torch.cat(imgs) if imgs else None
        self.indices = torch.cat(keep)      # dataset index of each row
        self.labels = split.labels[self.indices].to(self.device)
        self.skipped = sorted(set(skipped))
        self.split = split.name
        self.seconds_activations = time.time() - t0
        if self.acts.dim() < 2:
            raise DissectError(f"layer {layer!r} output has shape {list(self.acts.shape)}; ablation needs [N, units, ...]")
        self.num_units = directions.count(int(self.acts.shape[1]))   # what a mask is over
        self.num_outputs = int(self.logits(torch.ones(1, self.num_units, device=self.device))[0].shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def _chunks(self, m_total: int):
        """(image slice, mask slice) pairs: image batches of ablations that fit ``chunk_mb``."""
        n = len(self.labels)
        per = max(1, int(np.prod(self.acts.shape[1:])) + (0 if self.codes is None else int(np.prod(self.codes.shape[1:]))))
        if self.tail is None:
            rows = self.batch_size
        else:
            rows = max(1, self.chunk_elems // per)
        b = max(1, min(n, rows))
        m = max(1, rows // b)
        for i0 in range(0, n, b):
            for j0 in range(0, m_total, m):
                yield slice(i0, min(n, i0 + b)), slice(j0, min(m_total, j0 + m))

    def _forward(self, masks: Tensor, rows: slice) -> Tensor:
        """Logits ``[m, b, K]`` of ablations ``masks [m, units]`` on images ``rows``."""
        m, d = masks.shape[0], self.directions
        if self.tail is not None:         # the stored rows repeated, each copy with its mask
            a = self.acts[rows]
            b = a.shape[0]

            def copies(t: Tensor | None) -> Tensor | None:
                return None if t is None else t.unsqueeze(0).expand(m, *t.shape).flatten(0, 1)
            edited = d.keep(copies(a), copies(None if self.codes is None else self.codes[rows]),
                            masks.repeat_interleave(b, 0))
            out = _to_logits(self.rerun(edited))
        else:                             # the images repeated, each copy with its mask
            x = self.images[rows]
            b = x.shape[0]
            rep = masks.repeat_interleave(b, 0)
            out = _to_logits(self.rerun(None, x.repeat(m, *([1] * (x.dim() - 1))),
                                        lambda o: d.keep(o, d.codes(o), rep)))
        return out.float().view(m, -1, out.shape[-1])

    def _parts_forward(self, masks: Tensor, rows: slice) -> Tensor:
        """:meth:`_forward`, its ablations in smaller parts when they do not fit the device."""
        return self.parts.cat(masks.shape[0], lambda s: self._forward(masks[s], rows))

    def logits(self, masks: Tensor) -> Tensor:
        """Logits ``[M, N, K]`` for ablations ``masks`` (keep M small: this holds them all)."""
        masks = masks.to(self.device, torch.float32)
        out = None
        with torch.inference_mode():
            for rows, ms in self._chunks(masks.shape[0]):
                lg = self._parts_forward(masks[ms], rows)
                if out is None:
                    out = torch.empty(masks.shape[0], len(self.labels), lg.shape[-1], device=lg.device)
                out[ms, rows] = lg
        return out

    def run(self, masks: Tensor, progress: bool = False, desc: str = "ablations") -> tuple[Tensor, Tensor]:
        """Predicted classes ``[M, N]`` and the expected balanced accuracy ``[M, K]`` of
        ablations ``masks [M, units]``.

        The expected balanced accuracy of class c is ``(mean over c's images of p_c + mean
        over the other images of (1 - p_c)) / 2`` with ``p`` the softmax: the balanced
        accuracy of a decision drawn from the model's probabilities, its smooth counterpart
        (NaN where a side has no image)."""
        masks = masks.to(self.device, torch.float32)
        if masks.dim() != 2 or masks.shape[1] != self.num_units:
            raise ValueError(f"masks must be [M, {self.num_units}], got {list(masks.shape)}")
        if distributed.active():   # each process evaluates its share of the ablations
            lo, hi = distributed.shard(masks.shape[0])
            parts = distributed.gather_objects([t.cpu() for t in self._run(masks[lo:hi], progress, desc)])
            return tuple(torch.cat([p[i] for p in parts]).to(self.device) for i in range(2))
        return self._run(masks, progress, desc)

    def _run(self, masks: Tensor, progress: bool, desc: str) -> tuple[Tensor, Tensor]:
        M, n, K = masks.shape[0], len(self.labels), self.num_outputs
        preds = torch.empty(M, n, dtype=torch.long, device=self.device)
        pos = torch.zeros(M, K, dtype=torch.float64, device=self.device)
        neg = torch.zeros(M, K, dtype=torch.float64, device=self.device)
        chunks = list(self._chunks(M))
        with torch.inference_mode():
            for rows, ms in tqdm(chunks, desc=desc, unit="batch", disable=not progress, leave=False):
                lg = self._parts_forward(masks[ms], rows)
                preds[ms, rows] = lg.argmax(-1)
                prob = torch.softmax(lg.double(), -1)
                oh = F.one_hot(self.labels[rows], K).double()
                pos[ms] += torch.einsum("mbk,bk->mk", prob, oh)
                neg[ms] += torch.einsum("mbk,bk->mk", 1 - prob, 1 - oh)
        n_pos = torch.bincount(self.labels, minlength=K).double()
        score = 0.5 * (pos / n_pos + neg / (n - n_pos))
        return preds, score


def _gather_shares(acts: list[Tensor], imgs: list[Tensor], keep: list[Tensor], skipped: list[str],
                   device: torch.device) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[str]]:
    """Under torchrun, every process's share of a split's activations (and images, indices,
    unreadable files), in rank order: each process then holds the whole split, as one
    process would, having computed only its share. Unchanged in one process."""
    if not distributed.active():
        return acts, imgs, keep, skipped
    cat = lambda ts: torch.cat(ts).cpu() if ts else None   # noqa: E731
    parts = distributed.gather_objects((cat(acts), cat(imgs), cat(keep), skipped))
    acts, imgs, keep = [[p[i].to(device) for p in parts if p[i] is not None] for i in range(3)]
    return acts, imgs, keep, [f for p in parts for f in p[3]]


def split_runners(model: nn.Module, layer: str, data: LabeledData, config: AblationConfig,
                  device: torch.device | str, progress: bool = False,
                  directions: Directions = UNITS) -> tuple[AblationRunner, AblationRunner]:
    """The runners of the ranking and the evaluation split of ``data`` (one tail split for
    both), removing the layer's units or ``directions``."""
    kw = dict(device=device, batch_size=config.batch_size, num_workers=config.num_workers,
              chunk_mb=config.chunk_mb, progress=progress, directions=directions)
    rank = AblationRunner(model, layer, data.rank, **kw)
    return rank, AblationRunner(model, layer, data.eval, **kw, tail_from=rank)


# =============================================================================== experiment
def unit_ranking(first: Tensor, then: Tensor) -> Tensor:
    """Per class, units by importance: ``[K, units]``, most important first.

    Key: larger ``first [units, K]`` drop, then larger ``then`` drop, then lower unit number.
    :func:`ablate_layer` passes the drops in expected and observed balanced accuracy, in the
    order ``AblationConfig.ranking`` gives."""
    C, K = first.shape
    units = np.arange(C)
    out = np.empty((K, C), dtype=np.int64)
    d, l = first.cpu().double().numpy(), then.cpu().double().numpy()
    for c in range(K):
        dc, lc = np.nan_to_num(d[:, c], nan=-np.inf), np.nan_to_num(l[:, c], nan=-np.inf)
        out[c] = np.lexsort((units, -np.round(lc, 9), -np.round(dc, 9)))
    return torch.from_numpy(out)


def ablate_layer(model: nn.Module, layer: str, data: LabeledData, config: AblationConfig | None = None,
                 *, units: Sequence[dict] | None = None, device: torch.device | str | None = None,
                 progress: bool = False, runners: tuple[AblationRunner, AblationRunner] | None = None) -> dict:
    """Single-unit importance, top-N curves and the many-classes count for one layer.

    ``units`` (the dissection's per-unit records, optional) adds each unit's label and best
    IoU, and the correlation of the many-classes count with IoU. Returns the layer's entry of
    ``results["ablation"]["layers"]`` (see docs/results-schema.md).
    """
    config = config or AblationConfig()
    config.validate()
    dev = resolve_device(config.device) if device is None else torch.device(device)
    t0 = time.time()
    rank, ev = runners if runners is not None else split_runners(model, layer, data, config, dev, progress)
    C = rank.num_units
    K = rank.num_outputs
    names = data.class_names
    if names and len(names) != K:
        raise DissectError(f"the model has {K} outputs but {len(names)} class names; the class names do not "
                           "belong to these weights")
    msgs: list[str] = []
    present = sorted(set(rank.labels.tolist()) | set(ev.labels.tolist()))
    n_rank = torch.bincount(rank.labels, minlength=K).tolist()
    n_eval = torch.bincount(ev.labels, minlength=K).tolist()
    if C == 1:
        msgs.append(f"layer {layer} has 1 unit: the top-N curves have the single point N=1 and the "
                    "random baseline is that same unit")
    sizes, dropped = config.sizes(C)
    if dropped:
        msgs.append(f"N = {', '.join(map(str, dropped))} exceed the {C} units of layer {layer} and were left "
                    f"out (N = all is {C})")

    # ---------------------------------------------------------------- single units
    eye = torch.ones(C + 1, C)
    eye[torch.arange(1, C + 1), torch.arange(C)] = 0.0     # row 0: nothing ablated
    p_rank, l_rank = rank.run(eye, progress, f"ablation: {layer} single units ({rank.split})")
    p_eval, l_eval = ev.run(eye, progress, f"ablation: {layer} single units ({ev.split})")
    ba_rank = balanced_accuracy(p_rank, rank.labels, K).cpu()
    ba_eval = balanced_accuracy(p_eval, ev.labels, K).cpu()
    drop_rank = ba_rank[0:1] - ba_rank[1:]                    # [C, K]
    drop_eval = ba_eval[0:1] - ba_eval[1:]
    exp_drop = (l_rank[0:1] - l_rank[1:]).cpu()           # expected balanced accuracy
    if config.ranking == "expected":
        order = unit_ranking(exp_drop, drop_rank)              # [K, C]
    else:
        order = unit_ranking(drop_rank, exp_drop)
    acc_rank = (p_rank[0] == rank.labels).double().mean().item()
    acc_eval = (p_eval[0] == ev.labels).double().mean().item()

    # ---------------------------------------------------------------- top-N curves
    ranked = [c for c in present if n_rank[c] > 0]
    for c in present:
        if n_rank[c] == 0:
            msgs.append(f"class {names[c] if names else c} has no image in the {rank.split!r} split: its units "
                        "cannot be ranked")
        if n_eval[c] == 0:
            msgs.append(f"class {names[c] if names else c} has no image in the {ev.split!r} split: its balanced "
                        "accuracy is undefined there (shown as none)")
        elif n_eval[c] == len(ev):
            msgs.append(f"class {names[c] if names else c} is the only class in the {ev.split!r} split: its "
                        "true-negative rate, and so its balanced accuracy, is undefined there (shown as none)")
    masks = []
    for c in ranked:
        for n in sizes:
            top = order[c, :n]
            rm = torch.ones(C)
            rm[top] = 0
            kp = torch.zeros(C)
            kp[top] = 1
            masks += [rm, kp]
    gen = torch.Generator().manual_seed(config.seed)
    perms = [torch.randperm(C, generator=gen) for _ in range(config.random_draws)]
    for perm in perms:
        for n in sizes:
            rm = torch.ones(C)
            rm[perm[:n]] = 0
            kp = torch.zeros(C)
            kp[perm[:n]] = 1
            masks += [rm, kp]
    curves = {}
    if masks:
        p_curve, _ = ev.run(torch.stack(masks), progress, f"ablation: {layer} top-N curves")
        ba_curve = balanced_accuracy(p_curve, ev.labels, K).cpu()
        S = len(sizes)
        head = len(ranked) * S * 2
        for i, c in enumerate(ranked):
            block = ba_curve[i * S * 2:(i + 1) * S * 2, c]
            curves[c] = {"remove": block[0::2], "keep": block[1::2]}
        rnd = ba_curve[head:].view(config.random_draws, S, 2, K)
        rnd_mean = rnd.mean(0)
        rnd_std = rnd.std(0, unbiased=False)
    else:
        rnd_mean = rnd_std = torch.full((len(sizes), 2, K), float("nan"))

    # ---------------------------------------------------------------- intervals (held-out images)
    imp = min(config.important, C)
    counts_boot = resample_counts(ev.labels, config.bootstrap, config.seed)
    listed = {c: order[c, :min(max(config.list_units, imp), C)].tolist() for c in ranked}
    pairs = [(k, c) for c in ranked for k in listed[c]]
    drop_iv = dict(zip(pairs, balanced_accuracy_intervals(
        p_eval, ev.labels, [k + 1 for k, _ in pairs], [c for _, c in pairs], counts_boot,
        base_rows=[0] * len(pairs)).tolist()))
    base_iv = dict(zip(present, balanced_accuracy_intervals(p_eval, ev.labels, [0] * len(present), present,
                                                            counts_boot).tolist()))
    curve_iv: dict[int, dict[str, list]] = {}
    if masks:
        S = len(sizes)
        rows = [i * S * 2 + j for i in range(len(ranked)) for j in range(S * 2)]
        iv = balanced_accuracy_intervals(p_curve, ev.labels, rows, [c for c in ranked for _ in range(S * 2)],
                                         counts_boot).tolist()
        for i, c in enumerate(ranked):
            block = iv[i * S * 2:(i + 1) * S * 2]
            curve_iv[c] = {"remove": block[0::2], "keep": block[1::2]}

    correct = (p_eval[0] == ev.labels).cpu().numpy().astype(np.float64)
    acc_iv = np.quantile(counts_boot @ correct / max(1, len(correct)),
                         [(1 - INTERVAL_LEVEL) / 2, (1 + INTERVAL_LEVEL) / 2]).tolist()

    def interval(v: Sequence[float] | None) -> list[float | None] | None:
        return None if v is None or any(x != x for x in v) else [rounded(x) for x in v]

    # ---------------------------------------------------------------- small sample
    few = [c for c in ranked if min(n_rank[c], n_eval[c]) < MIN_CLASS_IMAGES]
    small = None
    if few:
        listed_few = ", ".join(f"{names[c] if names else c} ({n_rank[c]} ranking / {n_eval[c]} held-out)"
                               for c in few[:8]) + (" …" if len(few) > 8 else "")
        detail = (f"{len(few)} of {len(ranked)} ranked classes have fewer than {MIN_CLASS_IMAGES} images in a "
                  f"split ({listed_few}); at these sizes even the bootstrap intervals understate the "
                  "uncertainty (a class's images are resampled among themselves: one image always resamples "
                  "to itself)")
        small = {"min_images": MIN_CLASS_IMAGES, "classes": [names[c] if names else str(c) for c in few],
                 "detail": detail, "warning": f"too few images to separate effects from chance: {detail}"}
        msgs.insert(0, small["warning"])

    # ---------------------------------------------------------------- many classes
    counts = np.zeros(C, dtype=np.int64)
    unit_classes: list[list[dict]] = [[] for _ in range(C)]
    for c in ranked:
        for r, k in enumerate(order[c, :imp].tolist()):
            counts[k] += 1
            unit_classes[k].append({"class": names[c] if names else str(c), "rank": r + 1,
                                    "drop": rounded(drop_eval[k, c].item()),
                                    "drop_interval": interval(drop_iv.get((k, c))),
                                    "drop_rank": rounded(drop_rank[k, c].item()),
                                    "expected_drop_rank": rounded(exp_drop[k, c].item())})

    def cname(c: int) -> str:
        return names[c] if names else str(c)

    classes = []
    for c in present:
        entry = {
            "name": cname(c), "index": int(c), "images_rank": int(n_rank[c]), "images_eval": int(n_eval[c]),
            "balanced_accuracy": rounded(ba_eval[0, c].item()),
            "balanced_accuracy_interval": interval(base_iv.get(c)),
            "balanced_accuracy_rank": rounded(ba_rank[0, c].item()),
            "few_images": c in few,
            "no_curves": _no_curves_reason(n_rank[c], n_eval[c], len(ev), rank.split, ev.split),
        }
        if c in curves:
            lst = order[c, :min(config.list_units, C)].tolist()
            entry["top_units"] = [{"unit": int(k), "drop": rounded(drop_eval[k, c].item()),
                                   "drop_interval": interval(drop_iv.get((k, c))),
                                   "drop_rank": rounded(drop_rank[k, c].item()),
                                   "expected_drop_rank": rounded(exp_drop[k, c].item())} for k in lst]
            entry["remove_top"] = [rounded(v) for v in curves[c]["remove"].tolist()]
            entry["keep_top"] = [rounded(v) for v in curves[c]["keep"].tolist()]
            entry["remove_top_interval"] = [interval(v) for v in curve_iv[c]["remove"]]
            entry["keep_top_interval"] = [interval(v) for v in curve_iv[c]["keep"]]
        else:
            entry["top_units"] = []
            entry["remove_top"] = entry["keep_top"] = None
            entry["remove_top_interval"] = entry["keep_top_interval"] = None
        entry["random_remove"] = [rounded(v) for v in rnd_mean[:, 0, c].tolist()]
        entry["random_keep"] = [rounded(v) for v in rnd_mean[:, 1, c].tolist()]
        entry["random_remove_std"] = [rounded(v) for v in rnd_std[:, 0, c].tolist()]
        entry["random_keep_std"] = [rounded(v) for v in rnd_std[:, 1, c].tolist()]
        classes.append(entry)

    unit_rows = []
    for k in range(C):
        row = {"unit": k, "num_classes": int(counts[k]), "classes": unit_classes[k]}
        if units is not None and k < len(units):
            row["label"] = units[k].get("label")
            row["iou"] = units[k].get("iou")
        unit_rows.append(row)
    many = {"important": imp, "histogram": np.bincount(counts, minlength=1).tolist()}
    if units is not None and len(units) == C:
        iou = np.array([float(u.get("iou") or 0.0) for u in units])
        many["spearman"] = rounded(spearman(counts.astype(float), iou), 4)
        rho_iv = spearman_interval(counts.astype(float), iou, config.bootstrap, config.seed) \
            if many["spearman"] is not None else None
        many["spearman_interval"] = None if rho_iv is None else [rounded(v, 4) for v in rho_iv]
        many["spearman_note"] = _correlation_caveat(len(ranked), small is not None)
        many["mean_iou_by_count"] = {str(n): rounded(float(iou[counts == n].mean()))
                                     for n in np.unique(counts).tolist()}

    return {
        "layer": layer,
        "num_units": C,
        "method": rank.method,
        "top_n": sizes,
        "top_n_dropped": dropped,
        "accuracy": {"rank": rounded(acc_rank), "eval": rounded(acc_eval), "eval_interval": interval(acc_iv)},
        "images": {"rank": len(rank), "eval": len(ev), "skipped": rank.skipped + ev.skipped},
        "classes": classes,
        "class_order": [cname(c) for c in present],
        "importance": {  # [unit][class], classes in class_order
            "eval": [[rounded(drop_eval[k, c].item(), 5) for c in present] for k in range(C)],
            "rank": [[rounded(drop_rank[k, c].item(), 5) for c in present] for k in range(C)],
            "expected_rank": [[rounded(exp_drop[k, c].item(), 6) for c in present] for k in range(C)],
        },
        "units": unit_rows,
        "many_classes": many,
        "small_sample": small,
        "messages": msgs,
        "_order": order,  # used by the attack summary; dropped before writing
        "_seconds": time.time() - t0,
    }


def _no_curves_reason(n_rank: int, n_eval: int, eval_total: int, rank_split: str, eval_split: str) -> str | None:
    """Why a class gets no curves or no balanced accuracy, in the data's own terms; None when
    it gets both."""
    if n_rank == 0 and n_eval == 0:
        return "no image in either split"
    if n_rank == 0:
        return f"no image in the ranking split ({rank_split}; {n_eval} held-out): its units cannot be ranked"
    if n_eval == 0:
        return f"no held-out image (split {eval_split}; {n_rank} ranking): its balanced accuracy is undefined"
    if n_eval == eval_total:
        return (f"the held-out split ({eval_split}) holds no image of another class: the true-negative rate, "
                "and so the balanced accuracy, is undefined")
    return None


def _correlation_caveat(ranked: int, small: bool) -> str | None:
    """The caveat shown beside the many-classes correlation, or None."""
    if ranked < MIN_CLASSES_FOR_CORRELATION:
        return (f"only {ranked} class{'es' if ranked != 1 else ''} ranked: each unit's count takes at most "
                f"{ranked + 1} values, too few for the correlation to mean much")
    if small:
        return "the counts come from classes with too few images to rank units reliably"
    return None


# =============================================================================== report glue
def select_layers(layers: Sequence[dict], wanted: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """``(layers to ablate, the others)``: ``wanted`` names (path or alias), ``("all",)`` for
    every layer, or empty for the last (deepest) one."""
    layers = list(layers)
    if not layers:
        return [], []
    if not wanted:
        return layers[-1:], layers[:-1]
    if "all" in wanted:
        return layers, []
    names = {}
    for l in layers:
        names[l["name"]] = l
        if l.get("alias"):
            names[l["alias"]] = l
    bad = [w for w in wanted if w not in names]
    if bad:
        raise unknown_choice("ablation layer", bad[0], list(names) + ["all"],
                             hint="ablation runs on dissected layers only")
    chosen = list({id(names[w]): names[w] for w in wanted}.values())
    return chosen, [l for l in layers if all(l is not c for c in chosen)]


def ablation_for_report(loaded, layers: Sequence[dict], probe_root: str | os.PathLike | None,
                        data: str | None = None, config: AblationConfig | None = None,
                        progress: bool = True, frontend: str = "python",
                        after_layer: Callable[..., None] | None = None) -> dict:
    """Run the ablation (and attack) for every dissected layer; never raises a DissectError.

    ``layers`` are results.json layer records (``name``, ``slug``, ``units``). Problems with
    the labeled data are written into the returned dict as ``error`` (one line), problems
    with one layer into that layer's entry, so that the rest of the report is still written.
    What is written (and so published) names no local path and no option; what to do is
    said on the console, in the terms of ``frontend`` (``"cli"``: flags, ``"python"``: the
    keywords of :func:`dissect.report`). ``after_layer(model, layer path, labeled data, the
    layer's result, config, device)``, when given, runs after each layer's units on the same
    labeled data (the feature bases' ablation, :mod:`dissect.bases.ablation`); its
    DissectError is noted in the layer's ``messages``.
    """
    config = config or AblationConfig()
    out: dict[str, Any] = {"params": config.to_dict(), "data": None, "layers": {}, "attack": None,
                           "messages": [], "error": None}
    t0 = time.time()

    def note(msg: str) -> None:
        if progress:
            tqdm.write(f"dissect: ablation: {msg}")

    def skipped_because(e: DissectError) -> str:
        """The published reason of ``e``; its advice goes to the console."""
        note(f"skipped: {e.advise(frontend) if isinstance(e, SkipError) else e}")
        return e.reason if isinstance(e, SkipError) else str(e)

    try:
        config.validate()
        dev = resolve_device(config.device)
        source = data if data is not None else probe_root
        if source is None:
            raise SkipError("no class-labeled images for this model's classes (the probe set's scenes are "
                            "not its classes)",
                            cli="pass --ablation-data DIR with one folder of images per class, "
                            "DIR/<class>/*.jpg, to run the ablation (or --no-ablation)",
                            python="pass ablation_data=DIR with one folder of images per class, "
                            "DIR/<class>/*.jpg, to run the ablation (or ablation=False)")
        labeled = open_labeled_data(source, loaded.class_names, loaded.input_size, loaded.mean,
                                    loaded.std, category=config.category, rank_split=config.rank_split,
                                    eval_split=config.eval_split)
    except DissectError as e:
        out["error"] = skipped_because(e)
        return out
    out["data"] = labeled.info()
    out["messages"] += labeled.messages
    for m in labeled.messages:
        note(m)

    try:
        chosen, skipped = select_layers(layers, config.layers)
    except DissectError as e:
        out["error"] = skipped_because(e)
        return out
    if skipped:
        msg = (f"ablation ran on {', '.join(layer_title(l) for l in chosen)} only (the deepest dissected layer); "
               f"not on {', '.join(layer_title(l) for l in skipped)}")
        out["messages"].append(msg)
        more = "--ablation-layer NAME or all" if frontend == "cli" else \
            "ablation=AblationConfig(layers=(NAME,)) or layers=('all',)"
        note(f"{msg} (pass {more})")
    attack = None
    for i, layer in enumerate(chosen):
        name = layer["name"]
        t_layer = time.time()
        try:
            rank, ev = split_runners(loaded.module, name, labeled, config, dev, progress)
            res = ablate_layer(loaded.module, name, labeled, config, units=layer.get("units"),
                               device=dev, progress=progress, runners=(rank, ev))
            if config.attack and config.attack_pairs > 0 and attack is None:
                try:
                    attack = run_attack(loaded, labeled, ev, config, progress=progress)
                except DissectError as e:
                    attack = {"error": str(e), "pairs": []}
                    note(f"attack skipped: {e}")
                out["attack"] = {k: v for k, v in attack.items() if not k.startswith("_")}
            if attack is not None and attack.get("pairs"):
                res["attack"] = attack_layer_summary(loaded.module, name, attack, ev, res, config)
            else:
                res["attack"] = []
            if after_layer is not None:
                try:
                    after_layer(loaded.module, name, labeled, res, config, dev)
                except DissectError as e:
                    res["messages"].append(f"the features' ablation was skipped: {e}")
            for m in res["messages"]:
                note(m)
        except DissectError as e:
            res = {"layer": name, "error": str(e)}
            note(f"layer {layer_title(layer)} skipped: {e}")
        res.pop("_order", None)
        if progress and "_seconds" in res:
            note(f"layer {layer_title(layer)}: {res['method']}, {time.time() - t_layer:.1f}s")
        res.pop("_seconds", None)
        res["slug"] = layer.get("slug", name)
        out["layers"][name] = res
    if progress:
        note(f"done in {time.time() - t0:.1f}s")
    return out
