"""Ties at the top (METHOD.md section 4, issue 21): a unit whose top-q threshold is its
maximum (ReLU6, hard-tanh, sigmoid at their cap) is masked ``S_k >= T_k``, flagged
"saturated" and labelled by the region where it is at its cap; every other unit keeps the
strict ``S_k > T_k`` and exactly its old numbers; a unit labelled "none" always says why.
"""

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect import report
from dissect.data.broden import BrodenDataset
from dissect.experiments.dissection import (DEAD_REASON, DissectConfig, active_masks, binarize,
                                            dissect_layers, layer_line, saturated_units,
                                            summarize_layer)
from shared_support import brute_iou

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
N = 60


class Capped(nn.Module):
    """Three units on a 16 x 16 map (the labels are 64 x 64, so maps are upsampled):

    0. a green detector clamped by ReLU6: 60 x the fraction of green pixels in each 4 x 4
       cell, so every cell that is at least 10% green sits at the cap 6.0 exactly;
    1. a random 5 x 5 conv channel with a plain ReLU (unsaturated: its top values differ);
    2. dead (always 0).
    """

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 1, 5, stride=4, padding=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.cap = nn.ReLU6()
        self.units = nn.Identity()

    def forward(self, x):
        rgb = (x * STD + MEAN).clamp(0, 1)
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        green = ((g > r + 0.08) & (g > b + 0.08)).float()[:, None]
        capped = self.cap(60 * F.avg_pool2d(green, 4))
        plain = torch.relu(self.conv(x))
        return self.units(torch.cat([capped, plain, torch.zeros_like(plain)], 1))


def _config(space="activation", **kw):
    return DissectConfig(quantile_space=space, top_k=3, batch_size=16, num_workers=0, device="cpu", **kw)




@pytest.fixture(scope="module")
def probe(toyworld_small):
    return BrodenDataset(toyworld_small, input_size=64, indices=range(N))


@pytest.mark.parametrize("space", ["activation", "upsampled"])
def test_capped_unit_is_labelled_by_its_saturated_region(probe, space):
    ds = probe
    config = _config(space)
    model = Capped().eval()
    stats = dissect_layers(model, ["units"], ds, config, progress=False)["units"]
    sh, sw = ds.label_size
    with torch.no_grad():
        acts = torch.cat([model(ds[i]["image"][None]) for i in range(len(ds))])   # [N, 3, 16, 16]
    ups = F.interpolate(acts, size=(sh, sw), mode="bilinear", align_corners=False)
    src = acts if space == "activation" else ups
    flat = src.transpose(0, 1).reshape(3, -1)
    m = int(math.floor(config.quantile * flat.shape[1])) + 1
    t_ref = torch.sort(flat, dim=1, descending=True).values[:, m - 1]
    assert torch.equal(stats.thresholds, t_ref)
    # the capped unit ties at the top: threshold = maximum = 6, so the strict mask is empty
    assert stats.thresholds[0].item() == 6.0 == stats.maximum[0].item()
    assert not (ups[:, 0] > t_ref[0]).any()
    assert stats.thresholds[1] < stats.maximum[1]                    # unit 1 does not tie
    assert stats.saturated.tolist() == [True, False, False]

    prim = ds.index.primary_category_tensor()
    got = stats.iou(prim, len(ds.index.categories)).numpy()
    # the saturated unit, against a brute force with the >= rule
    ref0 = brute_iou(ds, (ups[:, 0] >= t_ref[0]).numpy())
    np.testing.assert_allclose(got[0], ref0, atol=1e-12)
    # the unsaturated unit keeps the strict rule: exactly the strict brute force
    ref1 = brute_iou(ds, (ups[:, 1] > t_ref[1]).numpy())
    np.testing.assert_allclose(got[1], ref1, atol=1e-12)

    layer = summarize_layer(stats, ds, config)
    u0, u1, u2 = layer["units"]
    assert u0["label"] == "green" and u0["category"] == "color" and u0["detector"]
    assert u0["iou"] >= 0.5 and u0["iou"] == pytest.approx(ref0.max(), abs=1e-6)
    assert u0["saturated"] is True and u0["none_reason"] is None and u0["dead"] is False
    assert u0["active_fraction"] > 0.1   # the cap covers far more than q of the pixels
    assert u1["saturated"] is False and u1["iou"] == pytest.approx(ref1.max(), abs=1e-6)
    assert u2["dead"] and u2["label"] is None and u2["none_reason"] == DEAD_REASON
    assert u2["saturated"] is False
    assert layer["summary"]["saturated_units"] == 1 and layer["summary"]["dead_units"] == 1


