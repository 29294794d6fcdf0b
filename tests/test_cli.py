"""The command line end to end: results, caching, and one-line errors with exit code 2."""

import json
import shutil

import pytest
import torch

from dissect.cli import main
from dissect.experiments.dissection import DissectConfig
from dissect import report


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, needle", [
    (["--model", "vgg61"], "unknown model 'vgg61'; valid: vgg16"),
    (["--model", "toy", "--weights", "none", "--layer", "conv9_9"], "unknown layer 'conv9_9'"),
    (["--model", "toy", "--weights", "none", "--data", "/nonexistent/broden"], "does not exist"),
    (["--model", "toy", "--weights", "/nonexistent/w.pth"], "/nonexistent/w.pth"),
    (["--model", "toy", "--weights", "none", "--quantile", "0.7"], "--quantile"),
    (["--model", "toy", "--weights", "none", "--device", "cuda:7"], "cuda"),
    (["--layer", "conv4_2"], "add --model NAME (this run reports 2 models: toy, toygan)"),
    (["--model", "toy", "--model", "toy"], "share the name"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, needle):
    code, out, err = run_cli(capsys, "report", *args, "--out", str(tmp_path / "site"), "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dissect: error: ") and needle in lines[0], err
    assert not (tmp_path / "site").exists()


def test_foreign_out_dir_is_refused_untouched(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, "report", "--model", "toy", "--weights", "none",
                           "--out", str(out), "--quiet")
    assert code == 2 and "not a dissect site" in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


