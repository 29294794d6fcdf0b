"""The 95% intervals of each unit's best IoU (dissect/stats/intervals.py, pass 3 of the
dissection): against a brute-force bootstrap, independent of batching and sharding, calibrated
on a planted unit of the toy world, and shown where a small sample decides a label."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect.data.broden import BrodenDataset
from dissect.data.toyworld_probe import write_toyworld
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer, unit_scores
from dissect.stats.intervals import (MIN_IMAGES, BootstrapTally, IntervalOptions, decision, poisson_weights,
                                     too_small)
from test_dissection import RandomConv, Redness


def test_poisson_weights_are_poisson_1_and_a_function_of_the_image_only():
    w = poisson_weights(3, np.arange(2000), 1000).numpy()
    assert w.shape == (1000, 2000) and w.dtype == np.float64
    assert (w == np.round(w)).all() and w.min() == 0
    assert abs(w.mean() - 1) < 0.005 and abs(w.var() - 1) < 0.01          # Poisson(1): mean = variance = 1
    assert abs((w == 0).mean() - math.exp(-1)) < 0.002                  # P(0) = 1/e
    assert abs((w == 3).mean() - math.exp(-1) / 6) < 0.001               # P(3) = 1/(3! e)
    # an image's weights do not depend on which other images are asked with it, or in what order
    some = [1999, 17, 5, 640]
    assert torch.equal(poisson_weights(3, some, 1000), torch.from_numpy(w[:, some]))
    assert not torch.equal(poisson_weights(4, some, 1000), poisson_weights(3, some, 1000))
    # replicates are independent draws: the weights of two images are uncorrelated
    assert abs(np.corrcoef(w[:, 0], w[:, 1])[0, 1]) < 0.1


def _per_image_counts(model, ds, stats, concepts):
    """Brute force, one image at a time: the intersection and union pixels of each unit with
    its concept ``concepts[k]`` (the category-restricted rule of the IoU tally)."""
    sh, sw = ds.label_size
    prim = ds.index.primary_category_tensor().numpy()
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        acts = torch.cat([model(it["image"][None]) for it in items])
    ups = F.interpolate(acts, size=(sh, sw), mode="bilinear", align_corners=False)
    n, units = len(items), acts.shape[1]
    inter, union = np.zeros((n, units)), np.zeros((n, units))
    for i, it in enumerate(items):
        pl, il = it["pixel_labels"].numpy(), it["image_labels"].tolist()
        present = set(np.unique(pl).tolist()) | set(il)
        for k in range(units):
            c = int(concepts[k])
            if c < 0:
                continue
            mk = (ups[i, k] > stats.thresholds[k]).numpy()
            lc = (pl == c).any(0) | (c in il)
            a = mk.sum() if prim[c] in {prim[p] for p in present if p} else 0
            inter[i, k] = (mk & lc).sum()
            union[i, k] = a + lc.sum() - inter[i, k]
    return inter, union


def test_streaming_bootstrap_equals_a_brute_force_bootstrap(toyworld_small):
    """(a) The pass-3 tally's intervals equal a bootstrap computed here from per-image counts
    with the same weights; its point estimate is the IoU of the summary's label."""
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(40))
    opts = IntervalOptions(replicates=400, seed=5)
    config = DissectConfig(quantile=0.02, top_k=3, batch_size=16, num_workers=0, device="cpu", intervals=opts)
    model = RandomConv().eval()
    stats = dissect_layers(model, ["relu"], ds, config, progress=False)["relu"]
    best = unit_scores(stats, ds.index).best
    assert torch.equal(stats.interval_concepts, torch.from_numpy(best)) and (best > 0).sum() >= 3
    inter, union = _per_image_counts(model, ds, stats, best)
    # the IoU of each unit with its concept, from the brute-force counts, is the tally's
    iou = stats.iou(ds.index.primary_category_tensor(), len(ds.index.categories)).numpy()
    for k, c in enumerate(best):
        if c > 0:
            assert inter[:, k].sum() / union[:, k].sum() == pytest.approx(iou[k, c], abs=1e-12)
    w = poisson_weights(opts.seed, np.arange(len(ds)), opts.replicates).numpy()          # [R, n]
    wi, wu = w @ inter, w @ union
    ratios = np.where(wu > 0, wi / np.where(wu > 0, wu, 1), 0.0)
    ref = np.quantile(ratios, [0.025, 0.975], axis=0).T
    np.testing.assert_allclose(stats.intervals.numpy(), ref, rtol=0, atol=1e-12)
    assert stats.bootstrap == {"method": "poisson bootstrap", "replicates": 400, "seed": 5, "level": 0.95}
    # the summary publishes them beside the label they are for
    layer = summarize_layer(stats, ds, config)
    for u in layer["units"]:
        if u["label"] is None:
            assert u["iou_interval"] is None and u["detector_interval"] is None
        else:
            lo, hi = ref[u["unit"]]
            assert u["iou_interval"] == [round(lo, 6), round(hi, 6)]
            assert u["detector_interval"] == decision((lo, hi), config.iou_threshold)
    assert layer["intervals"]["replicates"] == 400 and layer["intervals"]["labelled_units"] >= 3


