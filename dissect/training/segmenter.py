"""Train the shipped toy segmenter from scratch: ``dissect train toy-segmenter``.

Scenes: seeds ``40_000_000 + i`` for training, ``50_000_000 + i`` held out (disjoint from
every probe, classifier and generator seed). Augmentation: left-right flips, faint "ghost"
objects blended in from another scene (labels unchanged), and on two thirds of the images
slow smooth drifts of brightness and tint, a per-image color gain, a light blur (half of
those) and colored pixel noise, so the segmenter reads the images a small GAN draws as a real
segmenter reads a GAN's: a faint tree shape or a darker patch of grass stays grass. Loss:
cross-entropy on objects plus cross-entropy on parts. The record holds the held-out pixel
accuracy of objects, of parts, and per class.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dissect.data.toyworld import LABEL_NUMBER, LABELS, render_scene
from dissect.models.weights import WEIGHTS_DIR
from dissect.segmenters.toy import SEG_OBJECTS, SEG_PARTS, ToySegmenter
from dissect.version import __version__

SEG_TRAIN_SEED_BASE = 40_000_000
SEG_HELDOUT_SEED_BASE = 50_000_000


def _lookup(names: list[str]) -> np.ndarray:
    """Global toy-world label number -> class index in ``names`` (0 where absent)."""
    lut = np.zeros(max(n for n, _, _ in LABELS) + 1, np.int64)
    for i, name in enumerate(names):
        if name in LABEL_NUMBER:
            lut[LABEL_NUMBER[name]] = i
    return lut


def render_segmentation_set(seeds, progress: bool = False, desc: str = "scenes"):
    """Images ``[N, 3, 64, 64]`` uint8 and targets (objects, parts) ``[N, 64, 64]`` int64."""
    seeds = list(seeds)
    x = torch.empty(len(seeds), 3, 64, 64, dtype=torch.uint8)
    obj = torch.empty(len(seeds), 64, 64, dtype=torch.long)
    part = torch.empty(len(seeds), 64, 64, dtype=torch.long)
    lut_o, lut_p = _lookup(SEG_OBJECTS), _lookup(SEG_PARTS)
    for i, s in enumerate(tqdm(seeds, desc=desc, disable=not progress, leave=False)):
        sc = render_scene(s, 64)
        x[i] = torch.from_numpy(sc.image).permute(2, 0, 1)
        obj[i] = torch.from_numpy(lut_o[sc.layers["object"]])
        part[i] = torch.from_numpy(lut_p[sc.layers["part"]])
    return x, obj, part


@torch.no_grad()
def pixel_accuracy(model: torch.nn.Module, x: torch.Tensor, obj: torch.Tensor, part: torch.Tensor,
                   batch: int = 128) -> dict:
    """Held-out pixel accuracy: objects (all pixels), parts (pixels of objects with parts),
    and the recall of every object and part class."""
    model.eval()
    co = cp = np_ = 0
    no, nparts = len(SEG_OBJECTS), len(SEG_PARTS)
    conf_o = torch.zeros(no, no, dtype=torch.long)
    conf_p = torch.zeros(nparts, nparts, dtype=torch.long)
    for i in range(0, len(x), batch):
        lo, lp = model(x[i:i + batch].float() / 255.0)
        po, pp = lo.argmax(1), lp.argmax(1)
        to, tp = obj[i:i + batch], part[i:i + batch]
        co += (po == to).sum().item()
        has = tp > 0
        cp += (pp == tp)[has].sum().item()
        np_ += has.sum().item()
        conf_o += torch.bincount((to * no + po).flatten(), minlength=no * no).view(no, no)
        conf_p += torch.bincount((tp * nparts + pp).flatten(), minlength=nparts ** 2).view(nparts, nparts)
    recall_o = (conf_o.diag().float() / conf_o.sum(1).clamp(min=1)).tolist()
    recall_p = (conf_p.diag().float() / conf_p.sum(1).clamp(min=1)).tolist()
    return {"object_pixel_accuracy": round(co / obj.numel(), 4),
            "part_pixel_accuracy": round(cp / max(np_, 1), 4),
            "object_recall": {n: round(r, 4) for n, r in zip(SEG_OBJECTS, recall_o)},
            "part_recall": {n: round(r, 4) for n, r in zip(SEG_PARTS[1:], recall_p[1:])}}


def _smooth_field(n: int, cells: int, size: tuple[int, int], gen: torch.Generator,
                  channels: int = 3) -> torch.Tensor:
    """``[n, channels, *size]`` smooth random field: ``cells`` x ``cells`` N(0, 1) noise,
    upsampled bilinearly (the slow shading and tint drifts of a small GAN's images)."""
    noise = torch.randn(n, channels, cells, cells, generator=gen)
    return F.interpolate(noise, size=size, mode="bilinear", align_corners=False)


GHOST_OBJECTS = ("tree", "house", "car", "fence")


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of a ``[N, C, H, W]`` float batch (edges replicated)."""
    k = torch.tensor([0.25, 0.5, 0.25])
    k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3).contiguous()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=x.shape[1])


def _augment(x: torch.Tensor, gen: torch.Generator, obj: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 batch -> float [0, 1]. What a small GAN does to a scene, with the labels kept:
    on half of the images, faint "ghost" objects (the trees, houses, cars and fences of
    another image of the batch, blended in at 10-50% opacity, half of them blurred: too faint
    to be an object, so labeled as what is behind them); on two thirds, slow smooth drifts of
    brightness and tint (so that a darker or bluer patch of grass is still grass, not a tree
    or water), a per-image color gain, then (half of those) a light blur, and colored pixel
    noise."""
    x = x.float() / 255.0
    n = len(x)
    if obj is not None and n > 1:
        ghost = torch.rand(n, generator=gen) < 1 / 2
        things = torch.zeros(len(SEG_OBJECTS), dtype=torch.bool)
        things[[SEG_OBJECTS.index(o) for o in GHOST_OBJECTS]] = True
        other = torch.roll(torch.arange(n), 1)
        alpha = 0.1 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
        mask = (things[obj[other]][:, None] & ghost.view(-1, 1, 1, 1)).float()
        soft_ghost = torch.rand(n, 1, 1, 1, generator=gen) < 0.5  # half of them blurred
        mask = torch.where(soft_ghost, _blur(_blur(mask)), mask) * alpha
        src = torch.where(soft_ghost, _blur(_blur(x[other])), x[other])
        x = x * (1 - mask) + src * mask
    soft = torch.rand(n, generator=gen) < 2 / 3
    if soft.any():
        y = x[soft]
        m = len(y)
        amp = torch.rand(m, 1, 1, 1, generator=gen)
        shade = 1 + 0.12 * amp * _smooth_field(m, 5, y.shape[-2:], gen, 1).clamp(-2.5, 2.5)
        tint = 0.04 * amp * _smooth_field(m, 4, y.shape[-2:], gen, 3).clamp(-2.5, 2.5)
        gain = 1 + 0.08 * torch.randn(m, 3, 1, 1, generator=gen).clamp(-2.5, 2.5)
        y = y * shade * gain + tint
        blur = torch.rand(m, generator=gen) < 0.5
        if blur.any():
            y[blur] = _blur(y[blur])
        sigma = 0.05 * torch.rand(m, 1, 1, 1, generator=gen)
        y = y + torch.randn(y.shape, generator=gen) * sigma
        x[soft] = y.clamp(0, 1)
    return x


def train_segmenter(out_dir: str | Path | None = None, seed: int = 0, train_size: int = 8000,
                    heldout_size: int = 500, steps: int = 3000, batch_size: int = 32,
                    lr: float = 3e-3, progress: bool = True) -> dict:
    """Train and save ``toy_segmenter.safetensors`` + ``toy_segmenter.json``; returns the record."""
    from safetensors.torch import save_file

    out = Path(out_dir) if out_dir else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    xtr, otr, ptr = render_segmentation_set(range(SEG_TRAIN_SEED_BASE, SEG_TRAIN_SEED_BASE + train_size),
                                            progress, "training scenes")
    xte, ote, pte = render_segmentation_set(range(SEG_HELDOUT_SEED_BASE, SEG_HELDOUT_SEED_BASE + heldout_size),
                                            progress, "held-out scenes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ToySegmenter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history, run = [], 0.0
    t_train = time.time()
    for step in tqdm(range(1, steps + 1), desc="toy segmenter", disable=not progress):
        model.train()
        idx = torch.randint(0, train_size, (batch_size,), generator=gen)
        x, o, p = xtr[idx], otr[idx], ptr[idx]
        flip = (torch.rand(batch_size, generator=gen) < 0.5).view(-1, 1, 1)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        o, p = torch.where(flip, o.flip(2), o), torch.where(flip, p.flip(2), p)
        lo, lp = model(_augment(x, gen, o))
        loss = F.cross_entropy(lo, o) + F.cross_entropy(lp, p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run += loss.item()
        if step % 500 == 0 or step == steps:
            acc = pixel_accuracy(model, xte, ote, pte)
            history.append({"step": step, "loss": round(run / (500 if step % 500 == 0 else step % 500), 4),
                            "object_pixel_accuracy": acc["object_pixel_accuracy"],
                            "part_pixel_accuracy": acc["part_pixel_accuracy"]})
            run = 0.0
            if progress:
                tqdm.write(f"step {step}: {history[-1]}")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(out / "toy_segmenter.safetensors"))
    acc = pixel_accuracy(model, xte, ote, pte)
    record = {
        "model": "ToySegmenter", "objects": SEG_OBJECTS, "parts": SEG_PARTS[1:],
        "command": f"dissect train toy-segmenter --seed {seed} --train-size {train_size} --steps {steps}",
        "seed": seed, "train_size": train_size, "heldout_size": heldout_size,
        "train_scene_seeds": f"{SEG_TRAIN_SEED_BASE}..{SEG_TRAIN_SEED_BASE + train_size - 1}",
        "heldout_scene_seeds": f"{SEG_HELDOUT_SEED_BASE}..{SEG_HELDOUT_SEED_BASE + heldout_size - 1}",
        "steps": steps, "batch_size": batch_size, "lr": lr, "history": history,
        "heldout": acc, "train_seconds": round(time.time() - t_train),
        "total_seconds": round(time.time() - t0), "tool_version": __version__,
        "torch_version": torch.__version__, "platform": platform.platform(),
    }
    (out / "toy_segmenter.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
