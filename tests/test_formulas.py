"""Compositional labels (issue 23): units wired to fire exactly on label combinations get
those formulas, with IoUs equal to a brute force over every formula of length <= 2 (and to
the mask-per-candidate reference beam at length 3); length 1 reproduces dissection's labels
and IoUs exactly, on the toy world and on a Broden-format set; bad input is one line."""

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from dissect.data.broden import BrodenDataset, collate
from dissect.errors import DissectError
from dissect.experiments.dissection import (DissectConfig, active_masks, binarize, dissect_layers, summarize_layer,
                                            unit_scores)
from dissect.formulas.reference import Reference
from dissect.formulas.run import add_formulas, search_formulas
from dissect.formulas.search import FormulaOptions, canonical, formula_text
from dissect.stats.iou import prepare_labels
from test_broden import broden  # noqa: F401  (the hand-written Broden-format fixture)

N = 24


def _key(x: torch.Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()


class Wired(nn.Module):
    """Units that are exactly the masks ``maps[i]`` (float ``[units, H, W]``) of the probe
    image ``i`` it is given (looked up by content): planted ground truth at label resolution."""

    def __init__(self, images: list[torch.Tensor], maps: torch.Tensor):
        super().__init__()
        self.table = {_key(x): m for x, m in zip(images, maps)}
        self.shape = maps.shape[1:]
        self.units = nn.Identity()

    def forward(self, x):
        out = torch.stack([self.table.get(_key(xi), torch.zeros(self.shape)) for xi in x])
        return self.units(out)


def _labels(ds):
    idx = ds.index
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    lb = prepare_labels(batch["pixel_labels"].long(), batch["image_labels"].long(),
                        idx.num_labels, idx.primary_category_tensor(), len(idx.categories),
                        idx.segmenter_labeled)
    valid = np.zeros(idx.num_labels, bool)
    valid[list(idx.labels)] = True
    return items, Reference.from_batches([lb], idx.num_labels, idx.primary_category_tensor(), valid)


@pytest.fixture(scope="module")
def planted(toyworld_small):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(N))
    items, ref = _labels(ds)
    name = {lab.display: n for n, lab in ds.index.labels.items()}
    P = ref.present.view(N, -1, *ds.label_size)
    g = torch.Generator().manual_seed(0)
    truth = {
        "tree AND NOT green": P[:, name["tree"]] & ~P[:, name["green"]],
        "door OR window": P[:, name["door"]] | P[:, name["window"]],
        "sky": P[:, name["sky"]],
        "(car OR door) OR window": P[:, name["door"]] | P[:, name["window"]] | P[:, name["car"]],
    }
    maps = torch.stack([m.float() for m in truth.values()]
                       + [torch.rand((N, *ds.label_size), generator=g)], dim=1)      # + a noise unit
    model = Wired([it["image"] for it in items], maps)
    config = DissectConfig(top_k=3, batch_size=16, num_workers=0, device="cpu",
                           intervals=DissectConfig().intervals.__class__(replicates=0))
    stats = dissect_layers(model, ["units"], ds, config, progress=False)
    masks = binarize(maps, stats["units"].thresholds.view(1, -1, 1, 1),
                     stats["units"].saturated.view(1, -1, 1, 1)).flatten(2).transpose(0, 1)   # [units, N, HW]
    found = search_formulas(model, {"units": 3}, ds, stats, config, FormulaOptions(length=3), progress=False)
    return ds, model, config, stats, ref, masks, list(truth), found["units"]


