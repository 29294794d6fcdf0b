"""Train the shipped toy classifier from scratch: ``dissect train toy-classifier``.

Deterministic given ``--seed`` (single-threaded data order, seeded init, seeded flips).
Scenes come from the toy world with seeds disjoint from any probe set's: training scenes
use seeds ``10_000_000 + i``, held-out scenes ``20_000_000 + i``. The weights are written as
safetensors beside a JSON record of the command, seed, data sizes, time and the
held-out accuracy reached.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dissect.data.toyworld import SCENE_CLASSES, render_batch
from dissect.models.registry import IMAGENET_MEAN, IMAGENET_STD
from dissect.models.weights import WEIGHTS_DIR
from dissect.models.zoo.toy import ToyClassifier
from dissect.version import __version__

TRAIN_SEED_BASE = 10_000_000
HELDOUT_SEED_BASE = 20_000_000


def _render(seeds: list[int], size: int = 64, progress: bool = True, desc: str = "scenes"):
    ims, cls = [], []
    chunk = 500
    for i in tqdm(range(0, len(seeds), chunk), desc=desc, disable=not progress, leave=False):
        a, c = render_batch(seeds[i:i + chunk], size)
        ims.append(a)
        cls.append(c)
    x = torch.from_numpy(np.concatenate(ims)).permute(0, 3, 1, 2).contiguous()  # uint8
    return x, torch.from_numpy(np.concatenate(cls)).long()


def normalize_images(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> float, normalized as the toy models expect."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Fraction of the uint8 images ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(normalize_images(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def compare_with_shipped(history: list[dict], command: str, shipped_record: Path) -> dict | None:
    """Whether this run's epochs match those of the shipped weights' run of the same command
    (same loss and held-out accuracy per epoch): the snapshots' record says so, because
    floating-point sums on another CPU or thread count can make a rerun drift."""
    try:
        record = json.loads(shipped_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("command") != command:
        return None
    theirs = {h["epoch"]: h for h in record.get("history", [])}
    pairs = [(h, theirs.get(h["epoch"])) for h in history]
    same = bool(pairs) and all(t is not None and t["loss"] == h["loss"] and t["heldout_accuracy"] == h["heldout_accuracy"]
                               for h, t in pairs)
    return {"command": command, "same_epochs": same,
            "epochs": [{"epoch": h["epoch"], "loss": h["loss"], "heldout_accuracy": h["heldout_accuracy"],
                        "shipped_loss": t and t["loss"], "shipped_heldout_accuracy": t and t["heldout_accuracy"]}
                       for h, t in pairs],
            "note": "the snapshots are the shipped run's steps" if same else
            "this rerun drifted from the shipped run (its epochs differ: torch on another CPU or thread count "
            "sums differently): the snapshots share its seed, data, schedule and random init (step 0), not its "
            "later weights"}


def snapshot_file(step: int) -> str:
    """The file name of the training snapshot after ``step`` optimizer steps (the step is
    the last number in the name, as ``dissect report --weights 'DIR/*.safetensors'`` reads it)."""
    return f"toy_classifier_step_{step:05d}.safetensors"


def _save_half(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, str(path))


def train_classifier(out_dir: str | Path | None = None, seed: int = 0, train_size: int = 6000,
                     heldout_size: int = 1000, epochs: int = 14, batch_size: int = 64,
                     lr: float = 2e-3, target: float | None = None, progress: bool = True,
                     snapshots: list[int] | None = None) -> dict:
    """Train and save ``toy_classifier.safetensors`` + ``toy_classifier.json``.

    ``target``: stop early once held-out accuracy reaches it (checked after each epoch).

    ``snapshots``: optimizer steps (0 = the random init) after which the weights are saved as
    float16 :func:`snapshot_file` files, beside ``toy_classifier_snapshots.json`` (their
    held-out accuracy and the command). The run is the same run (same data order, same
    learning-rate schedule over ``epochs``) and stops after the last snapshot: the final
    weights and their record are written only when the run reaches its end.
    """
    from safetensors.torch import save_file

    out = Path(out_dir) if out_dir else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    snap_steps = sorted(set(snapshots or []))
    if snap_steps and snap_steps[0] < 0:
        raise ValueError(f"snapshot steps must be >= 0, got {snap_steps[0]}")
    snap_records: list[dict] = []
    xtr, ytr = _render([TRAIN_SEED_BASE + i for i in range(train_size)], progress=progress,
                       desc="training scenes")
    xte, yte = _render([HELDOUT_SEED_BASE + i for i in range(heldout_size)], progress=progress,
                       desc="held-out scenes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ToyClassifier(num_classes=len(SCENE_CLASSES)).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(train_size / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    history = []
    step = 0

    def snapshot() -> None:
        _save_half(model, out / snapshot_file(step))
        snap_records.append({"step": step, "epoch": round(step / math.ceil(train_size / batch_size), 4),
                             "file": snapshot_file(step), "heldout_accuracy": round(accuracy(model, xte, yte), 4)})
        model.train()

    if 0 in snap_steps:
        snapshot()
    for epoch in range(epochs):
        if snap_steps and step >= snap_steps[-1]:
            break
        model.train()
        order = torch.randperm(train_size, generator=gen)
        total, seen = 0.0, 0
        bar = tqdm(range(0, train_size, batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for i in bar:
            idx = order[i:i + batch_size]
            x = xtr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            x = normalize_images(x).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            step += 1
            if step in snap_steps:
                snapshot()
            if snap_steps and step >= snap_steps[-1] and step < steps:
                break
        if seen < train_size:
            break  # stopped inside the epoch, after the last snapshot
        acc = accuracy(model, xte, yte)
        history.append({"epoch": epoch + 1, "loss": round(total / seen, 4), "heldout_accuracy": round(acc, 4)})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {total / seen:.4f}, held-out accuracy {acc:.4f}")
        if snap_steps and snap_steps[-1] < steps:
            if step >= snap_steps[-1]:
                break
            continue  # a snapshot run that ends early never writes the final weights
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(out / "toy_classifier.safetensors"))
        if target is not None and acc >= target:
            break
    command = f"dissect train toy-classifier --seed {seed} --train-size {train_size} --epochs {epochs}"
    if snap_steps:
        shipped = compare_with_shipped(history, command, WEIGHTS_DIR / "toy_classifier.json")
        snap_record = {
            "model": "ToyClassifier", "weights_dtype": "float16",
            "command": command + " --snapshots " + ",".join(map(str, snap_steps)),
            "seed": seed, "train_size": train_size, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "steps_per_epoch": math.ceil(train_size / batch_size), "total_steps": steps,
            "snapshots": snap_records, "epoch_history": history, "shipped_run": shipped,
            "train_seconds": round(time.time() - t0), "tool_version": __version__,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        }
        (out / "toy_classifier_snapshots.json").write_text(json.dumps(snap_record, indent=1) + "\n")
        if step < steps:
            return snap_record
    record = {
        "model": "ToyClassifier", "class_names": list(SCENE_CLASSES),
        "command": command,
        "seed": seed, "train_size": train_size, "heldout_size": heldout_size,
        "train_scene_seeds": f"{TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + train_size - 1}",
        "heldout_scene_seeds": f"{HELDOUT_SEED_BASE}..{HELDOUT_SEED_BASE + heldout_size - 1}",
        "epochs_run": len(history), "batch_size": batch_size, "lr": lr,
        "heldout_accuracy": history[-1]["heldout_accuracy"], "history": history,
        "train_seconds": round(time.time() - t0), "tool_version": __version__,
        "torch_version": torch.__version__, "platform": platform.platform(),
    }
    (out / "toy_classifier.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
