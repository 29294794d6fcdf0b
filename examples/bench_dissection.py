"""Benchmark: dissection time vs. a bare forward pass over the same data, same run.

    python examples/bench_dissection.py                       # toy classifier, 3 layers, 2000 scenes
    python examples/bench_dissection.py --model vgg16 --weights none --layer conv5_3 --data-size 200

The reference is what any use of the probe set costs: load every image with its labels
(same loader, same workers) and run the model over it. "dissect" is both passes of
dissection (thresholds, then IoU) with no cache. Unit-image rendering is timed separately.
Prints the ratio dissect / reference (aim: <= 1.5 on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dissect.cache import default_cache_dir
from dissect.data.broden import make_loader
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.experiments.strips import render_unit_strips
from dissect.models import load_model, resolve_layer
from dissect.data.probe import open_probe_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--layer", action="append", default=[])
    ap.add_argument("--data", default="toyworld")
    ap.add_argument("--data-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--activation-cache-mb", type=int, default=2048,
                    help="0 forces the second forward pass (as for data too large to keep)")
    args = ap.parse_args()

    loaded = load_model(args.model, weights=args.weights, progress=False)
    layers = [resolve_layer(loaded, n)[0] for n in (args.layer or loaded.default_layers)]
    probe = open_probe_data(args.data, loaded.input_size, loaded.mean, loaded.std, default_cache_dir(),
                            args.data_size, progress=False)
    ds = probe.dataset
    model = loaded.module.eval()
    config = DissectConfig(batch_size=args.batch_size, num_workers=args.workers, device="cpu",
                           activation_cache_mb=args.activation_cache_mb)
    print(f"model {loaded.name}, layers {layers}, {len(ds)} images at {ds.input_size}px, "
          f"labels {ds.label_size}, torch threads {torch.get_num_threads()}")

    def reference() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for batch in make_loader(ds, config.batch_size, config.num_workers):
                model(batch["image"])
        return time.perf_counter() - t

    def ours() -> tuple[float, dict]:
        t = time.perf_counter()
        stats = dissect_layers(model, layers, ds, config, progress=False)
        for layer in layers:
            summarize_layer(stats[layer], ds, config)
        return time.perf_counter() - t, stats

    reference()  # warm-up: page cache, thread pools
    ref = min(reference() for _ in range(2))
    t_ours, stats = ours()
    t_ours = min(t_ours, ours()[0])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for layer in layers:
            render_unit_strips(stats[layer], ds, Path(tmp), layer, progress=False)
        t_img = time.perf_counter() - t
    print(f"reference (load probe set + forward): {ref:.2f}s")
    print(f"dissect (thresholds + IoU, {len(layers)} layer(s)): {t_ours:.2f}s")
    print(f"ratio dissect / reference: {t_ours / ref:.2f}")
    print(f"unit images (extra, once per report): {t_img:.2f}s")


if __name__ == "__main__":
    main()