def test_planted_units_get_their_formulas(planted):
    ds, _, _, stats, ref, masks, texts, res = planted
    names = {n: lab.display for n, lab in ds.index.labels.items()}
    for k, text in enumerate(texts):
        assert formula_text(res.formulas[k], names) == text
        assert res.ious[k] == 1.0 and ref.iou(masks[k], res.formulas[k]) == 1.0
    brute = dict(zip((0, 4), ref.best_of_length_two(masks[[0, 4]])))   # (one pass of masks for both)
    for k in (0, 1, 2, 4):   # the exact length-2 optimum = a brute force over every formula
        best2 = brute.get(k, 1.0)   # (planted: 1 is the top)
        assert res.exact[k][1] == pytest.approx(best2, abs=1e-9)
        assert ref.iou(masks[k], res.exact[k][0]) == pytest.approx(best2, abs=1e-9)
    # the beam at every length = the mask-per-candidate reference beam (the noise unit: many near-ties)
    for k in (4,):
        want = ref.search(masks[k], 3, 5)
        assert res.ious[k] == pytest.approx(want[0][1], abs=1e-9)
        assert canonical(res.formulas[k]) == canonical(want[0][0])
    for k in range(len(texts) + 1):   # the beam never beats the optimum
        assert res.by_length[k][1] <= res.exact[k][1] + 1e-12
    assert res.by_length[4][0] < res.by_length[4][2]    # the noise unit: longer formulas fit better


def test_length_one_is_dissection_exactly(planted):
    ds, model, config, stats, _, _, _, res = planted
    iou = stats["units"].iou(ds.index.primary_category_tensor(), len(ds.index.categories)).numpy()
    assert np.array_equal(res.single_iou, iou)          # the formula counts' single-concept IoUs
    layer = summarize_layer(stats["units"], ds, config)
    layer["name"] = "units"
    add_formulas(model, [layer], ds, stats, config, FormulaOptions(length=2), {"units": 2}, progress=False)
    for u in layer["units"]:
        assert u["formula"]["iou_by_length"][0] == u["iou"]
        assert u["formula"]["iou"] >= u["iou"]
    block = layer["formulas"]
    assert block["length"] == 2 and block["exact_check"]["units"] == 5
    assert block["exact_check"]["beam_found"] + block["exact_check"]["beam_missed"] == 5
    assert block["mean_iou_by_length"][0] == pytest.approx(np.mean([u["iou"] for u in layer["units"]]), abs=1e-6)