def test_saturated_rule_is_the_only_change(probe):
    """With no saturated unit the new code path is the strict one, bit for bit: the
    unsaturated unit's tallies are those of a layer holding only that unit."""
    ds = probe
    config = _config()
    both = dissect_layers(Capped(), ["units"], ds, config, progress=False)["units"]

    class Only(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Capped()
            self.units = nn.Identity()

        def forward(self, x):
            return self.units(self.inner(x)[:, 1:])

    alone = dissect_layers(Only(), ["units"], ds, config, progress=False)["units"]
    assert not alone.saturated.any()
    for key in ("inter", "unit_cat", "active"):
        assert torch.equal(both.tally[key][1], alone.tally[key][0]), key


def test_active_masks_shortcut_equals_upsampling_every_map():
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(6, 5, 7, 7, generator=g) * 3).clamp(max=6.0)   # ReLU6-like
    acts[:, 4] = 0
    acts[2, 4, 2:5, 2:5] = 6.0                      # unit 4 reaches its cap on one image only
    thresholds = torch.tensor([6.0, 2.0, 6.0, 5.5, 6.0])
    saturated = torch.tensor([True, False, True, False, True])
    for size in [(37, 37), (64, 64)]:
        img, unit, masks = active_masks(acts, thresholds, size, saturated=saturated)
        up = F.interpolate(acts, size=size, mode="bilinear", align_corners=False)
        full = binarize(up, thresholds.view(1, -1, 1, 1), saturated.view(1, -1, 1, 1))
        # every non-empty mask is returned (the skipped maps upsample to empty masks), each
        # equal to the one of upsampling every map
        kept = torch.zeros(full.shape[:2], dtype=torch.bool)
        kept[img, unit] = True
        assert not (full.flatten(2).any(2) & ~kept).any()
        assert torch.equal(masks, full[img, unit])
        # without ``saturated``: the strict rule everywhere, as before this change
        img2, unit2, masks2 = active_masks(acts, thresholds, size)
        strict = up > thresholds.view(1, -1, 1, 1)
        assert torch.equal(masks2, strict[img2, unit2])
        assert not strict[:, 0].any() and full[:, 0].any()


def test_a_region_at_the_cap_upsamples_to_a_whole_mask():
    """Bilinear upsampling of a map at 6.0 everywhere gives 6.0 only to within rounding
    (e.g. 7 -> 37 px); every such pixel is at the cap and in the mask."""
    up = F.interpolate(torch.full((1, 1, 7, 7), 6.0), size=(37, 37), mode="bilinear", align_corners=False)
    assert binarize(up, torch.tensor(6.0), torch.tensor(True)).all()
    # one rounding step below the cap is at the cap; a real step below is not
    t = torch.tensor(6.0)
    assert binarize(torch.nextafter(t, torch.tensor(0.0)), t, torch.tensor(True))
    assert not binarize(torch.tensor(5.999), t, torch.tensor(True))


def test_saturated_units_rule():
    t = torch.tensor([6.0, 6.0, 1.0, 0.0, 6.0])
    mx = torch.tensor([6.0, 6.0, 2.0, 0.0, 6.0])
    mn = torch.zeros(5)
    # 0: saturated; 1: invalid; 2: below its maximum; 3: dead (max = min); 4: a maximum one
    # rounding above the threshold (reached through upsampling) still ties
    mx[4] = torch.nextafter(mx[4], torch.tensor(7.0))
    assert saturated_units(t, mn, mx, [1]).tolist() == [True, False, False, False, True]
    assert "mask" in DissectConfig().stats_key()   # statistics cached under the strict rule are not reused


