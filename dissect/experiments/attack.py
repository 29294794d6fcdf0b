"""The adversarial view of ablation (METHOD.md section 2): what an attack does to the units.

A targeted PGD attack (Madry et al. 2018) under an L-inf budget turns correctly classified
images of class A into class B. Steps are taken in [0, 1] pixel space and every iterate is
clipped to the pixel box, so in the model's normalized input space the budget is
``epsilon / std`` per channel. Then, per layer, the change of each unit's mean activation
(over the image and its spatial positions, in units of that unit's spread over the
evaluation images) shows which units the attack suppresses and which it activates, and how
those overlap the units that A and B depend on most (from the single-unit ablations).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import DissectError, unknown_choice
from ..hooks import Trace

SHOWN_UNITS = 10  # units listed per pair as most suppressed / most activated


def pgd_attack(model: nn.Module, x: Tensor, target: Tensor, mean: Sequence[float], std: Sequence[float],
               epsilon: float, steps: int, step_size: float, seed: int = 0) -> Tensor:
    """Targeted L-inf PGD with a random start: returns the adversarial images, normalized.

    ``x`` is normalized input ``(pixels - mean) / std``; ``epsilon`` and ``step_size`` are in
    [0, 1] pixel units. Each step descends the cross-entropy towards ``target`` by
    ``step_size * sign(grad)``, then projects onto the epsilon ball and the pixel box.
    Parameters of ``model`` get no gradient.
    """
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    pixels = (x * s + m).clamp(0, 1).detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    delta = (torch.rand(pixels.shape, generator=gen) * 2 - 1).to(x.device, x.dtype) * epsilon
    delta = (pixels + delta).clamp(0, 1) - pixels
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model((pixels + delta - m) / s)
        loss = F.cross_entropy(logits, target)
        (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = (delta - step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (pixels + delta).clamp(0, 1) - pixels
    return ((pixels + delta.detach() - m) / s).detach()


def choose_pairs(logits: Tensor, labels: Tensor, classes: Sequence[int], count: int) -> list[tuple[int, int]]:
    """The most confused ``(A, B)`` pairs: per source class A its most confused target B (the
    class with the highest mean softmax probability over A's images), sources ordered by that
    probability, at most ``count``."""
    prob = torch.softmax(logits.float(), -1)
    best = []
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
    allowed[list(classes)] = True
    for a in classes:
        sel = labels == a
        if not sel.any():
            continue
        p = prob[sel].mean(0).cpu()
        p = torch.where(allowed, p, torch.full_like(p, -1.0))
        p[a] = -1.0
        b = int(p.argmax())
        if p[b] >= 0:
            best.append((float(p[b]), a, b))
    best.sort(key=lambda t: (-t[0], t[1]))
    return [(a, b) for _, a, b in best[:count]]


def run_attack(loaded, labeled, runner, config, progress: bool = False) -> dict[str, Any]:
    """Attack images of the evaluation split for a few class pairs (``config.attack_*``).

    ``runner`` is the evaluation split's :class:`~dissect.experiments.ablation.AblationRunner`
    (its baseline predictions choose the pairs and the correctly classified images).
    Returns the results' ``attack`` record plus ``_images`` (used per layer, not written).
    """
    model = loaded.module
    names = labeled.class_names
    ones = torch.ones(1, runner.num_units)
    logits = runner.logits(ones)[0]
    preds = logits.argmax(-1)
    labels = runner.labels
    present = sorted(set(labels.tolist()))
    if config.attack_pair_names:
        index = {n: i for i, n in enumerate(names)}
        pairs = []
        for a, b in config.attack_pair_names:
            for n in (a, b):
                if n not in index:
                    raise unknown_choice("attack class", n, names)
            pairs.append((index[a], index[b]))
    else:
        pairs = choose_pairs(logits, labels, present, config.attack_pairs)
    if not pairs:
        raise DissectError("no class pair to attack (the evaluation split needs images of two classes)")
    done: dict[int, tuple[dict, Any]] = {}   # pair index -> (record, (rows, attacked images) or None)
    dev = runner.device
    mine = distributed.split_items(list(range(len(pairs))))   # this process's pairs (each seeded by its index)
    for pi in tqdm(mine, desc="ablation: attack", unit="pair", disable=not progress, leave=False):
        a, b = pairs[pi]
        rows = torch.nonzero((labels == a) & (preds == a)).flatten()[: config.attack_images]
        rec = {"source": names[a], "target": names[b], "source_index": a, "target_index": b,
               "images": int(rows.numel())}
        if rows.numel() == 0:
            rec.update({"success_rate": None, "message": f"no correctly classified {names[a]} image to attack"})
            done[pi] = (rec, None)
            continue
        ds = labeled.eval.dataset
        x = torch.stack([ds[int(runner.indices[r])]["image"] for r in rows.tolist()]).to(dev)
        target = torch.full((len(rows),), b, dtype=torch.long, device=dev)
        adv = pgd_attack(model, x, target, loaded.mean, loaded.std, config.attack_epsilon,
                         config.attack_steps, config.step_size, seed=config.seed + pi)
        with torch.no_grad():
            p_clean = torch.softmax(model(x).float(), -1)
            p_adv = torch.softmax(model(adv).float(), -1)
        rec.update({
            "success_rate": round(float((p_adv.argmax(-1) == b).float().mean()), 6),
            "still_source_rate": round(float((p_adv.argmax(-1) == a).float().mean()), 6),
            "target_probability": {"clean": round(float(p_clean[:, b].mean()), 6),
                                   "attacked": round(float(p_adv[:, b].mean()), 6)},
        })
        done[pi] = (rec, (rows.cpu(), adv.cpu()) if distributed.active() else (rows, adv))
    if distributed.active():   # every rank gets every pair, back on its device
        done = {pi: (rec, None if im is None else (im[0].to(dev), im[1].to(dev)))
                for pi, (rec, im) in distributed.merge_items(done).items()}
    records = [done[pi][0] for pi in range(len(pairs))]
    images = [done[pi][1] for pi in range(len(pairs))]
    return {"params": {"epsilon": config.attack_epsilon, "steps": config.attack_steps,
                       "step_size": config.step_size, "norm": "Linf", "targeted": True,
                       "random_start": True, "images_per_pair": config.attack_images},
            "pairs": records, "_images": images}


def _unit_means(a: Tensor) -> Tensor:
    """Per image and unit, the mean over spatial positions: ``[N, units]``."""
    return a.flatten(2).mean(-1) if a.dim() > 2 else a


def attack_layer_summary(model: nn.Module, layer: str, attack: dict, runner, layer_result: dict,
                         config) -> list[dict]:
    """Per attacked pair, the units of ``layer`` the attack suppresses and activates most, and
    their overlap with the source's and the target's most important units."""
    order = layer_result["_order"]
    C = runner.num_units
    before_all = _unit_means(runner.acts)
    scale = before_all.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    imp = min(config.important, C)
    shown = min(SHOWN_UNITS, C)
    out = []
    for rec, data in zip(attack["pairs"], attack["_images"]):
        row = {"source": rec["source"], "target": rec["target"], "images": rec["images"],
               "success_rate": rec.get("success_rate")}
        if data is None:
            out.append(row)
            continue
        rows, adv = data
        with torch.no_grad(), Trace(model, [layer], stop=True) as tr:
            model(adv)
        after = _unit_means(tr[layer].float())
        before = before_all[rows.to(before_all.device)]
        change = ((after - before) / scale).mean(0).cpu()      # [C], in units of each unit's spread
        raw = (after - before).mean(0).cpu()
        units = np.arange(C)
        ch = change.double().numpy()
        sup = np.lexsort((units, ch))[:shown].tolist()
        act = np.lexsort((units, -ch))[:shown].tolist()
        a, b = rec["source_index"], rec["target_index"]
        top_a = set(order[a, :imp].tolist())
        top_b = set(order[b, :imp].tolist())
        sup_set, act_set = set(np.lexsort((units, ch))[:imp].tolist()), set(np.lexsort((units, -ch))[:imp].tolist())
        row.update({
            "suppressed": [{"unit": int(k), "change": round(float(change[k]), 6), "raw_change": round(float(raw[k]), 6)} for k in sup],
            "activated": [{"unit": int(k), "change": round(float(change[k]), 6), "raw_change": round(float(raw[k]), 6)} for k in act],
            "important": imp,
            "overlap": {
                "suppressed_source": len(sup_set & top_a), "activated_target": len(act_set & top_b),
                "suppressed_target": len(sup_set & top_b), "activated_source": len(act_set & top_a),
                "chance": round(imp * imp / C, 4),
            },
            "mean_change": {
                "source_top": round(float(change[sorted(top_a)].mean()), 6),
                "target_top": round(float(change[sorted(top_b)].mean()), 6),
                "all_units": round(float(change.mean()), 6),
            },
            "source_top_units": sorted(int(k) for k in top_a),
            "target_top_units": sorted(int(k) for k in top_b),
        })
        out.append(row)
    return out
