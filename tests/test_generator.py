"""Generators: segmenters, the generated probe set, interventions, and the shipped toy GAN.

The criteria of the toy generator (tree units, tree ablation, door insertion in context)
are asserted on the shipped weights, from one report run shared by the module.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from dissect.cli import main
from dissect.data.broden import BrodenDataset, BrodenIndex, decode_label_png
from dissect.data.generated import write_generated_probe
from dissect.errors import DissectError
from dissect.experiments.generator import GeneratorExperimentConfig, GeneratorRunner
from dissect.hooks import Intervene
from dissect.models.latents import output_range, sample_z
from dissect.models.loading import from_module
from dissect.models.weights import WEIGHTS_DIR
from dissect.models.zoo.toy import TOYGAN_Z_DIM as Z
from dissect.models.zoo.toy import ToyGenerator
from dissect.segmenters.color import ColorNamer
from dissect.segmenters.registry import load_segmenter
from dissect.segmenters.torchvision import TorchvisionSegmenter

HAVE_GAN = (WEIGHTS_DIR / "toy_generator.safetensors").is_file()
HAVE_SEG = (WEIGHTS_DIR / "toy_segmenter.safetensors").is_file()


# ------------------------------------------------------------------ segmenters
def test_toy_segmenter_heldout_pixel_accuracy():
    """The shipped segmenter on toy scenes it never saw: >= 95% of pixels get the right object."""
    from dissect.training.segmenter import SEG_HELDOUT_SEED_BASE, pixel_accuracy, render_segmentation_set
    seg = load_segmenter("toy")
    x, obj, part = render_segmentation_set(range(SEG_HELDOUT_SEED_BASE, SEG_HELDOUT_SEED_BASE + 60))
    acc = pixel_accuracy(seg.net, x, obj, part)
    assert acc["object_pixel_accuracy"] >= 0.95, acc
    assert acc["part_pixel_accuracy"] >= 0.80, acc
    record = json.loads((WEIGHTS_DIR / "toy_segmenter.json").read_text())
    assert record["heldout"]["object_pixel_accuracy"] >= 0.95
    assert "dissect train toy-segmenter" in record["command"]


def test_toy_segmenter_output_is_consistent_with_its_concepts():
    from dissect.data.toyworld import render_scene
    seg = load_segmenter("toy")
    sc = render_scene(50_000_123, 64)
    x = torch.from_numpy(sc.image).permute(2, 0, 1)[None].float() / 255
    lab = seg.segment(x)
    assert lab.shape == (1, 3, 64, 64) and lab.dtype == torch.int64
    for li, cat in enumerate(seg.layers):
        nums = lab[0, li].unique().tolist()
        assert all(n == 0 or seg.concepts[n - 1][1] == cat for n in nums), (cat, nums)
    # colors come from the color namer, exactly
    from dissect.segmenters.color import name_colors
    u8 = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert torch.equal(lab[0, 2] - 1 - 12 - 8, torch.from_numpy(name_colors(u8)).long())
    # a 128 px image is resized for the net and the labels come back at 128 px
    big = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    assert seg.segment(big).shape == (1, 3, 128, 128)


def test_unknown_concept_lists_the_known_ones():
    seg = load_segmenter("toy")
    with pytest.raises(DissectError, match=r"unknown concept 'treee'.*tree"):
        seg.number("treee")


def test_color_namer_segmenter():
    seg = ColorNamer()
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0] = 1.0  # pure red
    lab = seg.segment(x)
    assert lab.shape == (1, 1, 8, 8)
    assert seg.concepts[int(lab[0, 0, 0, 0]) - 1][0] == "red-c"


def test_torchvision_segmenter_interface(tmp_path):
    seg = TorchvisionSegmenter("lraspp_mobilenet_v3_large", weights="none")
    lab = seg.segment(torch.rand(2, 3, 64, 64))
    assert lab.shape == (2, 2, 64, 64)
    assert int(lab[:, 0].max()) <= 20 and seg.concepts[0] == ("aeroplane", "object")
    # a local copy of the weights file is read (weights_only), as the download would be
    path = tmp_path / "lraspp.pth"
    torch.save(seg.net.state_dict(), path)
    again = TorchvisionSegmenter("lraspp_mobilenet_v3_large", weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(again.segment(x), seg.segment(x))


def test_user_segmenter_callable(tmp_path, monkeypatch):
    (tmp_path / "myseg.py").write_text(textwrap.dedent("""
        import torch
        class Halves:
            concepts = [("top", "object"), ("bottom", "object")]
            layers = ["object"]
            def segment(self, images):
                n, _, h, w = images.shape
                out = torch.ones(n, 1, h, w, dtype=torch.long)
                out[:, :, h // 2:] = 2
                return out
        def make():
            return Halves()
        def broken():
            return object()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    seg = load_segmenter("myseg:make")
    assert seg.number("bottom") == 2 and seg.segment(torch.rand(1, 3, 4, 4))[0, 0, 3, 0] == 2
    with pytest.raises(DissectError, match="has no 'concepts'"):
        load_segmenter("myseg:broken")
    with pytest.raises(DissectError, match="unknown segmenter"):
        load_segmenter("nope")


# ------------------------------------------------------------------ generator basics
def test_output_range_detection():
    assert output_range(torch.tensor([-0.9, 0.8]).view(1, 1, 1, 2).expand(1, 3, 1, 2)) == "tanh"
    assert output_range(torch.rand(2, 3, 4, 4)) == "unit"
    with pytest.raises(DissectError, match=r"values in \[0, 255\]"):
        output_range(torch.tensor([0.0, 255.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    with pytest.raises(DissectError, match=r"image batch \[N, 3, H, W\]"):
        output_range(torch.rand(2, 10))
    with pytest.raises(DissectError, match="NaN"):
        output_range(torch.full((1, 3, 2, 2), float("nan")))


def test_latents_are_reproducible_slices():
    a = sample_z(10, seed=3, z_dim=Z)
    assert torch.equal(sample_z(4, seed=3, z_dim=Z, start=6), a[6:])
    assert not torch.equal(sample_z(10, seed=4, z_dim=Z), a)


def test_toygan_weights_of_another_width_load(tmp_path):
    """`--weights FILE` of a toy generator trained at another --width builds that width."""
    from safetensors.torch import save_file

    from dissect.models.loading import load_model
    torch.manual_seed(0)
    narrow = ToyGenerator(width=8).eval()
    path = tmp_path / "narrow.safetensors"
    save_file(narrow.state_dict(), str(path))
    loaded = load_model("toygan", weights=str(path), progress=False)
    assert loaded.module.layer4[0].out_channels == 8 and loaded.module.layer1[0].out_channels == 64
    z = sample_z(3, seed=1, z_dim=Z)
    with torch.no_grad():
        assert torch.equal(loaded.module(z), narrow(z))
    # half-precision files load into the float32 model
    save_file({k: v.half() if v.is_floating_point() else v for k, v in narrow.state_dict().items()},
              str(path))
    half = load_model("toygan", weights=str(path), progress=False).module
    assert half.layer4[0].weight.dtype == torch.float32
    with torch.no_grad():
        assert (half(z) - narrow(z)).abs().max() < 0.05


def test_split_tail_equals_intervention_in_full_forward(device):
    torch.manual_seed(0)
    gen = ToyGenerator().eval()
    for layer in ("layer2", "layer3"):
        runner = GeneratorRunner(gen, layer, torch.device(device))
        assert runner.method.startswith("split")
        z = sample_z(4, 1, Z)
        acts = runner.acts(z)
        edited = acts.clone()
        edited[:, [1, 5, 7]] = 0
        edited[:, 2, 1:3, 1:3] = 9.0
        fast = runner.images(edited, z)
        assert fast.device.type == device
        with Intervene(gen, layer, lambda o: edited), torch.no_grad():
            slow = gen(z.to(device))
        ref = ((slow + 1) / 2).clamp(0, 1)
        ref = (ref * 255).round() / 255
        assert torch.allclose(fast, ref, atol=1e-6)


def test_generated_probe_is_a_broden_set_labeled_by_the_segmenter(tmp_path):
    torch.manual_seed(0)
    loaded = from_module(ToyGenerator(), name="g", kind="generator", z_dim=128)
    seg = ColorNamer()
    root = write_generated_probe(loaded, seg, tmp_path / "probe", n=10, seed=5, batch_size=4, progress=False)
    index = BrodenIndex(root)
    assert len(index.records) == 10 and index.categories == ["color"]
    assert index.segmenter_labeled   # every image annotated in every category: plain IoU
    lat = np.load(root / "latents.npy")
    assert np.array_equal(lat, sample_z(10, 5, Z).numpy())
    ds = BrodenDataset(index, input_size=64, model_input="latent")
    assert torch.equal(ds[3]["image"], sample_z(1, 5, Z, start=3)[0])
    # the labels are the segmenter's labels of exactly the saved pixels
    rec = index.records[7]
    img = torch.from_numpy(np.asarray(Image.open(root / "images" / rec.image), dtype=np.float32)).permute(2, 0, 1)[None] / 255
    want = seg.segment(img)[0, 0].numpy()
    got = decode_label_png(root / "images" / rec.pixel_files[0])
    assert np.array_equal(got, want)
    # cached: a second call with the same inputs does not rewrite
    mtime = (root / "index.csv").stat().st_mtime_ns
    write_generated_probe(loaded, seg, tmp_path / "probe", n=10, seed=5, progress=False)
    assert (root / "index.csv").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------ bad input through the CLI
GEN_MODULE = textwrap.dedent("""
    import torch
    from torch import nn
    class Gen(nn.Module):
        def __init__(self, scale=1.0):
            super().__init__()
            self.fc = nn.Linear(8, 16 * 4 * 4)
            self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.ReLU(),
                                    nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Tanh())
            self.scale = scale
        def forward(self, z):
            return self.up(self.fc(z).view(-1, 16, 4, 4)) * self.scale
    def good():
        return Gen()
    def bytes255():
        return Gen(scale=255.0)
""")


@pytest.fixture()
def gen_module(tmp_path, monkeypatch):
    (tmp_path / "tinygen.py").write_text(GEN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(args, tmp_path, capsys):
    code = main(["report", "--quiet", "--cache-dir", str(tmp_path / "cache"), *args])
    return code, capsys.readouterr().err


def test_custom_generator_end_to_end(gen_module, capsys):
    code, err = _cli(["--model", "tinygen:good", "--kind", "generator", "--z-dim", "8", "--segmenter",
                      "color", "--data-size", "40", "--gen-samples", "8", "--ablate-concept", "blue-c",
                      "--insert-concept", "red-c", "--out", "site"], gen_module, capsys)
    assert code == 0, err
    r = json.loads((gen_module / "site" / "tinygen-good" / "results.json").read_text())
    assert r["model"]["kind"] == "generator" and r["layers"][0]["name"] == "up.1"
    assert r["params"]["quantile"] == 0.01 and r["params"]["quantile_space"] == "upsampled"
    assert r["params"]["union"].startswith("every image, every category"), r["params"]["union"]
    g = r["generator"]["layers"][0]
    assert g["ablation"][0]["concept"] == "blue-c" and g["insertion"][0]["concept"] == "red-c"
    assert (gen_module / "site" / "tinygen-good" / "up.1" / "interventions.html").is_file()


def test_reproducible_generator_sites_are_byte_identical(gen_module, capsys):
    """--reproducible: two runs of one command (the second from an empty cache) give the same
    bytes in every file, interventions included; the run time is in neither."""
    import shutil
    args = ["--model", "tinygen:good", "--kind", "generator", "--z-dim", "8", "--segmenter", "color",
            "--data-size", "40", "--gen-samples", "8", "--ablate-concept", "blue-c",
            "--insert-concept", "red-c", "--out", "site"]
    trees = []
    for _ in range(2):
        shutil.rmtree(gen_module / "cache", ignore_errors=True)
        code, err = _cli([*args, "--reproducible"], gen_module, capsys)
        assert code == 0, err
        site = gen_module / "site"
        trees.append({p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.rglob("*"))
                      if p.is_file()})
    assert sorted(trees[0]) == sorted(trees[1]) and "tinygen-good/up.1/interventions.html" in trees[0]
    assert [k for k in trees[0] if trees[0][k] != trees[1][k]] == []
    r = json.loads(trees[0]["tinygen-good/results.json"])
    assert r["provenance"]["created"] is None and r["provenance"]["seconds"] is None
    assert all("seconds" not in layer for layer in r["generator"]["layers"])
    code, err = _cli(args, gen_module, capsys)   # not reproducible: the run is dated and timed
    assert code == 0, err
    timed = json.loads((gen_module / "site" / "tinygen-good" / "results.json").read_text())
    assert timed["provenance"]["seconds"] > 0 and timed["provenance"]["created"]
    page = (gen_module / "site" / "tinygen-good" / "index.html").read_text()
    assert '<th scope="row">command</th>' in page and '<th scope="row">seconds</th>' not in page


@pytest.mark.parametrize("args, message", [
    (["--model", "tinygen:bytes255", "--kind", "generator", "--z-dim", "8"], "values in"),
    (["--model", "tinygen:good", "--kind", "generator"], "--z-dim"),
    (["--model", "tinygen:good", "--kind", "generator", "--z-dim", "8", "--layer", "fc",
      "--segmenter", "color"], "spatial"),
    (["--model", "tinygen:good", "--kind", "generator", "--z-dim", "8", "--segmenter", "color",
      "--ablate-concept", "tree", "--data-size", "8"], "unknown concept 'tree'"),
    (["--model", "tinygen:good", "--kind", "generator", "--z-dim", "8", "--segmenter", "nope"],
     "unknown segmenter"),
])
def test_generator_bad_input(gen_module, capsys, args, message):
    code, err = _cli([*args, "--out", "site"], gen_module, capsys)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dissect: error:") and message in lines[0], err
    assert not (gen_module / "site").exists()


def test_evaluate_only_without_a_trained_generator_is_one_line(tmp_path, capsys):
    code = main(["train", "toy-generator", "--evaluate-only", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has no toy_generator.safetensors" in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the shipped toy generator
@pytest.fixture(scope="module")
def toygan_report(tmp_path_factory):
    if not (HAVE_GAN and HAVE_SEG):
        pytest.fail("the toy generator or segmenter weights are missing from the package")
    from dissect import report
    out = tmp_path_factory.mktemp("toygan")
    report(model="toygan", out=out / "site", progress=False, cache_dir=out / "cache")
    return out / "site", json.loads((out / "site" / "toygan" / "results.json").read_text())


@pytest.mark.slow
def test_toygan_has_tree_units(toygan_report):
    _, r = toygan_report
    best = max((t["iou"] for layer in r["layers"] for u in layer["units"]
                for t in u.get("top_concepts", []) if t["name"] == "tree"), default=0.0)
    labeled = [u for layer in r["layers"] for u in layer["units"] if u.get("label") == "tree"]
    assert labeled and max(u["iou"] for u in labeled) >= 0.1, best


@pytest.mark.slow
def test_toygan_tree_ablation(toygan_report):
    _, r = toygan_report
    abl = next(a for layer in r["generator"]["layers"] for a in layer["ablation"] if a["concept"] == "tree")
    assert abl["samples"] >= 200
    ten = next(p for p in abl["curve"] if p["n"] == 10)
    assert ten["drop"] >= 0.5, ten
    assert ten["random_drop"] < 0.1, ten


@pytest.mark.slow
def test_toygan_door_insertion_needs_walls(toygan_report):
    _, r = toygan_report
    ins = next(a for layer in r["generator"]["layers"] for a in layer["insertion"] if a["concept"] == "door")
    ctx = {c["context"]: c for c in ins["contexts"]}
    assert "wall" in ctx and "sky" in ctx, list(ctx)
    assert ctx["wall"]["added_pixels"] >= 3 * max(ctx["sky"]["added_pixels"], 1e-9), ctx


@pytest.mark.slow
def test_toygan_site_has_strips_and_animations(toygan_report):
    site, r = toygan_report
    for layer in r["generator"]["layers"]:
        page = site / "toygan" / layer["slug"] / "interventions.html"
        html = page.read_text()
        for exp in layer["ablation"] + layer["insertion"]:
            strip = page.parent / exp["strip"]
            anim = page.parent / exp["animation"]
            assert exp["strip"] in html and strip.is_file()
            with Image.open(strip) as im:
                assert im.height >= 2 * 64
            with Image.open(anim) as im:
                assert getattr(im, "n_frames", 1) >= 2
    assert (site / "toygan" / "index.html").read_text().count("interventions.html") >= 1
    # a unit switched off by the tree ablation says so on its page, once; ids stay unique
    import re
    layer = r["generator"]["layers"][0]
    unit = layer["ablation"][0]["units"][0]
    for page in (site / "toygan" / layer["slug"] / f"unit-{unit:04d}.html",
                 site / "toygan" / layer["slug"] / "interventions.html"):
        html = page.read_text()
        ids = re.findall(r'\bid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), page
    html = (site / "toygan" / layer["slug"] / f"unit-{unit:04d}.html").read_text()
    assert html.count("Interventions with this unit") == 1 and "removed with the top" in html


# ------------------------------------------------------------------ experiments vs brute force
def _brute_images(gen, layer, z, edit):
    from dissect.hooks import Intervene
    with Intervene(gen, layer, edit), torch.no_grad():
        out = gen(z.to(next(gen.parameters()).device))
    return ((((out + 1) / 2).clamp(0, 1)) * 255).round() / 255


def test_ablation_and_insertion_numbers_match_brute_force(device):
    """The experiment's curves equal full forward passes with a hook, image by image."""
    from dissect.experiments.generator import ablation_experiment, insertion_experiment
    torch.manual_seed(1)
    gen = ToyGenerator(width=16).eval()  # the arithmetic does not depend on the width
    seg = ColorNamer()
    layer = "layer3"
    runner = GeneratorRunner(gen, layer, torch.device(device))
    cfg = GeneratorExperimentConfig(top_n=(1, 3), units=3, samples=6, insert_samples=4, curve_samples=2,
                                    random_draws=2, region=8, device=device)
    z = sample_z(6, 2, Z)
    acts = [runner.acts(z[:4]), runner.acts(z[4:])]
    rng = np.random.default_rng(0)
    concept = "green-c"
    iou_row = rng.random(gen.layer3[0].out_channels)
    res, _ = ablation_experiment(runner, seg, concept, iou_row, cfg, z, acts)
    top = list(np.argsort(-iou_row, kind="stable")[:3])
    assert res["units"][:3] == [int(u) for u in top]

    def frac(images):
        lab = seg.segment(images)[:, 0]
        return (lab == seg.number(concept)).float().mean().item()

    base = frac(_brute_images(gen, layer, z, lambda o: o))
    assert res["baseline_fraction"] == pytest.approx(base, abs=1e-6)
    for point in res["curve"]:
        units = top[:point["n"]]

        def zero(o, units=units):
            o = o.clone()
            o[:, units] = 0
            return o
        assert point["fraction"] == pytest.approx(frac(_brute_images(gen, layer, z, zero)), abs=1e-6)
        # random set d ablates latents d, d + D, d + 2D, ... (D = random_draws): the baseline is
        # the mean over all latents, each with its own set, and the range is over the sets
        draws = len(point["random_units"])
        assert draws == cfg.random_draws
        rnd, drops = 0.0, []
        for d, u in enumerate(point["random_units"]):
            zd = z[d::draws]
            f = frac(_brute_images(gen, layer, zd, lambda o, u=u: torch.where(
                torch.isin(torch.arange(o.shape[1]), torch.tensor(u)).view(1, -1, 1, 1).to(o.device),
                torch.zeros_like(o), o)))
            rnd += f * len(zd) / len(z)
            b = frac(_brute_images(gen, layer, zd, lambda o: o))
            drops += [1 - f / b] if b > 0 else []     # a set whose latents hold no concept: no drop
        assert point["random_fraction"] == pytest.approx(rnd, abs=1e-6)
        assert point["random_drop_min"] == (pytest.approx(min(drops), abs=1e-6) if drops else None)
        assert point["random_drop_max"] == (pytest.approx(max(drops), abs=1e-6) if drops else None)

    values = torch.rand(64) * 5
    ins, _ = insertion_experiment(runner, seg, concept, iou_row, values, cfg, z[:4], [acts[0]])
    assert ins["positions"] == 4 and ins["samples"] == 4 and ins["insertions"] == 16
    before = seg.segment(_brute_images(gen, layer, z[:4], lambda o: o))[:, 0] == seg.number(concept)
    total = 0.0
    for y in (0, 8):
        for x in (0, 8):
            def put(o, y=y, x=x):
                o = o.clone()
                o[:, top, y:y + 8, x:x + 8] = values[top].view(1, -1, 1, 1).to(o)
                return o
            after = seg.segment(_brute_images(gen, layer, z[:4], put))[:, 0] == seg.number(concept)
            total += (after & ~before).sum().item()
    main = next(p for p in ins["curve"] if p["n"] == 3)
    assert main["added_pixels"] == pytest.approx(total / 16, abs=1e-6)
    # the curve's other N and the random baseline: the first curve_samples latents, every position
    k = cfg.curve_samples
    assert ins["curve_samples"] == k
    for n, units in ((1, top[:1]), (None, ins["random_units"])):
        got = 0.0
        for y in (0, 8):
            for x in (0, 8):
                def put(o, y=y, x=x, units=units):
                    o = o.clone()
                    o[:, units, y:y + 8, x:x + 8] = values[units].view(1, -1, 1, 1).to(o)
                    return o
                after = seg.segment(_brute_images(gen, layer, z[:k], put))[:, 0] == seg.number(concept)
                got += (after & ~before[:k]).sum().item()
        want = ins["random_added_pixels"] if n is None else next(p for p in ins["curve"] if p["n"] == 1)["added_pixels"]
        assert want == pytest.approx(got / (4 * k), abs=1e-6)
    assert sum(c["count"] for c in ins["contexts"]) == 16
