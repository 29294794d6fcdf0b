"""The options of the feature bases (``--basis``, ``--sae-width``, ...) and their CLI group."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dissect.errors import DissectError

#: Every basis a layer can be dissected in; ``units`` (the layer's own axes) is always there.
BASES = ("units", "sae", "pca", "nmf", "rotation")
#: An SAE whose explained variance is below this reconstructs too little of the layer for
#: its features to stand for it: the page says so beside its counts (a finding, not an error).
RECONSTRUCTION_FLOOR = 0.7
#: Most features a dictionary may have (its feature maps are dissected like units).
MAX_FEATURES = 16384


@dataclass(frozen=True)
class BasisOptions:
    """Which feature bases of the deepest dissected layer a report adds, and how they are fit.

    ``bases``: names from :data:`BASES` (``units`` alone: none); None: the default, an SAE
    for the toy classifier with its own weights and default layers, none otherwise. ``sae_width``:
    the SAE's expansion factor (features = width x units); ``sae_k``: its TopK sparsity (active
    features per position), 0 for an L1 penalty of weight ``sae_l1`` instead. ``data``: a
    folder of images to fit the bases on (default: the probe set); ``seed``: of every random
    choice (positions sampled, initial weights, minibatches); ``max_vectors``: activation
    vectors (one per position) the fit uses at most; ``steps``: SAE training steps.
    ``ablation``: whether the features are also ablated beside the units: class by class for
    a classifier whose units are ablated (:mod:`dissect.bases.ablation`), by the generator's
    ablation and insertion for a generator (:mod:`dissect.bases.interventions`). Off by
    default: it runs the units' experiment once more per basis (about 15 s on the toy
    classifier on two CPU cores).
    """

    bases: tuple[str, ...] | None = None
    sae_width: int = 2
    sae_k: int = 4
    sae_l1: float = 0.05
    data: str | None = None
    seed: int = 0
    max_vectors: int = 32768
    steps: int = 300
    epochs: int = 10
    ablation: bool = False

    def validate(self) -> None:
        for b in self.bases or ():
            if b not in BASES:
                raise DissectError(f"--basis must be one of {', '.join(BASES)}, got {b!r}")
        if self.sae_width < 1:
            raise DissectError(f"--sae-width (the SAE's expansion factor) must be at least 1, got {self.sae_width}")
        if self.sae_k < 0:
            raise DissectError(f"--sae-k must be at least 1 (TopK), or 0 for an L1 penalty, got {self.sae_k}")
        if not self.sae_l1 > 0:
            raise DissectError(f"--sae-l1 must be positive, got {self.sae_l1}")
        if self.max_vectors < 16 or self.steps < 1:
            raise DissectError("the bases need at least 16 activation vectors and 1 training step")

    def features(self, default: bool) -> tuple[str, ...]:
        """The bases besides units to dissect; ``default``: whether the model gets the default SAE."""
        chosen = ("sae",) if self.bases is None and default else (self.bases or ())
        return tuple(dict.fromkeys(b for b in chosen if b != "units"))

    def key(self, basis: str) -> dict:
        """What a fitted ``basis`` depends on among these options (its cache key)."""
        common = {"seed": self.seed, "max_vectors": self.max_vectors, "data": self.data}
        if basis == "sae":
            return {**common, "width": self.sae_width, "k": self.sae_k, "steps": self.steps, "epochs": self.epochs,
                    **({"l1": self.sae_l1} if self.sae_k == 0 else {})}
        if basis == "rotation":
            return {"seed": self.seed}
        return common

    def check_layer(self, basis: str, units: int, layer: str) -> None:
        """Refuse a basis that does not fit a layer of ``units`` units (one line, before the fit)."""
        if units < 2:
            raise DissectError(f"layer {layer!r} has {units} unit: a basis of features needs at least 2 "
                               "(drop --basis, or choose a wider layer)")
        if basis == "sae":
            width = self.sae_width * units
            if width > MAX_FEATURES:
                raise DissectError(f"--sae-width {self.sae_width} gives {width} features for the {units} units "
                                   f"of {layer!r}, more than {MAX_FEATURES}; choose a width of at most "
                                   f"{MAX_FEATURES // units}")
            if self.sae_k >= units:
                raise DissectError(f"--sae-k {self.sae_k} does not fit layer {layer!r}: a sparse code of its "
                                   f"{units} units must have fewer active features than units (k < {units})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BasisOptions":
        opts = cls(bases=tuple(args.basis) if args.basis else None, sae_width=args.sae_width, sae_k=args.sae_k,
                   sae_l1=args.sae_l1, data=args.basis_data, seed=args.basis_seed,
                   ablation=args.basis_ablation)
        opts.validate()
        return opts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command line's group of :class:`BasisOptions`."""
    d = BasisOptions()
    g = parser.add_argument_group("feature bases", "dissect learned directions of the deepest layer "
                                  "beside its units (docs/bases.md)")
    g.add_argument("--basis", action="append", choices=BASES, default=None,
                   help="a basis to dissect beside the units: sae (sparse autoencoder), pca, nmf, rotation "
                   "(a random rotation of the units); repeatable; 'units' alone: none (default: sae for "
                   "the toy classifier with its own weights and default layers, none otherwise)")
    g.add_argument("--sae-width", type=int, default=d.sae_width, metavar="F",
                   help=f"the SAE's expansion factor: F x units features (default {d.sae_width})")
    g.add_argument("--sae-k", type=int, default=d.sae_k, metavar="K",
                   help=f"the SAE's active features per position (TopK; default {d.sae_k}); 0: an L1 "
                   "penalty (--sae-l1) instead")
    g.add_argument("--sae-l1", type=float, default=d.sae_l1, metavar="W",
                   help=f"weight of the L1 penalty of an --sae-k 0 SAE (default {d.sae_l1})")
    g.add_argument("--basis-data", default=None, metavar="DIR",
                   help="a folder of images to fit the bases on (default: the probe set's images)")
    g.add_argument("--basis-seed", type=int, default=d.seed, metavar="S",
                   help=f"seed of the fits and of the rotation basis (default {d.seed})")
    g.add_argument("--basis-ablation", action="store_true", default=d.ablation,
                   help="also run the units' experiments with each basis's features, removing a feature's "
                   "contribution z_f d_f from the layer: a classifier's class-by-class ablation, a generator's "
                   "ablation and insertion (painting a feature's code) with their strips")
