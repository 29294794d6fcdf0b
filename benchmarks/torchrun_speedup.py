"""(e) torchrun with 2 processes against 1 process, the same report on the same machine.

    python3 benchmarks/torchrun_speedup.py --n 2000                # the toy classifier
    python3 benchmarks/torchrun_speedup.py --model toygan --n 1000

Both runs start from an empty cache. The 2-process run gives each process one thread
(torchrun's OMP_NUM_THREADS=1) and half the probe set; the 1-process run has every core.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT


def run(nproc: int, args, work: Path) -> float:
    report = ["-m", "dissect", "report", "--model", args.model, "--data-size", str(args.n), "--quiet",
              "--device", "cpu", "--cache-dir", str(work / f"cache{nproc}"), "--out", str(work / f"site{nproc}")]
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
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dissect-bench-"))
    one = run(1, args, work)
    many = run(args.nproc, args, work)
    print(f"{args.model}, {args.n} probe images: 1 process {one:.1f}s, {args.nproc} processes {many:.1f}s")
    print(f"(e) torchrun {args.nproc}-process speed-up = {one / many:.2f}x")


if __name__ == "__main__":
    main()
