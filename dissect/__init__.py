"""dissect: open up trained vision networks.

Find which human concept each unit of a layer detects (network dissection), measure what
units do, and write the findings as a self-contained static website.
"""

from dissect.version import __version__

__all__ = ["__version__"]
