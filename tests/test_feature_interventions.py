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


# ------------------------------------------------------------------ the report
@pytest.fixture(scope="module")
def toygan_features(tmp_path_factory):
    """A tiny toy GAN report with an SAE of layer3 and ``--basis-ablation`` (the interventions
    on layer3 too: the features' experiments take the units' from the results)."""
    import json

    from dissect import report
    from dissect.bases.options import BasisOptions
    from dissect.experiments.dissection import DissectConfig
    from dissect.stats.intervals import IntervalOptions
    out = tmp_path_factory.mktemp("toygan-features")
    report(model="toygan", data_size=40, layers=["layer3"], out=out / "site", cache_dir=out / "cache",
           progress=False, reproducible=True,
           config=DissectConfig(top_k=2, num_workers=0, intervals=IntervalOptions(replicates=0)),
           interventions=GeneratorExperimentConfig(top_n=(1, 3), units=3, samples=4, insert_samples=1, curve_samples=1,
                                                   layers=("layer3",), region=4, random_draws=2, strip_samples=2,
                                                   batch_size=8, device="cpu"),
           bases=BasisOptions(bases=("sae",), sae_width=1, ablation=True, steps=50, max_vectors=4096))
    site = out / "site" / "toygan"
    return site, json.loads((site / "results.json").read_text())


def test_report_intervenes_with_the_features_beside_the_units(toygan_features):
    from PIL import Image
    site, r = toygan_features
    iv = r["bases"][0]["interventions"]
    units = next(g for g in r["generator"]["layers"] if g["layer"] == "layer3")
    assert iv["layer"] == "layer3" and iv["bases"] == ["units", "sae"] and iv["units"] is None
    assert iv["ablate"] == [a["concept"] for a in units["ablation"]] == ["tree"]
    assert iv["insert"] == [a["concept"] for a in units["insertion"]] == ["door"]
    feats = iv["features"]["sae"]
    num = r["bases"][0]["features"][0]["num_features"]
    for group in ("ablation", "insertion"):
        (exp,) = feats[group]
        assert all(0 <= f < num for f in exp["units"]) and exp["n_main"] == 3
        assert exp["unit_ious"] == sorted(exp["unit_ious"], reverse=True)     # ranked by the features' IoU
        assert exp["strip"].startswith("interventions/sae-")
        png = site / "layer3" / exp["strip"]
        with Image.open(png) as im:
            assert iv["strip_sizes"][exp["strip"]] == [im.width, im.height]
        assert (site / "layer3" / exp["animation"]).is_file()
    assert feats["insertion"][0]["value_rule"].startswith("each feature's 99.5th-percentile code")
    assert [p["n"] for p in feats["ablation"][0]["curve"]] == [1, 3]
    page = (site / "layer3" / "features.html").read_text()
    assert 'id="basis-interventions"' in page and page.count('src="interventions/') == 4
    for exp in units["ablation"] + units["insertion"] + feats["ablation"] + feats["insertion"]:
        assert f'src="{exp["strip"]}"' in page


def test_basis_ablation_without_the_interventions_is_one_line(tmp_path, capsys):
    from dissect.cli import main
    code = main(["report", "--model", "toygan", "--data-size", "8", "--basis", "sae", "--basis-ablation",
                 "--no-interventions", "--out", str(tmp_path / "site"), "--quiet", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--no-interventions" in err[0], err


def test_the_features_interventions_page_in_a_browser(toygan_features):
    """At 1280 px: no table hides a column, every strip loads at its stated size, every link
    (the feature pages, the interventions page, the animations) resolves."""
    from browser_support import CHROMIUM_ARGS, LAYOUT_JS, SiteBrowser, require_browser
    site, _ = toygan_features
    sync_playwright, exe = require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            sb = SiteBrowser(b, site.parent.resolve().as_uri() + "/", site.parent, viewport={"width": 1280, "height": 900})
            v = sb.visit("toygan/layer3/features.html")
            layout = sb.page.evaluate(LAYOUT_JS)
            sizes = sb.page.evaluate(
                "() => Promise.all([...document.querySelectorAll('#basis-interventions img')].map(e => {"
                " e.loading = 'eager'; return e.decode().then(() => e.naturalWidth === +e.getAttribute('width')"
                " && e.naturalHeight === +e.getAttribute('height'), () => false); }))")
            sb.close()
        finally:
            b.close()
    assert not v.problems and not sb.problems, v.problems + sb.problems
    assert not layout["hidden_columns"], layout
    assert sizes == [True] * 4, sizes
