"""Precise RoI pooling (Jiang et al., "Acquisition of Localization Confidence", ECCV 2018), in
plain PyTorch: runs on CPU and CUDA, differentiable in the features and the boxes.

The unified perceptual parsing network pools with the CUDA-only ``PrRoIPool2D`` extension
(``lib/nn/prroi_pool`` in CSAILVision/unifiedparsing). What that kernel computes, for each
box ``(batch index, x0, y0, x1, y1)`` (times ``spatial_scale``) cut into ``ph x pw`` bins:
the exact integral, over each bin, of the feature map's bilinear interpolation, divided by
the bin's area. Feature value ``[i, j]`` sits at the point ``(y, x) = (i, j)``; outside the
map the values are 0; a box of zero (or negative) width or height pools to 0.

The bilinear interpolation is ``f(y, x) = sum_ij F[i, j] tri(y - i) tri(x - j)`` with
``tri(t) = max(0, 1 - |t|)``, so the integral over a bin ``[a, b] x [c, d]`` separates:
``sum_ij F[i, j] (T(b - i) - T(a - i)) (T(d - j) - T(c - j))`` where ``T`` is the
antiderivative of ``tri``. Each bin is then two small matrix products with the map.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _tri_antiderivative(t: Tensor) -> Tensor:
    """``T(t) = integral of max(0, 1 - |u|) du from -inf to t``."""
    t = t.clamp(-1.0, 1.0)
    return torch.where(t < 0, 0.5 * (1 + t) ** 2, 1 - 0.5 * (1 - t) ** 2)


def _bin_weights(start: Tensor, end: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
    """``[R, bins, size]``: the integral of each grid point's hat function over each bin
    along one axis, and ``[R]`` the bins' length."""
    bin_len = (end - start).clamp(min=0) / bins
    lo = start[:, None] + bin_len[:, None] * torch.arange(bins, device=start.device, dtype=start.dtype)
    hi = lo + bin_len[:, None]
    grid = torch.arange(size, device=start.device, dtype=start.dtype)
    weights = _tri_antiderivative(hi[..., None] - grid) - _tri_antiderivative(lo[..., None] - grid)
    return weights, bin_len


def prroi_pool2d(features: Tensor, rois: Tensor, pooled_height: int, pooled_width: int,
                 spatial_scale: float) -> Tensor:
    """Precise RoI pooling of ``features`` ``[N, C, H, W]`` over ``rois`` ``[R, 5]`` rows of
    ``(batch index, x0, y0, x1, y1)``: ``[R, C, pooled_height, pooled_width]``."""
    if features.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"prroi_pool2d takes features [N, C, H, W] and rois [R, 5], got "
                         f"{tuple(features.shape)} and {tuple(rois.shape)}")
    dtype = features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32
    feats = features.to(dtype)
    boxes = rois.to(device=features.device, dtype=dtype)
    scaled = boxes[:, 1:] * float(spatial_scale)
    h, w = feats.shape[-2:]
    wy, bin_h = _bin_weights(scaled[:, 1], scaled[:, 3], int(pooled_height), h)
    wx, bin_w = _bin_weights(scaled[:, 0], scaled[:, 2], int(pooled_width), w)
    area = bin_h * bin_w
    inv_area = torch.where(area > 0, 1.0 / torch.where(area > 0, area, torch.ones_like(area)),
                           torch.zeros_like(area))
    picked = feats[boxes[:, 0].long()]
    out = torch.einsum("rpi,rcij,rqj->rcpq", wy, picked, wx) * inv_area[:, None, None, None]
    return out.to(features.dtype)


class PrRoIPool2D(nn.Module):
    """:func:`prroi_pool2d` as a module, with the extension's constructor
    ``(pooled_height, pooled_width, spatial_scale)`` (it has no parameters)."""

    def __init__(self, pooled_height: int, pooled_width: int, spatial_scale: float):
        super().__init__()
        self.pooled_height = int(pooled_height)
        self.pooled_width = int(pooled_width)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return prroi_pool2d(features, rois, self.pooled_height, self.pooled_width, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"{self.pooled_height}, {self.pooled_width}, spatial_scale={self.spatial_scale}"
