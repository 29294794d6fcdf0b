"""(e) torchrun with 2 processes against 1 process, the same report on the same machine.

    python3 benchmarks/torchrun_speedup.py --n 2000                # the toy classifier
    python3 benchmarks/torchrun_speedup.py --model toygan --n 1000

Every run starts from an empty cache; 1-process and N-process runs alternate (``--repeat``,
default 3), so that drifts in the machine's load hit both, and the medians are printed. The
N-process run gives each process one thread (torchrun's OMP_NUM_THREADS=1) and its share of
the probe set; the 1-process run has every core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT


def run(nproc: int, args, work: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix=f"{nproc}-", dir=work))   # an empty cache
    report = ["-m", "dissect", "report", "--model", args.model, "--data-size", str(args.n), "--quiet",
              "--device", "cpu", "--cache-dir", str(work / "cache"), "--out", str(work / "site")]
    cmd = [sys.executable, *report] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *report]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=work)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="runs of each; the medians are printed (default 3)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dissect-bench-"))
    runs = [(run(1, args, work), run(args.nproc, args, work)) for _ in range(args.repeat)]
    one = statistics.median(a for a, _ in runs)
    many = statistics.median(b for _, b in runs)
    print(f"{args.model}, {args.n} probe images, median of {len(runs)}: 1 process {one:.1f}s, "
          f"{args.nproc} processes {many:.1f}s")
    print(f"(e) torchrun {args.nproc}-process speed-up = {one / many:.2f}x "
          f"(runs: {', '.join(f'{a:.1f}/{b:.1f}s' for a, b in runs)})")


if __name__ == "__main__":
    main()
