"""The label cache: the dissection of the toy world cold (labels decoded from the PNGs and
written to the cache) and warm (read from the cache), against no label cache at all.

    python3 benchmarks/label_cache.py                       # toy classifier, 2,000 images at 64 px
    python3 benchmarks/label_cache.py --n 500 --bootstrap 0 --repeats 1

Each repeat dissects the model's default layers three times, each from an empty statistics
cache: ``off`` (``--label-cache off``: today's path, the PNGs decoded), ``cold`` (a new label
cache entry: decoded and written) and ``warm`` (the entry read). It prints the median time of
each over the repeats (wall time, and the CPU time of the process and its loader workers,
which a busy machine disturbs less), the ratios cold/warm and cold/off, and checks that the three give the
same statistics bit for bit (thresholds, tallies, top images, and so the IoUs and labels).
It also times one read of the probe set alone (images and labels, no model) with the label
PNGs and with the warm label cache: what the cache itself saves.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import toyworld_set


def same_stats(a, b) -> bool:
    """Whether two dissections (``{layer: LayerStats}``) are identical, tensor by tensor."""
    def same(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(same, x, y))
        return x == y
    return a.keys() == b.keys() and all(same(a[k].to_state(), b[k].to_state()) for k in a)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader's workers), user + system."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def read_probe_set(dataset) -> tuple[float, float]:
    """Wall and CPU seconds to read the probe set once (images and labels, in this process, no model)."""
    from dissect.data.broden import make_loader
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in make_loader(dataset, 64, 0):
        pass
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="toy-world images (default 2000)")
    p.add_argument("--size", type=int, default=64, help="image size in px (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is printed (default 3)")
    p.add_argument("--bootstrap", type=int, default=None,
                   help="bootstrap replicates (default: the report's, 1000)")
    p.add_argument("--layer", action="append", default=None, help="layer(s) to dissect (default: "
                   "the toy classifier's default layers, as the report)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: dissect's)")
    p.add_argument("--data-dir", type=Path, default=None, help="where the toy world is written "
                   "(default: a temporary folder)")
    args = p.parse_args()

    from dissect.data.broden import BrodenDataset
    from dissect.data.label_cache import attach_label_cache
    from dissect.experiments.dissection import DissectConfig, dissect_layers
    from dissect.models.loading import load_model
    from dissect.stats.intervals import IntervalOptions

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        folder = toyworld_set(args.data_dir or Path(tmp), args.n, args.size)
        loaded = load_model("toy", progress=False, input_size=args.size)
        layers = args.layer or list(loaded.default_layers)
        intervals = IntervalOptions() if args.bootstrap is None else IntervalOptions(args.bootstrap)
        config = DissectConfig(num_workers=args.workers, intervals=intervals)
        dataset = BrodenDataset(folder, input_size=args.size, mean=loaded.mean, std=loaded.std)
        fingerprint = (dataset.index.sha256(), dataset.index.files_fingerprint())
        times: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
        cpu: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
        reads: dict[str, list[float]] = {"off": [], "warm": []}
        reference = None
        for r in range(args.repeats):
            cache = Path(tmp) / f"cache-{r}"
            for mode in ("off", "cold", "warm"):
                entry = attach_label_cache(dataset, cache, "off" if mode == "off" else "auto", fingerprint)
                assert (entry is None) == (mode == "off") and (mode != "cold" or entry.writing), mode
                t0, c0 = time.perf_counter(), cpu_seconds()
                stats = dissect_layers(loaded.module, layers, dataset, config, progress=False)
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(cpu_seconds() - c0)
                reference = reference or stats
                if not same_stats(reference, stats):
                    raise SystemExit(f"label cache benchmark: {mode} (repeat {r + 1}) differs from the first run")
            for mode in ("off", "warm"):
                attach_label_cache(dataset, cache, "off" if mode == "off" else "auto", fingerprint)
                reads[mode].append(read_probe_set(dataset))
            print(f"repeat {r + 1}: " + ", ".join(f"{m} {t[-1]:.2f} s (cpu {cpu[m][-1]:.2f} s)"
                                                   for m, t in times.items()), flush=True)
        med = {m: statistics.median(t) for m, t in times.items()}
        mcpu = {m: statistics.median(t) for m, t in cpu.items()}
        mread = {m: statistics.median(t[0] for t in v) for m, v in reads.items()}
        mread_cpu = {m: statistics.median(t[1] for t in v) for m, v in reads.items()}
    print(f"label cache: toy classifier {', '.join(layers)}, toy world {args.n} images at {args.size} px, "
          f"bootstrap {intervals.replicates}, median of {args.repeats}")
    print("                                  wall                        cpu (process + loader workers)")
    print(f"  off  (PNGs decoded, no cache)   {med['off']:6.2f} s                    {mcpu['off']:6.2f} s")
    print(f"  cold (decoded, entry written)   {med['cold']:6.2f} s  cold/off  {med['cold'] / med['off']:.2f}   "
          f"{mcpu['cold']:6.2f} s  cold/off  {mcpu['cold'] / mcpu['off']:.2f}")
    print(f"  warm (entry read)               {med['warm']:6.2f} s  cold/warm {med['cold'] / med['warm']:.2f}   "
          f"{mcpu['warm']:6.2f} s  cold/warm {mcpu['cold'] / mcpu['warm']:.2f}")
    print(f"  reading the probe set alone (images and labels, one process, no model): PNGs "
          f"{mread['off']:.2f} s, label cache {mread['warm']:.2f} s ({mread['off'] / mread['warm']:.2f}x); "
          f"cpu {mread_cpu['off']:.2f} s, {mread_cpu['warm']:.2f} s ({mread_cpu['off'] / mread_cpu['warm']:.2f}x)")
    print("  results: identical bit for bit (off, cold, warm)")


if __name__ == "__main__":
    main()
