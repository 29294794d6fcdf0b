"""(a) Dissection time / floor and (b) images per second, for one model and layer.

    python3 benchmarks/floor.py --model toy --n 2000                 # 64 px toy world
    python3 benchmarks/floor.py --model toy --n 500 --size 224       # the toy classifier at Broden's size
    python3 benchmarks/floor.py --model vgg16 --n 200 --size 224      # VGG-16 random weights, conv5_3

The floor: decode the probe set with the same loader and run the model forward once, up to
the layer. The dissection: both passes, every statistic (`dissect_layers`, no cache). With
``--precision`` other than fp32 (on CUDA) it also counts how many unit labels differ from an
fp32 run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import model_and_layer, timed, toyworld_set


def floor_pass(model, layer, dataset, config, device) -> int:
    from dissect.data.broden import make_loader
    from dissect.hooks import Trace
    view = type(dataset).__new__(type(dataset))
    view.__dict__.update(dataset.__dict__)
    view.with_labels = False
    n = 0
    with torch.no_grad():
        for batch in make_loader(view, config.batch_size, config.num_workers, pin_memory=device.type == "cuda"):
            with Trace(model, [layer], stop=True):
                model(batch["image"].to(device, non_blocking=True))
            n += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", help="toy or vgg16 (random weights)")
    p.add_argument("--n", type=int, default=2000, help="probe images (default 2000)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--data", type=Path, default=None, help="a probe set folder (default: a toy world)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-budget", type=int, default=2048, metavar="MB")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the medians are printed (default 3)")
    p.add_argument("--work", type=Path, default=None, help="folder for the probe set (default: a temp folder)")
    args = p.parse_args()
    from dissect.data.broden import BrodenDataset
    from dissect.devices import resolve_device
    from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer

    loaded, layer = model_and_layer(args.model)
    size = args.size or loaded.input_size
    work = args.work or Path(tempfile.mkdtemp(prefix="dissect-bench-"))
    root = args.data or toyworld_set(work, args.n, size)
    dataset = BrodenDataset(root, input_size=size, mean=loaded.mean, std=loaded.std)
    if args.data is None:
        dataset.indices = dataset.indices[:args.n]
    device = resolve_device(args.device)
    config = DissectConfig(batch_size=args.batch_size, device=args.device, precision=args.precision,
                           activation_cache_mb=args.cache_budget)
    model = loaded.module.to(device).eval()
    floor_pass(model, layer, dataset, config, device)       # warm-up: page cache, kernels
    runs = []
    for _ in range(args.repeat):   # floor and dissection alternate, so drifts in load hit both
        t: dict = {}
        with timed("floor", t):
            n = floor_pass(model, layer, dataset, config, device)
        with timed("dissection", t):
            stats = dissect_layers(model, [layer], dataset, config, progress=False)
        runs.append(t)
    floor_s = statistics.median(t["floor"] for t in runs)
    dissect_s = statistics.median(t["dissection"] for t in runs)
    ratios = sorted(t["dissection"] / t["floor"] for t in runs)
    print(f"{loaded.name} {layer} on {n} images at {size} px, {device}, precision {args.precision}, "
          f"median of {len(runs)}:")
    print(f"  floor (decode + forward once) {floor_s:.1f}s = {n / floor_s:.0f} images/s")
    print(f"  dissection (both passes)      {dissect_s:.1f}s = {n / dissect_s:.0f} images/s")
    print(f"  (a) dissection / floor = {statistics.median(ratios):.2f} "
          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.precision != "fp32":
        ref = dissect_layers(model, [layer], dataset, DissectConfig(**{**config.__dict__, "precision": "fp32"}),
                             progress=False)
        a = summarize_layer(stats[layer], dataset, config)["units"]
        b = summarize_layer(ref[layer], dataset, config)["units"]
        diff = sum(ua["label"] != ub["label"] for ua, ub in zip(a, b))
        print(f"  labels that differ from fp32: {diff} of {len(a)}")


if __name__ == "__main__":
    main()
