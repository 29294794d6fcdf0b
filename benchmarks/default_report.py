"""(f) Where the time of the default report goes (`dissect report --out site/`, empty cache).

    python3 benchmarks/default_report.py                 # both toy models, every experiment

Runs the report once under cProfile (which slows it a little) and prints, per step, its
share of the total, then the wall and CPU time of the whole run.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import common  # noqa: F401

STEPS = [
    ("toy world probe set", "probe.py", "open_probe_data"),
    ("generated probe set (generate + segment)", "generated.py", "open_generated_probe"),
    ("dissection passes", "dissection.py", "dissect_layers"),
    ("unit images", "strips.py", "render_unit_strips"),
    ("classifier ablation + attack", "ablation.py", "ablation_for_report"),
    ("generator ablation", "generator.py", "ablation_experiment"),
    ("generator insertion", "generator.py", "insertion_experiment"),
    ("site pages", "build.py", "write_site"),
    ("  of which: the segmenter", "toy.py", "segment"),
    ("  of which: the generator after the layer", "generator.py", "images"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=None, help="folder for the cache and site (default: temp)")
    args = p.parse_args()
    import dissect
    work = args.work or Path(tempfile.mkdtemp(prefix="dissect-bench-"))
    prof = cProfile.Profile()
    w0, c0 = time.perf_counter(), time.process_time()
    prof.runcall(dissect.report, out=work / "site", cache_dir=work / "cache", progress=False)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    stats = pstats.Stats(prof).stats
    total = max(v[3] for v in stats.values())
    print(f"default report: {wall:.1f}s wall, {cpu:.1f}s CPU (user + sys), under cProfile")
    for label, file, func in STEPS:
        cum = sum(v[3] for (f, _, name), v in stats.items() if name == func and f.endswith(file))
        print(f"  {label:44s} {cum:7.1f}s  {100 * cum / total:5.1f}%")


if __name__ == "__main__":
    main()
