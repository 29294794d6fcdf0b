"""Streaming statistics against brute-force references."""

import math

import numpy as np
import pytest
import torch

from dissect.stats import IoUTally, TopK, TopQuantile


def exact_threshold(x: torch.Tensor, q: float) -> torch.Tensor:
    """Reference: per row, the value with floor(q n) values above it."""
    n = x.shape[1]
    m = int(math.floor(q * n)) + 1
    return torch.sort(x, dim=1, descending=True).values[:, m - 1]


def rank_error(x: torch.Tensor, t: torch.Tensor, q: float) -> torch.Tensor:
    above = (x > t.view(-1, 1)).double().mean(dim=1)
    return (above - q).abs()


@pytest.mark.parametrize("exact", [True, False])
def test_quantile_rank_error(exact, device):
    g = torch.Generator().manual_seed(0)
    units, n, q = 6, 400_000, 0.005
    x = torch.cat([torch.randn(3, n, generator=g), torch.rand(3, n, generator=g) ** 3], 0)
    tq = TopQuantile(units, q, total_per_unit=n, max_values=10**9 if exact else 1, device=device)
    assert tq.exact is exact
    for chunk in torch.split(x, 6272, dim=1):
        tq.add(chunk)
    t = tq.thresholds()
    assert t.device.type == device     # the tally stays on its device
    t = t.cpu()
    if exact:
        assert torch.equal(t, exact_threshold(x, q))
    err = rank_error(x, t, q)
    assert err.max() < 1e-3, err


def test_quantile_merge_equals_single_pass(device):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 50_000, generator=g)
    a = TopQuantile(4, 0.01, total_per_unit=50_000, device=device)
    b = TopQuantile(4, 0.01, total_per_unit=50_000, device=device)
    a.add(x[:, :20_000])
    b.add(x[:, 20_000:])
    a.merge(b)
    assert torch.equal(a.thresholds().cpu(), exact_threshold(x, 0.01))


def brute_force_iou(masks, pixel_labels, image_labels, primary, num_labels, num_cats):
    """Per-image loop with the METHOD.md definition (NetDissect's category rule)."""
    b, units, h, w = masks.shape
    iou = np.zeros((units, num_labels))
    for k in range(units):
        for c in range(1, num_labels):
            inter = union_unit = lab = 0
            for i in range(b):
                m = masks[i, k].numpy()
                pl = pixel_labels[i].numpy()
                il = set(image_labels[i].tolist()) - {0}
                present = (set(np.unique(pl).tolist()) | il) - {0}
                lc = (pl == c).any(axis=0) | (c in il)
                if primary[c] in {primary[p] for p in present}:
                    union_unit += m.sum()
                lab += lc.sum()
                inter += (m & lc).sum()
            den = union_unit + lab - inter
            iou[k, c] = inter / den if den else 0.0
    return iou


def test_iou_matches_brute_force(device):
    rng = np.random.default_rng(0)
    b, units, h, w, nl, cats = 7, 5, 9, 11, 8, 3
    primary = [0] + list(rng.integers(0, cats, nl - 1))
    masks = torch.from_numpy(rng.random((b, units, h, w)) > 0.7)
    # labels 1..5 are pixel concepts, 6..7 whole-image concepts (as in Broden)
    pixel_labels = torch.from_numpy(rng.integers(0, 6, (b, 2, h, w)))
    pixel_labels[:, 1][torch.from_numpy(rng.random((b, h, w)) > 0.5)] = 0
    pixel_labels[2] = 0          # an image with no pixel labels at all
    image_labels = torch.tensor([[6, 7], [0, 7], [6, 0], [0, 0], [7, 7], [6, 6], [0, 6]])
    tally = IoUTally(units, nl, torch.tensor(primary), cats, device=device)
    # two shards, merged, must equal the single brute-force pass
    other = IoUTally(units, nl, torch.tensor(primary), cats, device=device)
    tally.add(masks[:4], pixel_labels[:4], image_labels[:4])
    other.add(masks[4:], pixel_labels[4:], image_labels[4:])
    tally.merge(other)
    ref = brute_force_iou(masks, pixel_labels, image_labels, primary, nl, cats)
    np.testing.assert_allclose(tally.iou().cpu().numpy(), ref, rtol=1e-12, atol=1e-12)



def test_iou_segmenter_labeled_is_plain_iou():
    """A probe set labeled by a segmenter is annotated in every category on every image: the
    union counts every image, so the IoU is the plain IoU over all images (2020). An image
    with no part pixels must lower a part's IoU for a unit that is on there."""
    rng = np.random.default_rng(3)
    b, units, h, w, nl, cats = 6, 4, 8, 8, 5, 2
    primary = [0, 0, 0, 1, 1]                # labels 1, 2: objects; 3, 4: parts
    masks = torch.from_numpy(rng.random((b, units, h, w)) > 0.6)
    pixel_labels = torch.from_numpy(np.stack([rng.integers(1, 3, (b, h, w)),
                                              rng.integers(0, 5, (b, h, w))], axis=1))
    pixel_labels[:, 1][pixel_labels[:, 1] < 3] = 0
    pixel_labels[1, 1] = 0                   # images 1 and 4 hold no part pixel
    pixel_labels[4, 1] = 0
    plain = np.zeros((units, nl))
    for k in range(units):
        m = masks[:, k].numpy()
        for c in range(1, nl):
            lc = (pixel_labels.numpy() == c).any(axis=1)
            plain[k, c] = (m & lc).sum() / (m | lc).sum()
    tally = IoUTally(units, nl, torch.tensor(primary), cats, all_annotated=True)
    tally.add(masks, pixel_labels, torch.zeros(b, 0, dtype=torch.long))
    np.testing.assert_allclose(tally.iou().numpy()[:, 1:], plain[:, 1:], rtol=1e-12)
    netdissect = IoUTally(units, nl, torch.tensor(primary), cats)
    netdissect.add(masks, pixel_labels, torch.zeros(b, 0, dtype=torch.long))
    nd = netdissect.iou().numpy()
    np.testing.assert_allclose(nd[:, 1:3], plain[:, 1:3], rtol=1e-12)   # objects: every image
    assert (nd[:, 3:] > plain[:, 3:]).all()   # parts: the part-less images left out of the union


def test_topk_ties_and_batching(device):
    acts = torch.zeros(10, 2, 3, 3)
    acts[:, 0, 1, 1] = torch.tensor([1, 5, 5, 2, 9, 5, 0, 0, 0, 7], dtype=torch.float32)
    acts[:, 1] = 1.0  # all tied: lowest indices win
    one = TopK(2, 3, (3, 3), device=device)
    one.add(acts, torch.arange(10))
    split = TopK(2, 3, (3, 3), device=device)
    for s in (slice(0, 4), slice(4, 7), slice(7, 10)):
        split.add(acts[s], torch.arange(10)[s])
    for t in (one, split):
        assert t.indices[0].tolist() == [4, 9, 1]
        assert t.indices[1].tolist() == [0, 1, 2]
        assert torch.equal(t.maps[0, 0].cpu(), acts[4, 0])
