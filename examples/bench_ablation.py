"""Benchmark: the full single-unit ablation sweep vs. the naive way, measured in the same run.

    python examples/bench_ablation.py                      # toy classifier (conv4_2) and VGG-16 (conv5_3)
    python examples/bench_ablation.py --only vgg16 --vgg-images 64 --naive-units 4

"fast" is what ``dissect`` does: run the model up to the layer once per image, split the
network after the layer (torch.fx), then evaluate every single-unit ablation as
``tail(A * mask)``, many ablations per batch (activation time included). "naive" is one full
forward pass of the whole evaluation set per ablated unit, with the unit zeroed by a hook.
The naive time is measured on ``--naive-units`` units spread over the layer and scaled to
all of them (each naive ablation costs the same); the predictions of those units are
checked to be equal to the fast sweep's. Images are toy-world scenes (resized to 224 px for
VGG-16, whose weights are random: speed does not depend on them).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dissect.data.labeled import LabeledSplit, TensorImages
from dissect.data.toyworld import SCENE_CLASSES, image_seed, render_batch
from dissect.experiments.ablation import AblationRunner
from dissect.hooks import ablate
from dissect.models import load_model, resolve_layer
from dissect.models.weights import WEIGHTS_DIR


def scenes(n: int, size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    ims, cls = render_batch([image_seed(99, i) for i in range(n)], 64)
    x = torch.from_numpy(ims).permute(0, 3, 1, 2).float() / 255
    if size != 64:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x, torch.from_numpy(cls) % 1000


def bench(name: str, weights: str, layer: str, n: int, naive_units: int, batch: int) -> dict:
    loaded = load_model(name, weights=weights, progress=False)
    path, _ = resolve_layer(loaded, layer)
    x, y = scenes(n, loaded.input_size, loaded.mean, loaded.std)
    split = LabeledSplit("bench", TensorImages(x), y)
    model = loaded.module.eval()
    torch.manual_seed(0)

    t0 = time.perf_counter()
    runner = AblationRunner(model, path, split, batch_size=batch)
    C = runner.num_units
    eye = torch.ones(C, C) - torch.eye(C)
    preds, _ = runner.run(eye)
    fast = time.perf_counter() - t0

    sample = sorted({round(i * (C - 1) / max(1, naive_units - 1)) for i in range(naive_units)})
    t0 = time.perf_counter()
    same = True
    with torch.inference_mode():
        for k in sample:
            out = []
            with ablate(model, path, [k]):
                for i in range(0, n, batch):
                    out.append(model(x[i:i + batch]).argmax(1))
            same &= torch.equal(torch.cat(out), preds[k])
    naive_each = (time.perf_counter() - t0) / len(sample)
    naive = naive_each * C
    return {"model": f"{name} ({weights or 'shipped'} weights)", "layer": f"{layer} = {path}", "units": C,
            "images": n, "method": runner.method, "fast_s": fast, "naive_s": naive,
            "naive_units_timed": len(sample), "speedup": naive / fast, "equal": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["toy", "vgg16"], default=None)
    ap.add_argument("--toy-images", type=int, default=400)
    ap.add_argument("--vgg-images", type=int, default=32)
    ap.add_argument("--naive-units", type=int, default=3, help="units timed the naive way (then scaled)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, classes {len(SCENE_CLASSES)}")
    rows = []
    if args.only in (None, "toy"):
        toy_w = None if (WEIGHTS_DIR / "toy_classifier.safetensors").is_file() else "none"
        rows.append(bench("toy", toy_w, "conv4_2", args.toy_images, args.naive_units, args.batch_size))
    if args.only in (None, "vgg16"):
        rows.append(bench("vgg16", "none", "conv5_3", args.vgg_images, args.naive_units, args.batch_size))
    for r in rows:
        print(f"{r['model']}, {r['layer']}: {r['units']} single-unit ablations x {r['images']} images "
              f"[{r['method']}]\n  fast {r['fast_s']:.1f} s, naive {r['naive_s']:.1f} s "
              f"(timed on {r['naive_units_timed']} units, scaled to {r['units']}): "
              f"speed-up {r['speedup']:.1f}x; predictions equal: {r['equal']}")


if __name__ == "__main__":
    main()
