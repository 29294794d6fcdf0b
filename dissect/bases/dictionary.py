"""Dictionaries of a layer: a basis of directions in its unit space, and the encoder that
reads each position's activation vector in it.

A :class:`Dictionary` maps a layer's map ``a`` (``[N, C, H, W]``) to feature maps
(``[N, F, H, W]``) position by position: a 1x1 linear map and a nonlinearity (TopK or ReLU for
an SAE, none for PCA and a rotation, the non-negative code for NMF). Its decoder holds each
feature's direction in the unit space, in the layer's own scale: feature ``f`` contributes
``z_f * decoder[f]`` to the layer's vector at a position (what an ablation removes). The fits
(:func:`fit_pca`, :func:`fit_nmf`, :func:`fit_sae`) take activation vectors ``[P, C]`` and
are deterministic for a seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dissect.devices import cpu_threads
from dissect.experiments.rotation import random_rotation, rotate_map, rotation_path

#: Below this many multiply-adds per step (an SAE's batch x features x units; an NMF's
#: vectors x rank x units), a fit runs on one CPU thread.
SMALL_WORK = 2 ** 26
#: How the NMF code of a position is found (the encoder of an NMF dictionary).
NMF_CODE_STEPS = 50


class Dictionary(nn.Module):
    """One basis of a layer of ``C`` units with ``F`` features (see the module doc).

    ``kind``: ``sae-topk`` (TopK of ReLU, ``k``), ``sae-l1`` (ReLU), ``pca`` (none), ``nmf``
    (the non-negative code for ``decoder``) or ``rotation`` (``R a``). The encoder reads
    ``(a - center) / scale``; the code ``z`` reconstructs ``a ~ z @ decoder + center``."""

    def __init__(self, kind: str, encoder: torch.Tensor, bias: torch.Tensor, decoder: torch.Tensor,
                 center: torch.Tensor, scale: float = 1.0, k: int = 0):
        super().__init__()
        self.kind, self.k = kind, int(k)
        self.register_buffer("encoder", encoder.float().contiguous())   # [F, C]
        self.register_buffer("bias", bias.float())                      # [F]
        self.register_buffer("decoder", decoder.float().contiguous())   # [F, C], the layer's scale
        self.register_buffer("center", center.float())                  # [C]
        self.scale = float(scale)

    @property
    def num_features(self) -> int:
        return int(self.encoder.shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes ``[P, F]`` of activation vectors ``x`` ``[P, C]``."""
        x = x.float()
        if self.kind == "nmf":
            return nmf_code(x, self.decoder)
        pre = ((x - self.center) / self.scale) @ self.encoder.T + self.bias
        if self.kind in ("pca", "rotation"):
            return pre
        z = torch.relu(pre)
        if self.kind == "sae-topk":
            top = z.topk(self.k, dim=1)
            z = torch.zeros_like(z).scatter_(1, top.indices, top.values)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The vectors ``[P, C]`` that codes ``z`` reconstruct."""
        return z @ self.decoder + self.center

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Feature maps ``[N, F, H, W]`` of a layer map ``a`` ``[N, C, H, W]``."""
        if self.kind == "rotation":
            return rotate_map(self.encoder, a)     # exactly the rotation experiment's hook
        n, c, h, w = a.shape
        z = self.encode(a.permute(0, 2, 3, 1).reshape(-1, c))
        return z.reshape(n, h, w, -1).permute(0, 3, 1, 2)

    def state(self) -> dict:
        """What the cache file holds (tensors and plain values)."""
        return {"kind": self.kind, "k": self.k, "scale": self.scale,
                **{name: buf.cpu() for name, buf in self.named_buffers()}}

    @classmethod
    def from_state(cls, d: dict) -> "Dictionary":
        return cls(d["kind"], d["encoder"], d["bias"], d["decoder"], d["center"], d["scale"], d["k"])


def explained_variance(d: Dictionary, x: torch.Tensor) -> float:
    """``1 - |x - decode(encode(x))|^2 / |x - mean(x)|^2`` over vectors ``x`` [P, C]."""
    x = x.float()
    residual = (x - d.decode(d.encode(x))).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1.0 - residual / total) if total > 0 else 0.0


