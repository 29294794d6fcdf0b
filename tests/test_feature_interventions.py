"""What a feature does in a generator (issue 24, item 3; docs/bases.md): the generator
interventions (ablation, insertion, their strips) run on a basis's features through
:class:`~dissect.experiments.runner.Directions`. A basis whose features are the units
themselves, in another order, must give the units' results feature for unit (a brute-force
identity that catches a wrong edit, a wrong index or a wrong insertion value); a report with
``--basis-ablation`` writes the features' experiments beside the units' and shows them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect.bases.ablation import feature_directions
from dissect.bases.dictionary import Dictionary
from dissect.experiments.generator import (GeneratorExperimentConfig, GeneratorRunner, ablation_experiment,
                                           insertion_experiment, unit_quantiles)
from dissect.models.latents import sample_z
from dissect.models.zoo.toy import TOYGAN_Z_DIM as Z
from dissect.models.zoo.toy import ToyGenerator
from dissect.segmenters.color import ColorNamer


def _permutation(units: int, seed: int | None) -> tuple[torch.Tensor, Dictionary]:
    """Feature f = unit perm[f]: its code is a[perm[f]], its direction the unit's axis
    (``seed`` None: the identity)."""
    perm = torch.arange(units) if seed is None else torch.randperm(units, generator=torch.Generator().manual_seed(seed))
    p = torch.eye(units)[perm]
    return perm, Dictionary("rotation", p, torch.zeros(units), p, torch.zeros(units))


@pytest.mark.parametrize("seed", [None, 3])
def test_features_that_are_the_units_give_the_units_results(seed):
    torch.manual_seed(1)
    gen = ToyGenerator(width=16).eval()
    seg = ColorNamer()
    runner = GeneratorRunner(gen, "layer3", torch.device("cpu"))
    cfg = GeneratorExperimentConfig(top_n=(1, 3), units=3, samples=6, insert_samples=4, curve_samples=2,
                                    random_draws=2, region=8, strip_samples=2, device="cpu")
    z = sample_z(6, 2, Z)
    acts = [runner.acts(z[:4]), runner.acts(z[4:])]
    units = acts[0].shape[1]
    perm, d = _permutation(units, seed)
    dirs = feature_directions(d, "cpu")
    iou_row = np.random.default_rng(0).random(units)
    iou_feat = iou_row[perm.numpy()]                   # feature f has unit perm[f]'s IoU
    concept = "green-c"

    u, us = ablation_experiment(runner, seg, concept, iou_row, cfg, z, acts)
    f, fs = ablation_experiment(runner, seg, concept, iou_feat, cfg, z, acts, directions=dirs)
    assert [int(perm[k]) for k in f["units"]] == u["units"] and f["unit_ious"] == u["unit_ious"]
    assert f["baseline_fraction"] == u["baseline_fraction"] and f["became"] == u["became"]
    assert u["curve"][-1]["drop"] != 0            # the edit does something
    for pu, pf in zip(u["curve"], f["curve"], strict=True):
        assert (pf["n"], pf["fraction"], pf["drop"]) == (pu["n"], pu["fraction"], pu["drop"])
        if seed is None:                               # the same random sets: the same baseline
            assert pf == pu
    assert torch.equal(fs["after"], us["after"]) and torch.equal(fs["before"], us["before"])

    probe = sample_z(8, 5, Z)
    values = unit_quantiles(runner, probe, cfg.insert_quantile, 4)
    codes = unit_quantiles(runner, probe, cfg.insert_quantile, 4, directions=dirs)
    assert torch.equal(codes, values[perm])            # a feature's code quantile is its unit's
    values = torch.rand(units, generator=torch.Generator().manual_seed(0)) * 5   # high enough to paint
    codes = values[perm]                                                         # in this random net
    u, us = insertion_experiment(runner, seg, concept, iou_row, values, cfg, z[:4], [acts[0]])
    f, fs = insertion_experiment(runner, seg, concept, iou_feat, codes, cfg, z[:4], [acts[0]], directions=dirs)
    assert [int(perm[k]) for k in f["units"]] == u["units"] and f["values"] == u["values"]
    assert u["curve"][-1]["added_pixels"] > 0
    assert f["curve"] == u["curve"] and f["contexts"] == u["contexts"] and f["heatmap"] == u["heatmap"]
    assert f["value_rule"].startswith("each feature's") and u["value_rule"].startswith("each unit's")
    if seed is None:
        assert f["random_added_pixels"] == u["random_added_pixels"]
    assert torch.equal(fs["after"], us["after"]) and fs["regions"] == us["regions"]
