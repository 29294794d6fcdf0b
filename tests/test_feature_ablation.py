"""What a feature does (issue 24, item 3; docs/bases.md): removing a basis's features from a
layer, ``a' = a - sum_f z_f(a) d_f``, through the ablation runner's own paths (the pooled
shortcut, the map, the full forward pass), against the layer edited by hand; the identities
that pin it down (a rotation's features all removed = the layer zeroed; a feature along one
unit's axis = that unit); and a generator's layer edited the same way.
"""

from __future__ import annotations

import pytest
import torch

from dissect.bases.ablation import basis_ablation, feature_directions
from dissect.bases.dictionary import Dictionary, rotation_dictionary
from dissect.data.labeled import LabeledSplit, TensorImages, labeled_from_tensors
from dissect.experiments.ablation import AblationConfig, AblationRunner, ablate_layer, split_runners
from dissect.experiments.generator import GeneratorRunner
from dissect.hooks import Intervene, ablate
from dissect.models import load_model
from dissect.models.latents import sample_z

CLASSES = ["forest", "village", "street", "beach", "lake", "field"]


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", weights="none", progress=False).module


def _split(n: int, seed: int) -> LabeledSplit:
    g = torch.Generator().manual_seed(seed)
    return LabeledSplit("s", TensorImages(torch.randn(n, 3, 64, 64, generator=g)), torch.arange(n) % 6)


def _sae(units: int, width: int, seed: int) -> Dictionary:
    """A TopK SAE with random weights (its code is not linear in the map: the pooled shortcut
    must pool the codes, not encode the pooled map)."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(width, units, generator=g) / units ** 0.5
    dec = torch.randn(width, units, generator=g)
    return Dictionary("sae-topk", enc, torch.randn(width, generator=g) * 0.1, dec,
                      torch.randn(units, generator=g) * 0.1, scale=2.0, k=3)


def _by_hand(d: Dictionary, removed: list[int]):
    """The edit of a layer's map ``o`` removing features ``removed``, one feature at a time."""
    def edit(o: torch.Tensor) -> torch.Tensor:
        n, c, h, w = o.shape
        z = d.encode(o.permute(0, 2, 3, 1).reshape(-1, c)).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        out = o.clone()
        for f in removed:
            out = out - z[:, f:f + 1] * d.decoder[f].view(1, c, 1, 1)
        return out
    return edit


@pytest.mark.parametrize("layer,path", [("features.18", "pooled"), ("features.13", "map"),
                                        ("features.18", "full forward")])
def test_removing_features_equals_the_layer_edited_by_hand(toy, layer, path, monkeypatch):
    if path == "full forward":
        monkeypatch.setattr("dissect.experiments.runner.split_tail", lambda model, layer: (None, "full forward (test)"))
    split = _split(6 if path == "full forward" else 12, 3)
    units = {"features.18": 128, "features.13": 64}[layer]
    d = _sae(units, 2 * units, seed=1)
    runner = AblationRunner(toy, layer, split, batch_size=5, chunk_mb=1, directions=feature_directions(d, "cpu"))
    assert runner.pooled == (path == "pooled") and runner.num_units == 2 * units
    assert (runner.tail is None) == (path == "full forward")
    sets = [[], [0], [3, 200 % (2 * units), 7], list(range(0, 2 * units, 3))]
    masks = torch.ones(len(sets), 2 * units)
    for m, s in zip(masks, sets):
        m[s] = 0
    got = runner.logits(masks)
    x = split.dataset.images
    for j, s in enumerate(sets):
        with torch.no_grad(), Intervene(toy, layer, _by_hand(d, s)):
            want = toy(x)
        torch.testing.assert_close(got[j], want, rtol=1e-4, atol=1e-4)


def test_all_features_of_a_rotation_removed_is_the_layer_zeroed(toy):
    split = _split(12, 4)
    d = rotation_dictionary(128, seed=5)         # spans the unit space: sum_f z_f d_f = R^T R a = a
    runner = AblationRunner(toy, "features.18", split, batch_size=6, directions=feature_directions(d, "cpu"))
    got = runner.logits(torch.zeros(1, 128))[0]
    with torch.no_grad(), ablate(toy, "features.18", range(128)):
        want = toy(split.dataset.images)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_feature_along_one_unit_is_that_unit(toy):
    """Features that are the units in another order (a permutation basis): the class-by-class
    ablation of the features is the units' ablation, feature f standing for unit perm[f]."""
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    p = torch.eye(128)[perm]                     # feature f = unit perm[f]: code a[perm[f]], direction e_perm[f]
    d = Dictionary("rotation", p, torch.zeros(128), p, torch.zeros(128))
    r, e = _split(48, 6), _split(24, 7)
    data = labeled_from_tensors(r.dataset.images, r.labels, e.dataset.images, e.labels, CLASSES)
    cfg = AblationConfig(top_n=(1, 3, 10), random_draws=2, list_units=3, bootstrap=50)
    units = ablate_layer(toy, "features.18", data, cfg, device="cpu")
    rank, ev = split_runners(toy, "features.18", data, cfg, "cpu", directions=feature_directions(d, "cpu"))
    feats = ablate_layer(toy, "features.18", data, cfg, device="cpu", runners=(rank, ev))
    for kind in ("eval", "rank"):
        u, f = torch.tensor(units["importance"][kind]), torch.tensor(feats["importance"][kind])
        torch.testing.assert_close(f, u[perm], rtol=0, atol=1e-6)
    for cu, cf in zip(units["classes"], feats["classes"]):
        assert cf["balanced_accuracy"] == cu["balanced_accuracy"]
        assert cf["remove_top"] == cu["remove_top"]
        assert [int(perm[t["unit"]]) for t in cf["top_units"]] == [t["unit"] for t in cu["top_units"]]
    # the report's section: the features beside the units, on the common sizes
    records = {"rotation": [{"label": f"u{int(perm[f])}", "iou": 0.0} for f in range(128)]}
    sec = basis_ablation(toy, "features.18", data, {"rotation": d}, units, records, cfg, "cpu")
    assert sec["top_n"] == [1, 3, 10] and sec["bases"] == ["units", "rotation"]
    assert sec["mean_drop"]["rotation"] == sec["mean_drop"]["units"]
    for c in sec["classes"]:
        assert c["remove_top"]["rotation"] == c["remove_top"]["units"]
        assert [t["label"] for t in c["top_features"]["rotation"]][:3] == \
            [f"u{t['unit']}" for t in next(x for x in units["classes"] if x["name"] == c["name"])["top_units"]]


