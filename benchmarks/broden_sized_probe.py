"""Write a Broden-sized synthetic probe set: toy-world scenes at 224 px, labels at 112 px.

    python3 benchmarks/broden_sized_probe.py --out /data/broden-sized            # 63,305 images
    python3 benchmarks/broden_sized_probe.py --out /tmp/small --n 2000           # a quick one

The input of the real-model benchmarks (Broden 1 has 63,305 images at 224 px with 112 px
labels); the format is Broden's, so `dissect report --data FOLDER` reads it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)

BRODEN_IMAGES = 63_305


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=BRODEN_IMAGES, help=f"images (default {BRODEN_IMAGES:,}, Broden's)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    from dissect.data.toyworld_probe import write_toyworld
    t0 = time.perf_counter()
    root = write_toyworld(args.out, n=args.n, seed=args.seed, image_size=224, progress=True)
    print(f"wrote {args.n:,} images (224 px, labels 112 px) to {root} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
