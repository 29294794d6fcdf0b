"""Fine-tune the shipped toy classifier on a changed task: ``dissect train toy-finetune``.

The changed task: instead of the scene class, say which of six objects a scene shows
(:data:`FINETUNE_OBJECTS`, one sigmoid output each, binary cross-entropy). Trees, the
concept the scene classes lean on most, are no longer asked for; the sun, clouds, cars,
fences and mountains, which no scene class needs, now are. So units of the last layer move
to new concepts, which the comparison page's fine-tuning transitions show.

Starts from ``toy_classifier.safetensors``; same architecture, same head size (6 outputs),
so the fine-tuned weights load as ``--model toy --weights toy_finetuned.safetensors`` with the
object names as class names (read from ``toy_finetuned.json``). Deterministic given
``--seed``. Scenes: training seeds ``40_000_000 + i``, held-out ``50_000_000 + i`` (disjoint
from the classifier's and from any probe set's). Saved as float16.
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

from dissect.data.toyworld import LABEL_NUMBER, render_scene
from dissect.models.weights import WEIGHTS_DIR, read_state_dict
from dissect.models.zoo.toy import ToyClassifier
from dissect.training.classifier import normalize_images
from dissect.version import __version__

#: The changed task's outputs: whether the scene shows each of these objects.
FINETUNE_OBJECTS = ("sun", "cloud", "car", "fence", "mountain", "house")
TRAIN_SEED_BASE = 40_000_000
HELDOUT_SEED_BASE = 50_000_000


def _scenes(seeds: list[int], progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.empty((len(seeds), 64, 64, 3), np.uint8)
    present = np.zeros((len(seeds), len(FINETUNE_OBJECTS)), np.float32)
    for i, s in enumerate(tqdm(seeds, desc=desc, disable=not progress, leave=False)):
        scene = render_scene(s, 64)
        images[i] = scene.image
        shown = set(np.unique(scene.layers["object"]).tolist())
        present[i] = [LABEL_NUMBER[o] in shown for o in FINETUNE_OBJECTS]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(present)


def presence_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> list[float]:
    """Per object, the fraction of images whose presence ``model`` gets right (logit > 0)."""
    model.eval()
    right = torch.zeros(y.shape[1])
    with torch.no_grad():
        for i in range(0, len(x), batch):
            right += ((model(normalize_images(x[i:i + batch])) > 0).float() == y[i:i + batch]).float().sum(0)
    return (right / len(x)).tolist()


def finetune_classifier(out_dir: str | Path | None = None, seed: int = 0, train_size: int = 3000,
                        heldout_size: int = 500, epochs: int = 2, batch_size: int = 64, lr: float = 1e-3,
                        progress: bool = True) -> dict:
    """Fine-tune the shipped toy classifier on object presence; write ``toy_finetuned.safetensors``
    (float16) and ``toy_finetuned.json`` (the command, seed, accuracy, class names) to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir) if out_dir else WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    xtr, ytr = _scenes([TRAIN_SEED_BASE + i for i in range(train_size)], progress, "training scenes")
    xte, yte = _scenes([HELDOUT_SEED_BASE + i for i in range(heldout_size)], progress, "held-out scenes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ToyClassifier(num_classes=len(FINETUNE_OBJECTS))
    model.load_state_dict(read_state_dict(WEIGHTS_DIR / "toy_classifier.safetensors"))
    before = presence_accuracy(model, xte, yte)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(train_size, generator=gen)
        total = 0.0
        for i in tqdm(range(0, train_size, batch_size), desc=f"epoch {epoch + 1}/{epochs}",
                      disable=not progress, leave=False):
            idx = order[i:i + batch_size]
            x = xtr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = normalize_images(torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x))
            loss = F.binary_cross_entropy_with_logits(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        acc = presence_accuracy(model, xte, yte)
        history.append({"epoch": epoch + 1, "loss": round(total / train_size, 4),
                        "heldout_accuracy": {o: round(a, 4) for o, a in zip(FINETUNE_OBJECTS, acc)}})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {total / train_size:.4f}, held-out accuracy "
                       + ", ".join(f"{o} {a:.3f}" for o, a in zip(FINETUNE_OBJECTS, acc)))
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(out / "toy_finetuned.safetensors"))
    record = {
        "model": "ToyClassifier", "weights_dtype": "float16", "finetuned_from": "toy_classifier.safetensors",
        "task": "object presence (one sigmoid output per object, binary cross-entropy)",
        "class_names": list(FINETUNE_OBJECTS),
        "command": f"dissect train toy-finetune --seed {seed} --train-size {train_size} --epochs {epochs}",
        "seed": seed, "train_size": train_size, "heldout_size": heldout_size, "epochs": epochs,
        "batch_size": batch_size, "lr": lr,
        "train_scene_seeds": f"{TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + train_size - 1}",
        "heldout_scene_seeds": f"{HELDOUT_SEED_BASE}..{HELDOUT_SEED_BASE + heldout_size - 1}",
        "heldout_accuracy_before": {o: round(a, 4) for o, a in zip(FINETUNE_OBJECTS, before)},
        "history": history, "train_seconds": round(time.time() - t0), "tool_version": __version__,
        "torch_version": torch.__version__, "platform": platform.platform(),
    }
    (out / "toy_finetuned.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