def mean_active(d: Dictionary, x: torch.Tensor) -> float:
    """The mean number of non-zero features per vector of ``x``."""
    return float((d.encode(x) != 0).sum(1).float().mean())


# ----------------------------------------------------------------------------- rotation

def rotation_dictionary(units: int, seed: int) -> Dictionary:
    """The random rotation ``R = R(1)`` of the rotation experiment (same seed, same matrix):
    feature ``f`` is ``sum_d R[f, d] a_d``; its direction in the unit space is row ``f``."""
    r = rotation_path(random_rotation(units, seed), [1.0])[0]
    return Dictionary("rotation", r, torch.zeros(units), r, torch.zeros(units))


# ----------------------------------------------------------------------------- PCA

def fit_pca(x: torch.Tensor) -> tuple[Dictionary, torch.Tensor]:
    """The principal components of vectors ``x`` [P, C], by the eigendecomposition of their
    covariance (float64): ``(dictionary, variances)``, components by decreasing variance.
    A component's sign is the one whose projections have the heavier positive tail (third
    moment >= 0): dissection reads a feature's top values."""
    x64 = x.double()
    mean = x64.mean(0)
    xc = x64 - mean
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    var, vec = torch.linalg.eigh(cov)                    # ascending
    var, vec = var.flip(0).clamp_min(0), vec.flip(1)     # [C], [C, C] columns = components
    skew = ((xc @ vec) ** 3).mean(0)
    vec = vec * torch.where(skew < 0, -1.0, 1.0).to(vec)[None, :]
    comps = vec.T                                        # [F=C, C]
    return Dictionary("pca", comps, torch.zeros(comps.shape[0]), comps, mean), var.float()


# ----------------------------------------------------------------------------- NMF

_EPS = 1e-9


def nmf_code(x: torch.Tensor, h: torch.Tensor, steps: int = NMF_CODE_STEPS) -> torch.Tensor:
    """The non-negative codes ``w`` [P, F] with ``x ~ w @ h`` for fixed ``h`` [F, C]: Lee and
    Seung's multiplicative updates from the clamped least-squares start (deterministic)."""
    x = x.clamp_min(0)
    with cpu_threads(_threads_for(x, x.shape[0] * h.shape[0] * h.shape[1])):
        w = (x @ torch.linalg.pinv(h)).clamp_min(1e-3 * float(x.mean()) + _EPS)
        hht, xht = h @ h.T, x @ h.T
        for _ in range(steps):
            w = w * xht / (w @ hht + _EPS)
    return w


def fit_nmf(x: torch.Tensor, rank: int, seed: int, iterations: int = 200) -> Dictionary:
    """Non-negative factors ``x ~ w @ h`` (``h``: [rank, C], rows of unit norm) of
    non-negative vectors ``x`` [P, C] (Lee and Seung 2001, multiplicative updates on the
    squared error, from a seeded random start)."""
    g = torch.Generator().manual_seed(int(seed))
    x = x.float()
    p, c = x.shape
    s = math.sqrt(float(x.mean()) / rank) + _EPS
    w = (torch.rand(p, rank, generator=g) * s).to(x.device) + _EPS
    h = (torch.rand(rank, c, generator=g) * s).to(x.device) + _EPS
    with cpu_threads(_threads_for(x, p * rank * c)):
        for _ in range(iterations):
            h = h * (w.T @ x) / (w.T @ w @ h + _EPS)
            w = w * (x @ h.T) / (w @ (h @ h.T) + _EPS)
    norm = h.norm(dim=1, keepdim=True).clamp_min(_EPS)
    h = h / norm
    order = (w * norm.T).sum(0).argsort(descending=True)   # by total contribution, largest first
    h = h[order]
    return Dictionary("nmf", h, torch.zeros(rank), h, torch.zeros(c))


# ----------------------------------------------------------------------------- SAE