def test_a_generators_feature_removed_and_painted_by_hand():
    gen = load_model("toygan", weights="none", progress=False).module.eval()
    runner = GeneratorRunner(gen, "layer2", torch.device("cpu"))
    z = sample_z(3, 1, 128)
    acts = runner.acts(z)
    c = acts.shape[1]
    d = _sae(c, 2 * c, seed=2)
    dirs = feature_directions(d, "cpu")
    keep = torch.ones(3, 2 * c)
    keep[:, [1, 4]] = 0
    where = torch.zeros(1, 1, *acts.shape[2:], dtype=torch.bool)
    where[..., 1:3, 1:3] = True
    values = torch.tensor([5.0, -2.0])
    removed = dirs.keep(acts, dirs.codes(acts), keep)
    painted = dirs.set(acts, dirs.codes(acts), torch.tensor([0, 6]), values, where)

    def hand_remove(o):
        return _by_hand(d, [1, 4])(o)

    def hand_paint(o):
        n, _, h, w = o.shape
        zz = d.encode(o.permute(0, 2, 3, 1).reshape(-1, c)).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        out = o.clone()
        for f, v in zip([0, 6], values):
            out = out + where * (v - zz[:, f:f + 1]) * d.decoder[f].view(1, c, 1, 1)
        return out

    for edited, hand in ((removed, hand_remove), (painted, hand_paint)):
        fast = runner.images(edited, z)
        with Intervene(gen, "layer2", hand), torch.no_grad():
            slow = gen(z)
        ref = (((slow + 1) / 2).clamp(0, 1) * 255).round() / 255
        assert (fast - ref).abs().max() <= 1 / 255 + 1e-6
    # a unit set through the units' directions is the unit set by index
    from dissect.experiments.runner import UNITS
    u = UNITS.set(acts, None, torch.tensor([2]), torch.tensor([7.0]), where)
    ref = acts.clone()
    ref[:, 2, 1:3, 1:3] = 7.0
    assert torch.equal(u, ref)


def test_report_ablates_the_features_beside_the_units(tmp_path, toyworld_small):
    """``--basis-ablation``: the results' ``bases[0].ablation`` and its table on the units vs
    features page."""
    import json

    from dissect import report
    from dissect.bases.options import BasisOptions
    from dissect.formulas.search import FormulaOptions
    cfg = AblationConfig(top_n=(1, 5), random_draws=2, attack=False, num_workers=0, bootstrap=20)
    from dissect.experiments.dissection import DissectConfig
    from dissect.stats.intervals import IntervalOptions
    report(model="toy", weights="none", class_names=CLASSES, data=str(toyworld_small), out=tmp_path / "site",
           layers=["conv4_2"], progress=False, reproducible=True, ablation=cfg,
           config=DissectConfig(top_k=3, num_workers=0, intervals=IntervalOptions(replicates=0)),
           bases=BasisOptions(bases=("rotation",), ablation=True), formulas=FormulaOptions(length=2))
    root = tmp_path / "site" / "toy"
    res = json.loads((root / "results.json").read_text())
    ab = res["bases"][0]["ablation"]
    assert ab["bases"] == ["units", "rotation"] and ab["top_n"] == [1, 5]
    units = res["ablation"]["layers"]["features.18"]
    for c in ab["classes"]:
        cu = next(x for x in units["classes"] if x["name"] == c["name"])
        assert c["remove_top"]["units"] == cu["remove_top"] and len(c["remove_top"]["rotation"]) == 2
    assert "_dictionaries" not in res["bases"][0]
    # the layer's formulas come to the features too, with their parts drawn (issue 23 with 24)
    feats = res["bases"][0]["features"][0]
    assert feats["formulas"]["length"] == res["layers"][0]["formulas"]["length"] == 2
    with_parts = [u for u in feats["units"] if u.get("formula") and u["formula"]["length"] == 2]
    assert with_parts and all(len(u["formula"]["strips"]) == 3 for u in with_parts)
    assert all((root / r["src"]).is_file() for u in with_parts for r in u["formula"]["strips"])
    assert 'id="formula-parts"' in (root / f"conv4_2--rotation/unit-{with_parts[0]['unit']:04d}.html").read_text()
    page = (root / "conv4_2" / "features.html").read_text()
    assert 'id="basis-ablation-table"' in page and "rotated units: top 5 removed" in page