def test_flags_reach_results_grid_unit_page_and_console(tmp_path, toyworld_small, capsys):
    index = report(Capped(), layers=["units"], data=str(toyworld_small), data_size=N, input_size=64,
                   cache_dir=tmp_path / "c", out=tmp_path / "s", reproducible=True, progress=True,
                   ablation=False, config=_config())
    out = capsys.readouterr().out
    assert "dissect: layer units: 3 units, 1 detectors, 1 unique concepts, 1 dead, 1 saturated" in out, out
    site = index.parent / "Capped"
    results = json.loads((site / "results.json").read_text())
    layer = results["layers"][0]
    assert layer["summary"]["saturated_units"] == 1
    assert [u["saturated"] for u in layer["units"]] == [True, False, False]
    assert layer["units"][0]["label"] == "green" and layer["units"][2]["none_reason"] == DEAD_REASON
    assert "S_k >= T_k for a saturated unit" in results["params"]["binarize"]
    assert layer_line(layer) in out

    grid = (site / "units" / "index.html").read_text()
    cards = grid.split('<li id="unit-')[1:]
    assert 'data-sat="1"' in cards[0] and 'class="badge sat"' in cards[0]
    assert 'data-sat="0"' in cards[1] and "badge sat" not in cards[1]
    assert DEAD_REASON in cards[2] and "none" in cards[2]
    assert 'name="sat"' in grid and "1 saturated" in grid

    page0 = (site / "units" / "unit-0000.html").read_text()
    assert 'class="badge sat"' in page0 and "saturated (T_k equals the maximum)" in page0
    assert "S_k ≥ T_k" in page0 and "P(S_k ≥ T_k)" in page0
    page1 = (site / "units" / "unit-0001.html").read_text()
    assert "badge sat" not in page1 and "P(S_k &gt; T_k)" in page1
    page2 = (site / "units" / "unit-0002.html").read_text()
    assert f"No label: {DEAD_REASON}." in page2

    rows = list(csv.reader(io.StringIO((site / "units" / "units.csv").read_text())))
    sat, why = rows[0].index("saturated"), rows[0].index("none_reason")
    assert why == sat + 1 and sat > rows[0].index("iou")   # added at the end, after older columns
    assert [r[sat] for r in rows[1:]] == ["true", "false", "false"]
    assert rows[3][why] == DEAD_REASON and rows[1][why] == ""


def test_saturated_filter_in_a_browser(tmp_path):
    """The grid's "saturated only" filter shows exactly the saturated units, keeps its state
    in the URL, and a layer without saturated units has no such control."""
    from browser_support import CHROMIUM_ARGS, SiteBrowser, require_browser
    from dissect.site import write_site
    from test_site import make_run

    sync_playwright, exe = require_browser()
    results, run_dir = make_run(tmp_path)
    for u in results["layers"][0]["units"]:
        u["saturated"] = u["unit"] in (1, 4)
    write_site(tmp_path / "site", [(results, run_dir)])
    site = tmp_path / "site"
    layer = results["layers"][0]["slug"]
    visible = "() => Array.from(document.querySelectorAll('#unit-grid > li:not([hidden])'), e => +e.dataset.unit)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
        try:
            page = sb.page
            sb.visit(f"toy/{layer}/index.html")
            assert page.evaluate(visible) == [0, 1, 2, 3, 4, 5]
            page.check("input[name=sat]")
            page.wait_for_function("() => location.hash.includes('sat=1')")
            assert page.evaluate(visible) == [1, 4]
            assert "showing 2 of 6" in page.text_content("#grid-controls .count")
            sb.visit(page.url)                                   # the state is in the URL
            assert page.is_checked("input[name=sat]") and page.evaluate(visible) == [1, 4]
            sb.visit(f"toy/{results['layers'][1]['slug']}/index.html#sat=1")
            assert page.query_selector("input[name=sat]") is None
            assert len(page.evaluate(visible)) == 6               # no control, no filter
            assert not sb.problems, sb.problems
        finally:
            sb.close()
            browser.close()
