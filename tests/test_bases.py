"""Feature bases of a layer (issue 24, docs/bases.md): a planted superposition of concept
detectors that the units cannot separate and an SAE recovers; an axis-aligned layer whose
units are already the concepts; the rotation basis is the rotation experiment's ``R(1)``;
PCA and NMF against references; the bad inputs refused in one line.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect.bases.dictionary import explained_variance, fit_nmf, fit_pca, fit_sae, nmf_code
from dissect.bases.features import best_by_concept, dissect_bases, fit_bases
from dissect.bases.options import BasisOptions
from dissect.cli import main
from dissect.data.broden import BrodenDataset
from dissect.data.toyworld import LABEL_NUMBER
from dissect.errors import DissectError
from dissect.experiments.compare_runs import rotation_for_report
from dissect.experiments.comparison import layer_counts, mean_live_iou
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.experiments.rotation import random_rotation, rotate_layer, rotation_path
from dissect.models.loading import from_module
from dissect.segmenters.color import COLOR_NAMES, color_layer
from dissect.stats.intervals import IntervalOptions

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
#: The planted concepts: the toy world's colors that cover at least 2% of its pixels.
PLANTED = ["black", "blue", "brown", "green", "grey", "orange", "white", "yellow"]
UNITS = 6   # fewer units than planted concepts
N = 120     # probe images


class Planted(nn.Module):
    """Exact concept detectors mixed into units: each planted color's fraction of every 2x2
    cell (a 32 x 32 map), ``units = mix @ fractions`` at each position. ``mix`` is the
    identity (axis-aligned: each unit is one concept) or a fixed random matrix with unit-norm
    columns (superposition: 8 concepts in 6 units; sparse, since a cell holds one or two)."""

    def __init__(self, mix: torch.Tensor):
        super().__init__()
        self.mix = nn.Parameter(mix, requires_grad=False)
        self.channels = [COLOR_NAMES.index(c) for c in PLANTED]
        self.units = nn.Identity()

    def forward(self, x):
        rgb = (x * STD.to(x.device) + MEAN.to(x.device)).clamp(0, 1)
        named = color_layer(rgb, 0).long() - 1
        onehot = F.one_hot(named, len(COLOR_NAMES)).permute(0, 3, 1, 2).float()[:, self.channels]
        return self.units(torch.einsum("ck,nkhw->nchw", self.mix, F.avg_pool2d(onehot, 2)))


def _mixing() -> torch.Tensor:
    m = torch.randn(UNITS, len(PLANTED), generator=torch.Generator().manual_seed(0))
    return m / m.norm(dim=0, keepdim=True)


CONFIG = DissectConfig(top_k=3, batch_size=50, num_workers=0, device="cpu",
                       intervals=IntervalOptions(replicates=0))
OPTS = BasisOptions(bases=("sae",), sae_width=4, sae_k=1, steps=200, max_vectors=8192)
PARTS = {"test": "planted"}


@pytest.fixture(scope="module")
def probe(toyworld_small):
    return BrodenDataset(toyworld_small, input_size=64, indices=range(N))


def _planted_iou(stats, ds) -> dict[str, float]:
    """Each planted color's best IoU over the units (or features) of ``stats``."""
    best = best_by_concept(stats, ds.index)
    return {c: best[LABEL_NUMBER[f"{c}-c"]] for c in PLANTED}


@pytest.fixture(scope="module")
def reference(probe):
    """The unmixed detectors: each planted concept's own IoU (the identity mix)."""
    stats = dissect_layers(Planted(torch.eye(len(PLANTED))), ["units"], probe, CONFIG, progress=False)["units"]
    return stats


def _bases(model, ds, tmp, names):
    opts = BasisOptions(**{**OPTS.__dict__, "bases": names})
    units = model.mix.shape[0]
    fitted = fit_bases(model, "units", names, units, ds, opts, PARTS, tmp, input_size=64,
                       mean=MEAN.flatten().tolist(), std=STD.flatten().tolist(), config=CONFIG)
    return fitted, dissect_bases(model, "units", fitted, ds, CONFIG, PARTS, tmp, progress=False)


