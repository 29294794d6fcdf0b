"""dissect: open up trained vision networks.

Find which human concept each unit of a layer detects (network dissection), measure what
units do, and write the findings as a self-contained static website.
"""

__version__ = "0.1.0"