class CountingNet(torch.nn.Module):
    """A tiny conv net that counts its forward passes over data (batches of more than one
    image; a one-image dummy pass finds the default layer)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.relu = torch.nn.ReLU()
        self.calls = 0

    def forward(self, x):
        self.calls += int(x.shape[0] > 1)
        return self.relu(self.conv(x))


def test_report_cache_force_and_results(tmp_path, toyworld_small):
    net = CountingNet()
    kw = dict(layers=["relu"], data=str(toyworld_small), input_size=64, cache_dir=tmp_path / "c",
              config=DissectConfig(top_k=3, num_workers=0), reproducible=True, progress=False)
    index = report(net, out=tmp_path / "s1", **kw)
    assert index.is_file()
    assert len(list((tmp_path / "c" / "labels").glob("labels-*.bin"))) == 1   # the label cache (default auto)
    first = net.calls
    assert first > 0
    report(net, out=tmp_path / "s2", **kw)                # identical rerun: cached stats
    assert net.calls == first
    files1 = {p.relative_to(tmp_path / "s1"): p.read_bytes() for p in (tmp_path / "s1").rglob("*") if p.is_file()}
    files2 = {p.relative_to(tmp_path / "s2"): p.read_bytes() for p in (tmp_path / "s2").rglob("*") if p.is_file()}
    assert files1 == files2
    report(net, out=tmp_path / "s2", force=True, **kw)    # --force recomputes
    assert net.calls > first
    with torch.no_grad():                                  # changed weights: recomputed
        net.conv.bias.add_(0.1)
    before = net.calls
    report(net, out=tmp_path / "s3", **kw)
    assert net.calls > before

    slug = "CountingNet"
    res = json.loads((tmp_path / "s1" / slug / "results.json").read_text())
    assert res["schema_version"] == 1 and res["probe"]["num_images"] == 200
    assert res["params"]["quantile"] == 0.005 and res["params"]["iou_threshold"] == 0.04
    assert len(res["model"]["weights_sha256"]) == 64
    layer = res["layers"][0]
    assert layer["num_units"] == 8 and len(layer["units"]) == 8
    for u in layer["units"]:
        assert len(u["top_images"]) == 3
        assert u["detector"] == (u["iou"] > 0.04)


def test_corrupt_image_skipped_and_counted(tmp_path, toyworld_small):
    data = tmp_path / "broken"
    shutil.copytree(toyworld_small, data)
    victim = sorted((data / "images").glob("toy-*[0-9].png"))[5]
    victim.write_bytes(b"\x89PNG garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        report(CountingNet(), layers=["relu"], data=str(data), input_size=64,
               cache_dir=tmp_path / "c", out=tmp_path / "s", reproducible=True, progress=False,
               config=DissectConfig(top_k=3, num_workers=0))
    res = json.loads((tmp_path / "s" / "CountingNet" / "results.json").read_text())
    assert res["probe"]["num_skipped"] == 1 and res["probe"]["num_images"] == 199
    assert res["probe"]["skipped"] == [victim.name]


def test_corrupt_probe_image_is_one_console_line_once(capsys, tmp_path, toyworld_small):
    """On the command line a skipped image is one line on stderr naming the file (not
    Python's two-line warning), said once although both passes and the ablation read it."""
    data = tmp_path / "broken"
    shutil.copytree(toyworld_small, data)
    victim = sorted((data / "images").glob("toy-*[0-9].png"))[3]
    victim.write_bytes(b"\x89PNG garbage")
    code, out, err = run_cli(capsys, "report", "--model", "toy", "--weights", "none", "--layer", "conv4_2",
                             "--data", str(data), "--data-size", "40", "--top-k", "2", "--workers", "0",
                             "--quiet", "--reproducible", "--out", str(tmp_path / "s"),
                             "--cache-dir", str(tmp_path / "c"), "--ablation-top-n", "1,all",
                             "--attack-pairs", "0")
    assert code == 0, err
    warned = [line for line in err.splitlines() if victim.name in line]
    assert warned == [line for line in err.splitlines() if "skipped" in line.lower()]
    # the only other warning: 39 probe images are too few to tell detectors from chance
    others = [line for line in err.splitlines() if "warning" in line.lower() and line not in warned]
    assert len(others) == 1 and "too small to separate detectors from chance (39 probe images" in others[0]
    assert len(warned) == 1 and warned[0].startswith(f"dissect: warning: skipped unreadable image {victim}: ")
    res = json.loads((tmp_path / "s" / "toy" / "results.json").read_text())
    assert res["probe"]["num_skipped"] == 1 and res["probe"]["skipped"] == [victim.name]


# every registered torchvision ImageNet classifier (the modern families are in
# test_feature_maps.py, the papers' Places365 networks in test_papers_models.py)
TORCHVISION_CLASSIFIERS = [("vgg16", "conv5_3"), ("resnet18", None), ("vgg19", None), ("alexnet", None),
                           ("resnet50", None), ("resnet101", None), ("resnet152", None), ("googlenet", None),
                           ("inception_v3", None), ("densenet161", None), ("mobilenet_v2", None)]


@pytest.mark.slow
@pytest.mark.parametrize("model, layer", TORCHVISION_CLASSIFIERS)
def test_torchvision_models_end_to_end_offline(capsys, tmp_path, model, layer):
    args = ["report", "--model", model, "--weights", "none", "--data", "toyworld",
            "--data-size", "6", "--top-k", "2", "--out", str(tmp_path / "s"), "--quiet",
            "--batch-size", "3"]
    if layer:
        args += ["--layer", layer]
    if model == "inception_v3":   # its 299 px cannot be drawn by the toy world (labels at half size)
        args += ["--input-size", "224"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    res = json.loads((tmp_path / "s" / model / "results.json").read_text())
    units = {"vgg16": 512, "resnet18": 512, "vgg19": 512, "alexnet": 256, "resnet50": 2048, "resnet101": 2048,
             "resnet152": 2048, "googlenet": 1024, "inception_v3": 2048, "densenet161": 2208,
             "mobilenet_v2": 1280}[model]
    assert res["layers"][0]["num_units"] == units == len(res["layers"][0]["units"])
    assert res["model"]["weights"] == "none"
    assert (tmp_path / "s" / "index.html").is_file()
