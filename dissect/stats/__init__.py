"""Streaming, mergeable statistics: quantiles, IoU tallies and top-k images per unit.

Each tally keeps memory that does not grow with the number of images, and each has a
``merge`` so that shards of a probe set can be processed separately and combined.
"""

from .quantile import TopQuantile
from .iou import IoUTally
from .topk import TopK

__all__ = ["TopQuantile", "IoUTally", "TopK"]
