"""(g) Feature bases: the SAE's training time and the feature dissection's time against the
units' dissection, on the same probe set (docs/bases.md).

    python3 benchmarks/bases.py --n 2000                   # toy classifier, last layer, default SAE
    python3 benchmarks/bases.py --n 400 --width 4 --k 8 --basis sae --basis pca

Times, without the cache: the units' dissection of the layer; collecting the activation
vectors and fitting each basis; the one dissection pass over all the bases' features.
Bootstrap intervals are off (``--bootstrap 0``) in both, so the passes compare like for like.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import model_and_layer, timed, toyworld_set


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=2000, help="probe images (default 2000)")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--basis", action="append", default=None, help="bases (default: sae)")
    p.add_argument("--width", type=int, default=None, help="SAE expansion factor (default: BasisOptions')")
    p.add_argument("--k", type=int, default=None, help="SAE TopK (default: BasisOptions')")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    from dissect.bases.features import dissect_bases, fit_bases
    from dissect.bases.options import BasisOptions
    from dissect.data.broden import BrodenDataset
    from dissect.experiments.dissection import DissectConfig, dissect_layers
    from dissect.stats.intervals import IntervalOptions

    loaded, layer = model_and_layer(args.model)
    size = args.size or loaded.input_size
    names = tuple(args.basis or ["sae"])
    more = {k: v for k, v in (("sae_width", args.width), ("sae_k", args.k)) if v is not None}
    opts = BasisOptions(bases=names, **more)
    config = DissectConfig(device=args.device, intervals=IntervalOptions(replicates=0))
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ds = BrodenDataset(toyworld_set(Path(tmp), args.n, size), input_size=size)
        with timed("units", times):
            units = dissect_layers(loaded.module, [layer], ds, config, progress=False)[layer]
        c = units.shape[0]
        with timed("fit", times):
            fitted = fit_bases(loaded.module, layer, names, c, ds, opts, {"bench": 1}, Path(tmp), input_size=size,
                               mean=loaded.mean, std=loaded.std, config=config, force=True)
        with timed("features", times):
            stats = dissect_bases(loaded.module, layer, fitted, ds, config, {"bench": 1}, None, progress=False)
    print(f"{args.model} {layer}: {c} units, {args.n} images at {size} px")
    print(f"  units dissected:          {times['units']:7.1f} s")
    for b, r in fitted.items():
        ev = "" if r["explained_variance"] is None else f", explained variance {r['explained_variance']:.3f}, " \
             f"{r['mean_active']:.2f} active"
        print(f"  {b:8s} fit:             {r['seconds']:7.1f} s ({r['dictionary'].num_features} features{ev})")
    print(f"  vectors + fits:           {times['fit']:7.1f} s")
    total = sum(s.shape[0] for s in stats.values())
    print(f"  features dissected:       {times['features']:7.1f} s ({total} features, "
          f"{times['features'] / times['units']:.2f}x the units' time)")


if __name__ == "__main__":
    main()
