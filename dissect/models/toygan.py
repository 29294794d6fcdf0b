"""The toy-world generator: a DCGAN-style generator of 64x64 scenes from z ~ N(0, I).

Layout (``z_dim`` 128, base width 64; 3.8M parameters, stored as float16)::

    layer1 ( 4x4,  512 units): ConvTranspose 4x4 from z, BatchNorm, ReLU
    layer2 ( 8x8,  256 units): ConvTranspose 4x4 stride 2, BatchNorm, ReLU
    layer3 (16x16, 128 units): same
    layer4 (32x32,  64 units): same
    output (64x64, 3 channels): ConvTranspose 4x4 stride 2, tanh -> images in [-1, 1]

Units are dissected after each ReLU (the output of ``layerN``), as in GAN dissection where
``layer4`` of a Progressive GAN was the featured layer. The discriminator mirrors the
generator and is only needed for training (it is not shipped).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

TOYGAN_Z_DIM = 128
TOYGAN_WIDTH = 64
TOYGAN_DISC_WIDTH = 32
TOYGAN_DEFAULT_LAYER = ("layer2", "layer3")


def _up(cin: int, cout: int, first: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 4, 1 if first else 2, 0 if first else 1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=False))


class ToyGenerator(nn.Module):
    """z (N, z_dim) or (N, z_dim, 1, 1) -> images (N, 3, 64, 64) in [-1, 1]."""

    def __init__(self, z_dim: int = TOYGAN_Z_DIM, width: int = TOYGAN_WIDTH):
        super().__init__()
        self.z_dim = z_dim
        w = width
        self.layer1 = _up(z_dim, 8 * w, first=True)
        self.layer2 = _up(8 * w, 4 * w)
        self.layer3 = _up(4 * w, 2 * w)
        self.layer4 = _up(2 * w, w)
        self.output = nn.Sequential(nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh())

    @classmethod
    def for_state_dict(cls, state) -> "ToyGenerator":
        """A generator shaped like ``state`` (its z size and base width read from the first
        layer's weights, ``[z_dim, 8 * width, 4, 4]``), so weights of any width load."""
        w = state.get("layer1.0.weight")
        if w is None or w.dim() != 4 or w.shape[1] % 8:
            return cls()  # let the strict loader name what does not fit
        return cls(z_dim=int(w.shape[0]), width=int(w.shape[1]) // 8)

    def forward(self, z: Tensor) -> Tensor:
        x = self.layer1(z.flatten(1)[:, :, None, None])  # [N, z] or [N, z, 1, 1]
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return self.output(x)


class ToyDiscriminator(nn.Module):
    """Mirror of :class:`ToyGenerator`: 64x64 image -> one logit (real vs generated).

    ``spectral=True``: spectral normalization on every conv instead of BatchNorm (SN-GAN).
    """

    def __init__(self, width: int = TOYGAN_DISC_WIDTH, spectral: bool = False):
        super().__init__()
        w = width
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)

        def down(cin, cout, bn=True):
            bn = bn and not spectral
            mods: list[nn.Module] = [sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn))]
            if bn:
                mods.append(nn.BatchNorm2d(cout))
            mods.append(nn.LeakyReLU(0.2 if not spectral else 0.1))
            return mods

        self.net = nn.Sequential(*down(3, w, bn=False), *down(w, 2 * w), *down(2 * w, 4 * w),
                                 *down(4 * w, 8 * w), sn(nn.Conv2d(8 * w, 1, 4, 1, 0)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialization: conv weights N(0, 0.02), BN weights N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def sample_z(n: int, seed: int, z_dim: int = TOYGAN_Z_DIM, start: int = 0) -> Tensor:
    """Latents ``start .. start + n - 1`` of the probe sequence for ``seed``.

    Each latent is drawn from its own generator seeded by ``(seed, index)``, so any slice of
    the sequence is reproducible on its own and independent of the batch size.
    """
    out = np.empty((n, z_dim), np.float32)
    for i in range(n):
        out[i] = np.random.default_rng([int(seed), int(start + i)]).standard_normal(z_dim)
    return torch.from_numpy(out)
