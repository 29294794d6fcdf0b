"""(d) Peak memory of a dissection at 1x and 8x the probe set, with --cache-budget 64.

    python3 benchmarks/memory.py --n 500 --budget 64

Each size runs in a fresh process; the peak resident memory (ru_maxrss) of the 8x run should
stay within 10% of the 1x run: activations past the budget are recomputed, not held.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, model_and_layer, peak_rss_mb, toyworld_set


def child(args) -> None:
    from dissect.data.broden import BrodenDataset
    from dissect.experiments.dissection import DissectConfig, dissect_layers
    loaded, layer = model_and_layer(args.model)
    dataset = BrodenDataset(args.data, input_size=loaded.input_size, mean=loaded.mean, std=loaded.std)
    dataset.indices = dataset.indices[:args.n]
    before = peak_rss_mb()
    dissect_layers(loaded.module, [layer], dataset, DissectConfig(activation_cache_mb=args.budget, num_workers=0),
                   progress=False)
    print(json.dumps({"n": args.n, "peak_mb": peak_rss_mb(), "before_mb": before}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=500, help="the 1x probe set (default 500)")
    p.add_argument("--budget", type=int, default=64, metavar="MB")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    loaded, _ = model_and_layer(args.model)
    data = args.data or toyworld_set(Path(tempfile.mkdtemp(prefix="dissect-bench-")), 8 * args.n, loaded.input_size)
    peaks = {}
    for n in (args.n, 8 * args.n):
        out = subprocess.run([sys.executable, __file__, "--child", "--model", args.model, "--n", str(n),
                              "--budget", str(args.budget), "--data", str(data)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
        print(f"  {n:6d} images: peak RSS {peaks[n]:.0f} MB")
    ratio = peaks[8 * args.n] / peaks[args.n]
    print(f"(d) peak RSS at 8x / 1x = {ratio:.3f} (--cache-budget {args.budget} MB; goal <= 1.10)")


if __name__ == "__main__":
    main()
