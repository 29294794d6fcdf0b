"""What the benchmark scripts share: a timer, the peak memory, a probe set, a model.

The benchmarks are scripts, not tests: each prints ratios from one run on this machine
(``python3 benchmarks/<name>.py --help``). Run them on a quiet machine; the numbers in the
README came from them.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


@contextmanager
def timed(label: str, into: dict):
    """Wall time of the block into ``into[label]`` (seconds)."""
    t0 = time.perf_counter()
    yield
    into[label] = time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux: ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def toyworld_set(folder: Path, n: int, image_size: int) -> Path:
    """A toy-world probe set of ``n`` images at ``image_size`` px (labels at half size above
    64 px, as Broden), written once and reused."""
    from dissect.data.toyworld_probe import write_toyworld
    return write_toyworld(folder / f"toyworld-n{n}-px{image_size}", n=n, seed=1, image_size=image_size,
                          progress=False)


def model_and_layer(name: str):
    """``toy`` (the shipped weights, its last conv layer) or ``vgg16`` (random weights, conv5_3)."""
    from dissect.models.loading import load_model, resolve_layer
    if name == "toy":
        loaded = load_model("toy", progress=False)
        layer = resolve_layer(loaded, loaded.default_layers[-1])[0]
    else:
        loaded = load_model(name, weights="none", progress=False)
        layer = resolve_layer(loaded, loaded.default_layers[-1])[0]
    return loaded, layer
