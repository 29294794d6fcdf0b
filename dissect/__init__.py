"""dissect: open up trained vision networks.

Find which human concept each unit of a layer detects (network dissection), measure what
units do, and write the findings as a self-contained static website.

The public API, importable from ``dissect`` itself (loaded on first use, so that
``import dissect`` and the command line stay quick)::

    import dissect
    dissect.report(model="toy", out="site")             # what `dissect report` does
    loaded = dissect.from_module(net, name="mynet")     # wrap an nn.Module you hold
    stats = dissect.dissect_layers(net, ["layer4"], dataset)   # raw statistics, no site

See ``docs/architecture.md`` for where each part of the pipeline lives.
"""

from __future__ import annotations

import importlib
from typing import Any

from dissect.version import __version__

#: Public name -> the module that defines it.
_PUBLIC = {
    "report": "dissect.pipeline",
    "run_report": "dissect.pipeline",
    "ReportOptions": "dissect.pipeline",
    "DissectConfig": "dissect.experiments.dissection",
    "dissect_layers": "dissect.experiments.dissection",
    "IntervalOptions": "dissect.stats.intervals",
    "load_model": "dissect.models",
    "from_module": "dissect.models",
    "list_models": "dissect.models",
    "load_segmenter": "dissect.segmenters",
    "write_site": "dissect.site",
    "DissectError": "dissect.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dissect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
