"""(c) The single-unit ablation sweep against one full pass over the images per unit.

    python3 benchmarks/ablation_sweep.py --n 600                      # toy classifier, last layer
    python3 benchmarks/ablation_sweep.py --model vgg16 --n 200 --size 224

The sweep: the layer's activations once, then the network after the layer for every unit
zeroed (``AblationRunner.run``, many ablations per batch). The naive way: decode the images
and run the whole network with a hook once per unit; timed on ``--naive-units`` units and
scaled to all of them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import model_and_layer, toyworld_set


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=600, help="labeled images (default 600)")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--naive-units", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    from dissect.data.labeled import labeled_batches, open_labeled_data
    from dissect.devices import resolve_device
    from dissect.experiments.ablation import AblationRunner
    from dissect.hooks import Intervene

    loaded, layer = model_and_layer(args.model)
    size = args.size or loaded.input_size
    root = toyworld_set(Path(tempfile.mkdtemp(prefix="dissect-bench-")), args.n, size)
    data = open_labeled_data(root, loaded.class_names if args.model == "toy" else None, size, loaded.mean, loaded.std)
    split = data.rank
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    runner = AblationRunner(loaded.module, layer, split, device=device)
    C = runner.num_units
    eye = torch.ones(C + 1, C)
    eye[torch.arange(1, C + 1), torch.arange(C)] = 0
    runner.run(eye)
    sweep = time.perf_counter() - t0
    model = loaded.module.to(device).eval()
    t1 = time.perf_counter()
    for unit in range(args.naive_units):
        def zero(o, unit=unit):
            o = o.clone()
            o[:, unit] = 0
            return o
        with torch.inference_mode(), Intervene(model, layer, zero):
            for batch in labeled_batches(split.dataset, 64, None):
                if "image" in batch:
                    model(batch["image"].to(device))
    naive = (time.perf_counter() - t1) / args.naive_units * (C + 1)
    print(f"{loaded.name} {layer}: {C} units, {len(runner)} images at {size} px, {device}")
    print(f"  sweep (activations once + {C + 1} tail runs) {sweep:.1f}s; one full pass per unit "
          f"(from {args.naive_units} units) {naive:.1f}s")
    print(f"(c) ablation-sweep speed-up = {naive / sweep:.1f}x")


if __name__ == "__main__":
    main()