def test_exact_search_and_the_broden_format(broden):  # noqa: F811
    """Label numbers with gaps, a label in two categories, two part layers, scene and
    texture labels: length 1 = dissection, length 2 (exact) = the brute force."""
    ds = BrodenDataset(broden, input_size=4)
    _, ref = _labels(ds)
    g = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    model = nn.Sequential(conv)
    config = DissectConfig(quantile=0.3, top_k=1, batch_size=2, num_workers=0, device="cpu",
                           intervals=DissectConfig().intervals.__class__(replicates=0))
    stats = dissect_layers(model, ["0"], ds, config, progress=False)
    res = search_formulas(model, {"0": 2}, ds, stats, config, FormulaOptions(length=2, search="exact"),
                          progress=False)["0"]
    scores = unit_scores(stats["0"], ds.index)
    assert np.array_equal(np.where(scores.valid[None], res.single_iou, 0.0), scores.iou)
    with torch.no_grad():   # one batch, as the passes ran it (a tie at T_k is decided to the last bit)
        acts = model(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    img, unit, on = active_masks(acts, stats["0"].thresholds, ds.label_size, saturated=stats["0"].saturated)
    masks = torch.zeros((6, len(ds), on.shape[1] * on.shape[2]), dtype=torch.bool)
    masks[unit, img] = on.flatten(1)
    for k in range(6):
        if scores.best[k] < 0:
            assert res.formulas[k] is None
            continue
        assert res.ious[k] == pytest.approx(ref.best_of_length_two(masks[k]), abs=1e-9)
        assert ref.iou(masks[k], res.formulas[k]) == pytest.approx(res.ious[k], abs=1e-9)


@pytest.mark.parametrize("flags, expect", [
    (["--formula-length", "0"], "--formula-length must be a whole number from 1 to 4"),
    (["--formula-length", "5"], "--formula-length must be a whole number from 1 to 4"),
    (["--beam", "0"], "--beam must be a whole number of at least 1"),
])
def test_bad_options_are_one_line_before_any_work(flags, expect, tmp_path, capsys):
    from dissect.cli import main
    assert main(["report", "--model", "toy", "--out", str(tmp_path / "s"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_one_concept_probe_set_is_refused():
    with pytest.raises(DissectError, match="at least two concepts"):
        FormulaOptions(length=3).check_probe(1, [1, 3])
    FormulaOptions(length=1).check_probe(1, [1])    # single concepts need no second one
    assert FormulaOptions().length_for(2, 3, toy_classifier=True) == 3
    assert FormulaOptions().length_for(1, 3, toy_classifier=True) == 1
    assert FormulaOptions().length_for(2, 3, toy_classifier=False) == 1


def test_replay_and_cache_change_nothing(planted, tmp_path, monkeypatch):
    """The later steps replay the first pass's reduced batches; without room for them the
    model runs again: the same result. A cached search is read back as it was found."""
    from dissect.formulas import run
    ds, model, config, stats, _, _, _, res = planted
    monkeypatch.setattr(run, "REPLAY_BUDGET", 0)
    again = search_formulas(model, {"units": 3}, ds, stats, config, FormulaOptions(length=3), progress=False)["units"]
    assert (again.formulas, again.ious, again.by_length, again.exact) == (res.formulas, res.ious, res.by_length,
                                                                         res.exact)
    assert np.array_equal(again.single_iou, res.single_iou)
    layers = []
    for i in range(2):
        layer = summarize_layer(stats["units"], ds, config)
        layer["name"] = "units"
        add_formulas(model, [layer], ds, stats, config, FormulaOptions(length=3), {"units": 3}, progress=False,
                     cache_dir=tmp_path, cache_parts={"model": "wired"})
        layers.append(layer)
        monkeypatch.setattr(run, "search_formulas", None)    # the second report must not search
    assert layers[0]["formulas"] == layers[1]["formulas"]
    assert [u["formula"] for u in layers[0]["units"]] == [u["formula"] for u in layers[1]["units"]]
    assert [u["formula"]["text"] for u in layers[1]["units"][:4]] == [
        formula_text(f, {n: lab.display for n, lab in ds.index.labels.items()}) for f in res.formulas[:4]]


def test_formula_parts_on_the_top_images_are_the_counted_pixels(planted, tmp_path):
    """The rows drawn on a unit's top images (issue 23, item 4) hold exactly the pixels the
    counts use: each part's and the formula's truth per pixel equals the reference's masks
    (a mask per concept), and an image is marked unscored exactly where it is not annotated
    in the row's categories. The rows are written, one per part and one for the formula."""
    from PIL import Image

    from dissect.formulas.strips import MAX_TILE, formula_pixels, image_labels, part_formulas
    ds, model, config, stats, ref, _, _, res = planted
    name = {lab.display: n for n, lab in ds.index.labels.items()}
    sh, _ = ds.label_size
    scene = next(n for n, lab in ds.index.labels.items() if ds.index.categories[int(ds.index.primary_category_tensor()[n])] == "scene")
    extra = [((name["tree"], name["green"], scene), (2, 0)),          # (tree AND NOT green) OR <a scene>
             ((scene, name["sky"]), (1,))]                            # <a scene> AND sky
    for f in [res.formulas[0], res.formulas[1], *extra]:
        rows = part_formulas(f)
        truth, scored = formula_pixels([image_labels(ds, i) for i in range(N)], rows, ref.prim)
        for r, g in enumerate(rows):
            assert np.array_equal(truth[r], ref.mask(g).numpy()), (f, r)
            cats = sorted({int(ref.prim[c]) for c in g[0]})
            assert np.array_equal(scored[r], ref.annotated[:, cats].any(dim=1).numpy())
    layer = summarize_layer(stats["units"], ds, config)
    layer["name"], layer["slug"] = "units", "units"
    add_formulas(model, [layer], ds, stats, config, FormulaOptions(length=3), {"units": 3}, progress=False,
                 strips_dir=tmp_path)
    for k, u in enumerate(layer["units"]):
        f = res.formulas[k]
        if len(f[0]) == 1:
            assert "strips" not in u["formula"]
            continue
        rows = u["formula"]["strips"]
        assert [r["part"] for r in rows] == [p["name"] if not p["op"] else f"{p['op']} {p['name']}"
                                             for p in u["formula"]["parts"]] + ["= formula"]
        for r in rows:
            with Image.open(tmp_path / r["src"]) as im:
                assert im.height == min(max(96, min(sh, 224)), MAX_TILE) and im.width > im.height * len(stats["units"].top_indices[k]) - 1