def test_intervals_do_not_depend_on_batching_order_or_shards(toyworld_small):
    """(b) Batches of 7 (the model run again in passes 2 and 3) and of 64 (activations kept)
    give identical intervals; tallies of shards merged in any order equal one tally."""
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(48))
    model = RandomConv().eval()
    a = dissect_layers(model, ["relu"], ds, DissectConfig(batch_size=64, num_workers=0), progress=False)["relu"]
    b = dissect_layers(model, ["relu"], ds, DissectConfig(batch_size=7, num_workers=2, activation_cache_mb=0),
                       progress=False)["relu"]
    assert a.intervals is not None and torch.equal(a.intervals, b.intervals)
    assert torch.equal(a.interval_concepts, b.interval_concepts)

    gen = torch.Generator().manual_seed(0)
    inter = torch.randint(0, 50, (30, 4), generator=gen).double()
    union = inter + torch.randint(0, 80, (30, 4), generator=gen).double()
    whole = BootstrapTally(4, 200, 9)
    whole.add(torch.arange(30), inter, union)
    merged = BootstrapTally(4, 200, 9)
    for part in (torch.arange(20, 30), torch.tensor([3, 0, 11, 7]), torch.tensor([i for i in range(20)
                                                                                   if i not in (3, 0, 11, 7)])):
        t = BootstrapTally(4, 200, 9)
        t.add(part, inter[part], union[part])
        back = BootstrapTally(4, 200, 9)
        back.load_state_dict(t.state_dict())     # what a torchrun rank sends
        merged.merge(back)
    assert torch.equal(merged.sums, whole.sums) and torch.equal(merged.intervals(), whole.intervals())
    assert torch.allclose(whole.point(), inter.sum(0) / union.sum(0))


