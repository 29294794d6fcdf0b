"""The pure-PyTorch precise RoI pooling against two independent references: a line-by-line
Python port of the CUDA kernel of PrRoIPool2D (``prroi_pooling_gpu_impl.cu``), and a
brute-force numerical integral of the bilinear map over each bin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect.segmenters.prroi import PrRoIPool2D, prroi_pool2d


def _get(data, h, w):
    H, W = data.shape
    return 0.0 if h < 0 or w < 0 or h >= H or w >= W else float(data[h, w])


def _mat(data, s_h, s_w, e_h, e_w, y0, x0, y1, x1):
    """PrRoIPoolingMatCalculation, as the CUDA kernel writes it."""
    def part(alpha, lim_alpha, beta, lim_beta):
        return ((lim_alpha - 0.5 * lim_alpha ** 2 - alpha + 0.5 * alpha ** 2)
                * (lim_beta - 0.5 * lim_beta ** 2 - beta + 0.5 * beta ** 2))
    out = _get(data, s_h, s_w) * part(x0 - s_w, x1 - s_w, y0 - s_h, y1 - s_h)
    out += _get(data, s_h, e_w) * part(e_w - x1, e_w - x0, y0 - s_h, y1 - s_h)
    out += _get(data, e_h, s_w) * part(x0 - s_w, x1 - s_w, e_h - y1, e_h - y0)
    out += _get(data, e_h, e_w) * part(e_w - x1, e_w - x0, e_h - y1, e_h - y0)
    return out


def kernel_reference(features, rois, ph, pw, scale):
    """PrRoIPoolingForward, one output element at a time."""
    feats = features.double().numpy()
    out = np.zeros((len(rois), feats.shape[1], ph, pw))
    for r, roi in enumerate(rois.double().tolist()):
        b = int(roi[0])
        x0, y0, x1, y1 = (v * scale for v in roi[1:])
        bh, bw = max(y1 - y0, 0.0) / ph, max(x1 - x0, 0.0) / pw
        for c in range(feats.shape[1]):
            data = feats[b, c]
            for i in range(ph):
                for j in range(pw):
                    ws, hs = x0 + bw * j, y0 + bh * i
                    we, he = ws + bw, hs + bh
                    size = max(0.0, bw * bh)
                    if size == 0:
                        continue
                    total = 0.0
                    for wi in range(math.floor(ws), math.ceil(we)):
                        for hi in range(math.floor(hs), math.ceil(he)):
                            total += _mat(data, hi, wi, hi + 1, wi + 1, max(hs, hi), max(ws, wi),
                                          min(he, hi + 1.0), min(we, wi + 1.0))
                    out[r, c, i, j] = total / size
    return torch.from_numpy(out)


def bilinear(data: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The bilinear interpolation of ``data`` [C, H, W] (zero outside) at points y, x: the
    four neighbours' values, weighted by (1 - |dy|)(1 - |dx|)."""
    C, H, W = data.shape
    padded = torch.zeros(C, H + 4, W + 4, dtype=data.dtype)
    padded[:, 2:H + 2, 2:W + 2] = data
    y0, x0 = torch.floor(y), torch.floor(x)
    out = torch.zeros((C,) + y.shape, dtype=data.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            yi, xi = y0 + dy, x0 + dx
            wgt = (1 - (y - yi).abs()) * (1 - (x - xi).abs())
            vals = padded[:, (yi.clamp(-2, H + 1) + 2).long(), (xi.clamp(-2, W + 1) + 2).long()]
            out += wgt * vals
    return out


def brute_force(features, rois, ph, pw, scale, samples=64):
    """The mean of the bilinear map over each bin, by the midpoint rule on a fine grid."""
    feats = features.double()
    out = torch.zeros(len(rois), feats.shape[1], ph, pw, dtype=torch.float64)
    t = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
    for r, roi in enumerate(rois.double().tolist()):
        b = int(roi[0])
        x0, y0, x1, y1 = (v * scale for v in roi[1:])
        bh, bw = max(y1 - y0, 0.0) / ph, max(x1 - x0, 0.0) / pw
        if bh * bw == 0:
            continue
        ys = y0 + bh * (torch.arange(ph, dtype=torch.float64)[:, None] + t).reshape(-1)
        xs = x0 + bw * (torch.arange(pw, dtype=torch.float64)[:, None] + t).reshape(-1)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        vals = bilinear(feats[b], yy, xx).reshape(-1, ph, samples, pw, samples)
        out[r] = vals.mean(dim=(2, 4))
    return out


def random_rois(gen, n, batch, h, w):
    """Boxes with fractional corners, some reaching outside the map, some degenerate."""
    rows = []
    for k in range(n):
        xa, xb = sorted((torch.rand(2, generator=gen) * (w + 4) - 2).tolist())
        ya, yb = sorted((torch.rand(2, generator=gen) * (h + 4) - 2).tolist())
        rows.append([k % batch, xa, ya, xb, yb])
    rows.append([0, 0.0, 0.0, float(w), float(h)])       # the whole map, as the PPM pools it
    rows.append([1 % batch, 2.5, 1.25, 2.5, 3.0])        # zero width -> 0
    rows.append([0, 3.0, 3.0, 1.0, 1.0])                 # inverted -> 0
    rows.append([0, -9.0, -8.0, -3.0, -2.5])             # wholly outside -> 0
    rows.append([0, w - 0.7, h - 0.3, w + 2.2, h + 1.9])  # past the far corner
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("ph,pw,scale", [(1, 1, 1.0), (2, 3, 1.0), (3, 2, 0.5), (6, 6, 1.0)])
def test_equals_the_cuda_kernel_and_the_integral(ph, pw, scale):
    gen = torch.Generator().manual_seed(ph * 10 + pw)
    feats = torch.randn(2, 3, 5, 7, generator=gen)
    rois = random_rois(gen, 6, 2, 5 / scale, 7 / scale)
    ours = prroi_pool2d(feats, rois, ph, pw, scale).double()
    kernel = kernel_reference(feats, rois, ph, pw, scale)
    torch.testing.assert_close(ours, kernel, atol=1e-5, rtol=1e-5)
    brute = brute_force(feats, rois, ph, pw, scale)
    torch.testing.assert_close(ours, brute, atol=2e-3, rtol=2e-3)
    assert torch.all(ours[-4:-1] == 0)  # zero-width, inverted, outside boxes pool to 0


def test_constant_map_inside_and_at_the_border():
    # Away from the border the bilinear map of a constant is that constant; the whole-map box
    # reaches the last half-cell where the map falls to 0 (values past the edge are 0).
    feats = torch.full((1, 1, 6, 6), 2.0)
    inner = prroi_pool2d(feats, torch.tensor([[0, 0.5, 1.0, 4.5, 4.0]]), 2, 2, 1.0)
    torch.testing.assert_close(inner, torch.full((1, 1, 2, 2), 2.0))
    whole = prroi_pool2d(feats, torch.tensor([[0, 0.0, 0.0, 6.0, 6.0]]), 1, 1, 1.0)
    # integral over [0, 6] of the 1-D profile: 5 full cells + a ramp 1 -> 0 (1/2): 5.5 / 6
    torch.testing.assert_close(whole, torch.full((1, 1, 1, 1), 2.0 * (5.5 / 6) ** 2))


def test_module_and_gradients():
    pool = PrRoIPool2D(2, 2, 1.0)
    feats = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.6, 3.1, 2.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, r: pool(f, r), (feats, rois))
    assert "2, 2" in repr(pool)