def spread_directions(x: torch.Tensor, n: int, g: torch.Generator, sample: int = 8192) -> torch.Tensor:
    """``n`` unit directions among the vectors ``x`` chosen as k-means++ chooses centres
    (each next one with probability proportional to its squared cosine distance from the
    nearest chosen; seeded by ``g``): the SAE's decoder starts where the data is, rare
    directions included, so that few features die."""
    pick = torch.randint(x.shape[0], (min(sample, x.shape[0]),), generator=g)
    v = x[pick.to(x.device)].cpu().double()
    v = v[v.norm(dim=1) > 0]
    if v.shape[0] == 0:
        v = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    chosen = [int(torch.randint(v.shape[0], (1,), generator=g))]
    dist = 1 - v @ v[chosen[0]]
    for _ in range(n - 1):
        w = dist.clamp_min(0) ** 2
        nxt = int(torch.multinomial(w / w.sum(), 1, generator=g)) if float(w.sum()) > 0 else \
            int(torch.randint(v.shape[0], (1,), generator=g))
        chosen.append(nxt)
        dist = torch.minimum(dist, 1 - v @ v[nxt])
    out = v[chosen] + 1e-3 * torch.randn(n, v.shape[1], generator=g, dtype=torch.float64)
    return (out / out.norm(dim=1, keepdim=True)).float()


def fit_sae(x: torch.Tensor, width: int, k: int, seed: int, steps: int, l1: float = 0.05,
            batch: int = 512, lr: float = 2e-3, epochs: int | None = None) -> Dictionary:
    """A sparse autoencoder of ``width`` features on vectors ``x`` [P, C]: TopK (``k`` > 0,
    Gao et al. 2024) or ReLU with an L1 penalty of weight ``l1`` on ``|z_f| |d_f|`` (``k`` = 0),
    decoder rows of unit norm, on the centred vectors divided by their RMS norm; Adam for
    ``steps`` minibatches of ``batch`` vectors (at most ``epochs`` passes over ``x`` when
    given). Deterministic for ``seed`` on one device."""
    x = x.float()
    device = x.device
    g = torch.Generator().manual_seed(int(seed))
    center = x.mean(0)
    scale = float((x - center).pow(2).sum(1).mean().sqrt()) or 1.0
    xn = (x - center) / scale
    p, c = xn.shape
    dec = spread_directions(xn, width, g).to(device)
    w_dec = nn.Parameter(dec.clone())
    w_enc = nn.Parameter(dec.clone())
    b_enc = nn.Parameter(torch.zeros(width, device=device))
    b_dec = nn.Parameter(torch.zeros(c, device=device))
    opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=lr)
    kind = "sae-topk" if k > 0 else "sae-l1"
    batch = min(batch, p)
    if epochs is not None:
        steps = max(1, min(steps, math.ceil(epochs * p / batch)))
    with cpu_threads(_threads_for(x, batch * width * c)):
        _train(xn, w_enc, b_enc, w_dec, b_dec, opt, g, steps, batch, k, l1)
    with torch.no_grad():
        # the dictionary's centre holds b_dec: (a - centre) / scale = xn - b_dec, as in training
        return Dictionary(kind, w_enc.detach(), b_enc.detach(), w_dec.detach() * scale,
                          center + b_dec.detach() * scale, scale, k)


def _train(xn, w_enc, b_enc, w_dec, b_dec, opt, g, steps: int, batch: int, k: int, l1: float) -> None:
    """Adam steps of the SAE on minibatches of ``xn`` (see :func:`fit_sae`)."""
    p = xn.shape[0]
    for _ in range(steps):
        idx = torch.randint(p, (batch,), generator=g).to(xn.device)
        xb = xn[idx]
        pre = (xb - b_dec) @ w_enc.T + b_enc
        z = torch.relu(pre)
        if k > 0:
            top = z.topk(k, dim=1)
            z = torch.zeros_like(z).scatter(1, top.indices, top.values)
        rec = z @ w_dec + b_dec
        loss = (rec - xb).pow(2).sum(1).mean()
        if k == 0:
            loss = loss + l1 * (z * w_dec.norm(dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=1, keepdim=True).clamp_min(_EPS))


def _threads_for(x: torch.Tensor, work: int) -> int:
    """One CPU thread for a small job (``work`` multiply-adds per step, below
    :data:`SMALL_WORK`), else as many as torch uses."""
    return 1 if x.device.type == "cpu" and work < SMALL_WORK else torch.get_num_threads()
