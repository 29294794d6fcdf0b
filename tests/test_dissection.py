"""Dissection end to end against ground truth and brute-force references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect.data.broden import BrodenDataset
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from shared_support import brute_iou

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class Redness(nn.Module):
    """Unit 0 responds to red pixels (the color namer's red hue sector, graded by
    saturation so it is not flat); unit 1 is dead (always 0); unit 2 is brightness.
    Averaged ``pool`` x ``pool``, so the map is coarser than the labels and is upsampled."""

    def __init__(self, pool: int = 1):
        super().__init__()
        self.pool = nn.AvgPool2d(pool)
        self.units = nn.Identity()

    def forward(self, x):
        rgb = (x * STD + MEAN).clamp(0, 1)
        mx, mn = rgb.max(1).values, rgb.min(1).values
        chroma = mx - mn
        sat = chroma / mx.clamp(min=1e-6)
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        # hue within 15 degrees of pure red: r is the max and |g - b| < chroma / 4
        reddish = (r >= mx) & ((g - b).abs() < chroma / 4)
        red = reddish & (mx >= 0.40) & (sat >= 0.18) & (chroma >= 0.08) & ~((sat < 0.55) & (mx >= 0.70))
        unit = red.float() * (1.0 + 0.1 * sat)
        dead = torch.zeros_like(r)
        bright = rgb.mean(1)
        return self.units(self.pool(torch.stack([unit, dead, bright], 1)))


def test_hand_wired_red_unit(toyworld_small):
    ds = BrodenDataset(toyworld_small, input_size=64)
    red = next(n for n, lab in ds.index.labels.items() if lab.display == "red" and lab.category == "color")
    # choose q near the fraction of red pixels, so the threshold falls between levels
    frac = np.mean([(ds[i]["pixel_labels"] == red).any(0).float().mean().item() for i in range(len(ds))])
    assert frac > 0.002, "toy world should have some red pixels"
    config = DissectConfig(quantile=float(frac) * 0.9, top_k=3, batch_size=32, num_workers=0, device="cpu")
    stats = dissect_layers(Redness(), ["units"], ds, config, progress=False)["units"]
    layer = summarize_layer(stats, ds, config)
    u0, u1 = layer["units"][0], layer["units"][1]
    assert u0["label"] == "red" and u0["category"] == "color"
    assert u0["iou"] >= 0.5, u0
    assert u0["detector"]
    # the dead unit: labelled none, never NaN
    assert u1["dead"] and u1["label"] is None and u1["iou"] == 0.0 and not u1["detector"]
    assert all(math.isfinite(u["iou"]) for u in layer["units"])


class RandomConv(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 5, 5, stride=4, padding=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(5, generator=g))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


@pytest.mark.parametrize("space", ["activation", "upsampled"])
def test_pipeline_equals_brute_force(toyworld_small, space, device):
    """Quantile, upsampling, binarising and the category-restricted IoU, one image at a time
    (the reference on the same device; on CUDA, whose kernels round differently from one
    batch size to another, equal within float32 rounding)."""
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(40))
    q = 0.02
    config = DissectConfig(quantile=q, quantile_space=space, top_k=4, batch_size=16,
                           num_workers=0, device=device, precision="fp32")
    model = RandomConv().eval()
    stats = dissect_layers(model, ["relu"], ds, config, progress=False)["relu"]
    sh, sw = ds.label_size
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        acts = torch.cat([model.to(device)(it["image"][None].to(device)).cpu() for it in items])  # [N, 5, 16, 16]
    ups = F.interpolate(acts, size=(sh, sw), mode="bilinear", align_corners=False)
    src = acts if space == "activation" else ups
    flat = src.transpose(0, 1).reshape(5, -1)
    m = int(math.floor(q * flat.shape[1])) + 1
    t_ref = torch.sort(flat, dim=1, descending=True).values[:, m - 1]
    if device == "cpu":
        assert torch.equal(stats.thresholds, t_ref)
    else:
        torch.testing.assert_close(stats.thresholds, t_ref, rtol=1e-5, atol=1e-6)

    idx = ds.index
    ref = np.stack([brute_iou(ds, (ups[:, k] > t_ref[k]).numpy()) for k in range(5)])
    got = stats.iou(idx.primary_category_tensor(), len(idx.categories)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12 if device == "cpu" else 2e-3)
    # top images: the largest per-image maxima, lower index first on ties
    score = acts.flatten(2).max(2).values
    for k in range(5):
        order = sorted(range(len(items)), key=lambda i: (-score[i, k].item(), i))[:4]
        assert stats.top_indices[k].tolist() == order


def test_batching_does_not_change_results(toyworld_small, device):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(48))
    model = RandomConv().eval()
    a = dissect_layers(model, ["relu"], ds, DissectConfig(batch_size=48, num_workers=0, device=device),
                       progress=False)["relu"]
    b = dissect_layers(model, ["relu"], ds, DissectConfig(batch_size=7, num_workers=2, device=device,
                                                           activation_cache_mb=0), progress=False)["relu"]
    if device == "cpu":
        assert torch.equal(a.thresholds, b.thresholds)
        for key in ("inter", "unit_cat", "label_pixels", "active"):
            assert torch.equal(a.tally[key], b.tally[key])
    else:   # CUDA's convolutions round differently from one batch size to another
        torch.testing.assert_close(a.thresholds, b.thresholds, rtol=1e-5, atol=1e-6)
        for key in ("inter", "unit_cat", "label_pixels", "active"):
            torch.testing.assert_close(a.tally[key], b.tally[key], rtol=2e-3, atol=2.0)
    assert torch.equal(a.top_indices, b.top_indices)


def test_cached_results_follow_the_probe_files(tmp_path):
    """A probe folder whose images were all replaced (its tables unchanged) is dissected
    again, never served the old results; another folder with the same tables gets its own
    cache entry."""
    import json
    import shutil

    from PIL import Image

    from dissect import report
    from dissect.data.toyworld_probe import write_toyworld

    folder = write_toyworld(tmp_path / "a", n=40, seed=3, image_size=64, progress=False)
    kw = dict(model="toy", layers=["conv4_2"], ablation=False, progress=False, reproducible=True,
              cache_dir=tmp_path / "cache")

    def run(data, out):
        report(data=str(data), out=tmp_path / out, **kw)
        r = json.loads((tmp_path / out / "toy" / "results.json").read_text())
        return r["probe"]["index_sha256"], [u["threshold"] for u in r["layers"][0]["units"]]

    tables, thresholds = run(folder, "s1")
    entries = set((tmp_path / "cache" / "stats").iterdir())
    shutil.copytree(folder, tmp_path / "b")               # same tables, same file times
    assert run(tmp_path / "b", "s2") == (tables, thresholds)
    # every entry of the first run (the toy's and its shipped comparison weights') made anew
    assert len(set((tmp_path / "cache" / "stats").iterdir()) - entries) == len(entries)
    for png in (folder / "images").glob("toy-?????.png"):  # every image flat grey
        Image.new("RGB", (64, 64), (128, 128, 128)).save(png)
    grey_tables, grey_thresholds = run(folder, "s3")
    assert grey_tables == tables and grey_thresholds != thresholds