def test_sae_recovers_a_planted_superposition_that_units_cannot(probe, reference, tmp_path_factory):
    model = Planted(_mixing())
    units = dissect_layers(model, ["units"], probe, CONFIG, progress=False)["units"]
    fitted, stats = _bases(model, probe, tmp_path_factory.mktemp("bases"), names=("sae", "pca"))
    ref = _planted_iou(reference, probe)
    assert all(v > CONFIG.iou_threshold for v in ref.values()), ref   # every planted concept is a detector unmixed
    recovered = {name: [c for c, v in _planted_iou(s, probe).items() if v >= 0.9 * ref[c]]
                 for name, s in {"units": units, **stats}.items()}
    # The units: at most one concept each, and not even that for two of them.
    assert len(recovered["units"]) == 4, recovered
    # The SAE: every planted concept, each as one feature, with its unmixed IoU.
    assert recovered["sae"] == PLANTED, recovered
    sae = summarize_layer(stats["sae"], probe, CONFIG)
    assert sae["num_units"] == 4 * UNITS
    # PCA (6 orthogonal directions for 8 concepts) cannot: no more than the units.
    assert len(recovered["pca"]) <= 6
    assert fitted["sae"]["explained_variance"] > 0.95 and fitted["sae"]["mean_active"] == pytest.approx(1.0)
    assert fitted["pca"]["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DissectError, match="nmf needs non-negative activations"):   # a signed mix
        _bases(model, probe, tmp_path_factory.mktemp("nmf"), names=("nmf",))


def test_axis_aligned_units_are_at_least_as_good_as_features(probe, reference, tmp_path_factory):
    model = Planted(torch.eye(len(PLANTED)))
    fitted, stats = _bases(model, probe, tmp_path_factory.mktemp("aligned"), names=("sae", "nmf"))
    units = _planted_iou(reference, probe)
    for basis in ("sae", "nmf"):
        feats = _planted_iou(stats[basis], probe)
        assert all(units[c] >= feats[c] - 1e-9 for c in PLANTED), (basis, units, feats)
        found = {name: sum(v > CONFIG.iou_threshold for v in d.values())
                 for name, d in (("units", units), (basis, feats))}
        assert found["units"] == len(PLANTED) and found["units"] >= found[basis]
    assert fitted["nmf"]["explained_variance"] > 0.9


def test_rotation_basis_reproduces_the_rotation_experiment(probe, tmp_path):
    model = Planted(_mixing())
    fitted, stats = _bases(model, probe, tmp_path, names=("rotation",))
    rot = stats["rotation"]
    # the same statistics as the rotation experiment's hooked copy of the network, exactly
    r = rotation_path(random_rotation(UNITS, 0), [1.0])[0]
    net = copy.deepcopy(model)
    with rotate_layer(net, "units", r):
        hooked = dissect_layers(net, ["units"], probe, CONFIG, progress=False)["units"]
    assert torch.equal(rot.thresholds, hooked.thresholds)
    for k, v in hooked.tally.items():
        assert torch.equal(torch.as_tensor(rot.tally[k]), torch.as_tensor(v)), k
    # and the same counts as `--rotate 1` reports
    point = rotation_for_report(from_module(model, name="planted", input_size=64), "units", None, probe, CONFIG,
                                [1.0], 0, PARTS, tmp_path, progress=False)["points"][0]
    summary = summarize_layer(rot, probe, CONFIG)
    counts = layer_counts(summary, list(probe.index.categories))
    assert {k: counts[k] for k in ("detectors", "unique", "detectors_by_category", "unique_by_category")} == \
        {k: point[k] for k in ("detectors", "unique", "detectors_by_category", "unique_by_category")}
    assert mean_live_iou(summary) == point["mean_iou"]


def test_pca_matches_the_svd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0
    d, var = fit_pca(x)
    xc = (x - x.mean(0)).double()
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    assert torch.allclose(var.double(), s ** 2 / (x.shape[0] - 1), rtol=1e-4)
    # the same components up to sign, and the codes are the projections
    assert torch.allclose((d.encoder.double() * vh).sum(1).abs(), torch.ones(6, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(d.encode(x).double(), xc @ d.encoder.double().T, atol=1e-3)
    assert explained_variance(d, x) == pytest.approx(1.0, abs=1e-5)


def test_nmf_recovers_an_exact_factorization():
    g = torch.Generator().manual_seed(2)
    w0, h0 = torch.rand(400, 4, generator=g), torch.rand(4, 10, generator=g)
    x = w0 @ h0
    d = fit_nmf(x, 4, seed=0, iterations=500)
    assert explained_variance(d, x) > 0.99
    assert bool((d.decoder >= 0).all()) and bool((nmf_code(x, d.decoder) >= 0).all())
    assert torch.allclose(d.decoder.norm(dim=1), torch.ones(4), atol=1e-5)


def test_sae_is_deterministic_for_a_seed():
    x = torch.rand(2000, 5, generator=torch.Generator().manual_seed(3))
    a, b = fit_sae(x, 10, 2, seed=4, steps=30), fit_sae(x, 10, 2, seed=4, steps=30)
    c = fit_sae(x, 10, 2, seed=5, steps=30)
    assert torch.equal(a.encoder, b.encoder) and torch.equal(a.decoder, b.decoder)
    assert not torch.equal(a.encoder, c.encoder)
    assert int((a.encode(x) != 0).sum(1).max()) <= 2
    l1 = fit_sae(x, 10, 0, seed=4, steps=30)
    assert l1.kind == "sae-l1" and bool((l1.encode(x) >= 0).all())


@pytest.mark.parametrize("opts, units, needle", [
    (BasisOptions(bases=("sae",)), 1, "has 1 unit"),
    (BasisOptions(bases=("sae",), sae_k=8), 8, "k < 8"),
    (BasisOptions(bases=("sae",), sae_width=4000), 8, "choose a width of at most 2048"),
])
def test_bases_that_do_not_fit_the_layer_are_refused(opts, units, needle):
    with pytest.raises(DissectError, match=needle):
        opts.check_layer("sae", units, "layer")


@pytest.mark.parametrize("args, needle", [
    (["--basis", "sae", "--sae-width", "0"], "--sae-width"),
    (["--basis", "sae", "--sae-k", "200"], "--sae-k 200 does not fit layer 'features.18'"),
    (["--basis", "units", "--basis-ablation"], "--basis-ablation needs a basis besides the units"),
])
def test_bad_basis_options_are_one_line_exit_2(capsys, tmp_path, args, needle):
    code = main(["report", "--model", "toy", "--weights", "none", "--data-size", "20", *args,
                 "--out", str(tmp_path / "site"), "--quiet", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "site").exists()


def test_bases_fit_on_another_folder_of_images(toyworld_small, probe, tmp_path):
    """``--basis-data DIR``: the fit reads that folder's images (not the probe set), and a
    folder without images is refused in one line."""
    model = Planted(torch.eye(len(PLANTED)))
    folder = toyworld_small / "images"
    opts = BasisOptions(bases=("pca",), data=str(folder), max_vectors=400)
    kw = dict(input_size=64, mean=MEAN.flatten().tolist(), std=STD.flatten().tolist(), config=CONFIG)
    fitted = fit_bases(model, "units", ["pca"], len(PLANTED), probe, opts, PARTS, tmp_path, **kw)
    n_files = len([p for p in folder.rglob("*") if p.suffix == ".png"])
    assert fitted["pca"]["vectors"] == min(400, n_files * -(-400 // n_files))
    own = fit_bases(model, "units", ["pca"], len(PLANTED), probe, BasisOptions(bases=("pca",), max_vectors=400),
                    PARTS, tmp_path, **kw)
    assert not torch.equal(own["pca"]["dictionary"].center, fitted["pca"]["dictionary"].center)
    with pytest.raises(DissectError, match="not a folder of images"):
        fit_bases(model, "units", ["pca"], len(PLANTED), probe,
                  BasisOptions(bases=("pca",), data=str(tmp_path / "empty")), PARTS, tmp_path, **kw)