class LeftRed(nn.Module):
    """A planted unit: the red pixels of the left half of the image (unit 0), so its IoU with
    red is about 0.5 and varies from image to image; unit 1 is all the red pixels. Both are 0
    elsewhere, so at q = 0.2 (more than the red fraction) the threshold is 0 on any probe set
    and the mask is exactly the planted region: the IoU's uncertainty is the images' alone."""

    def __init__(self):
        super().__init__()
        self.red = Redness()
        self.units = nn.Identity()

    def forward(self, x):
        r = self.red(x)[:, :1]
        left = torch.zeros_like(r)
        left[..., : r.shape[-1] // 2] = 1
        return self.units(torch.cat([r * left, r], 1))


def test_a_planted_units_interval_covers_the_value_of_a_ten_times_larger_probe_set(tmp_path):
    """(c) On the toy world, the best-IoU interval of a planted unit on 40 images contains its
    IoU on 400 other images of the same generator, and narrows on the 400. Over 8 independent
    small sets the 95% intervals cover that value at least 6 times (coverage 95%: fewer than
    6 has probability 0.6%)."""
    config = DissectConfig(quantile=0.2, top_k=2, batch_size=64, num_workers=0, device="cpu")

    def planted(folder):
        ds = BrodenDataset(folder, input_size=64)
        stats = dissect_layers(LeftRed(), ["units"], ds, config, progress=False)["units"]
        assert stats.thresholds[0] == 0
        return summarize_layer(stats, ds, config)["units"][0]

    big = planted(write_toyworld(tmp_path / "big", n=400, seed=101, image_size=64, progress=False))
    assert big["label"] == "red" and 0.35 < big["iou"] < 0.65, big
    width = big["iou_interval"][1] - big["iou_interval"][0]
    covered, widths = [], []
    for seed in range(1, 9):
        small = planted(write_toyworld(tmp_path / f"small{seed}", n=40, seed=seed, image_size=64, progress=False))
        assert small["label"] == "red"
        lo, hi = small["iou_interval"]
        assert lo <= small["iou"] <= hi
        covered.append(lo <= big["iou"] <= hi)
        widths.append(hi - lo)
    assert covered[0], (big, covered)
    assert sum(covered) >= 6, covered
    # 10x the images: about sqrt(10) = 3.2 times narrower
    assert width < min(widths) and 2 < np.mean(widths) / width < 5, (width, widths)


def test_ten_probe_images_carry_the_banner_and_the_uncertain_badge(tmp_path, capsys):
    """(d) The user's case: the toy classifier on 10 probe images. results.json has the
    intervals and the layer's warning, the layer page its banner and its rule, the grid the
    'detector?' badge on detectors whose interval reaches the threshold, the unit page the
    interval, units.csv its columns, and the console the same warning."""
    from dissect import report

    report(model="toy", layers=["conv4_2"], data_size=10, ablation=False, shipped_comparisons=False,
           out=tmp_path / "site", cache_dir=tmp_path / "cache", reproducible=True, progress=False)
    err = capsys.readouterr().err
    assert "dissect: warning: toy conv4_2 (features.18): the probe sample is too small to separate " \
           "detectors from chance (10 probe images, fewer than 100)" in err
    model_dir = tmp_path / "site" / "toy"
    results = json.loads((model_dir / "results.json").read_text())
    layer = results["layers"][0]
    assert layer["sample_warning"] == "10 probe images, fewer than 100"
    assert layer["intervals"]["method"] == "poisson bootstrap" and layer["intervals"]["replicates"] == 1000
    unsure = [u for u in layer["units"] if u["detector"] and u["detector_interval"] == "straddles"]
    assert unsure and layer["intervals"]["uncertain_detectors"] >= len(unsure)
    for u in layer["units"]:
        if u["label"] is not None:
            lo, hi = u["iou_interval"]
            assert 0 <= lo <= hi <= 1
            assert u["detector_interval"] == decision((lo, hi), results["params"]["iou_threshold"])
    page = (model_dir / "conv4_2" / "index.html").read_text()
    assert 'id="sample-warning"' in page and "fewer than 100 images" in page and "10 probe images" in page
    assert page.count(">detector?<") >= len(unsure) + 1       # the badges, and the lede's key
    u = unsure[0]
    card = page[page.index(f'id="unit-{u["unit"]}"'):]
    card = card[: card.index("</li>")]
    assert ">detector?<" in card and "straddles 0.04" in card
    unit_page = (model_dir / "conv4_2" / f"unit-{u['unit']:04d}.html").read_text()
    lo, hi = u["iou_interval"]
    assert f"95% interval {lo:.3f}–{hi:.3f}" in unit_page and ">detector?<" in unit_page
    assert "straddles the threshold 0.04" in unit_page
    rows = list(csv.DictReader((model_dir / "conv4_2" / "units.csv").open()))
    row = rows[u["unit"]]
    assert (float(row["iou_lo"]), float(row["iou_hi"]), row["detector_interval"]) == (lo, hi, "straddles")


def test_the_rule_of_the_banner():
    assert too_small(MIN_IMAGES - 1, 10, 0) and not too_small(MIN_IMAGES, 10, 0)
    assert too_small(500, 10, 6) and not too_small(500, 10, 5) and not too_small(500, 0, 0)
    assert decision([0.05, 0.1], 0.04) == "above" and decision([0.04, 0.1], 0.04) == "straddles"
    assert decision([0.0, 0.04], 0.04) == "below" and decision(None, 0.04) is None


def test_bootstrap_off_and_bad_options(toyworld_small):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(24))
    config = DissectConfig(batch_size=16, num_workers=0, intervals=IntervalOptions(replicates=0))
    stats = dissect_layers(RandomConv().eval(), ["relu"], ds, config, progress=False)["relu"]
    assert stats.intervals is None
    layer = summarize_layer(stats, ds, config)
    assert layer["intervals"] is None and all(u["iou_interval"] is None for u in layer["units"])
    assert layer["sample_warning"] == "24 probe images, fewer than 100"   # the size rule holds without intervals
    assert DissectConfig().stats_key() != config.stats_key()             # cached apart
    for bad in (IntervalOptions(replicates=50), IntervalOptions(replicates=-1), IntervalOptions(seed=-2)):
        with pytest.raises(DissectError, match="--bootstrap"):
            DissectConfig(intervals=bad).validate()


def test_cli_bootstrap_flags(tmp_path):
    from dissect.cli import build_parser
    args = build_parser().parse_args(["report", "--bootstrap", "200", "--bootstrap-seed", "3"])
    assert IntervalOptions.from_args(args) == IntervalOptions(replicates=200, seed=3)
    assert IntervalOptions.from_args(build_parser().parse_args(["report"])) == IntervalOptions()
    with pytest.raises(DissectError, match="at least 100"):
        IntervalOptions.from_args(build_parser().parse_args(["report", "--bootstrap", "10"]))
