"""Layers are what the user thinks they are: a module that runs more than once per forward
pass (one activation object reused at the stem and the head, as a popular EfficientNet
does) is never a default, is refused by a plain name, and is named one call at a time,
``NAME#K``, by every part that takes a layer (hooks, the split, the report, ``dissect layers``)."""

import json
import re

import pytest
import torch
import torch.nn.functional as F

from dissect import report
from dissect.cli import main
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig
from dissect.hooks import Intervene, Trace, ablate, set_units, split_tail
from dissect.models import IMAGENET_MEAN, IMAGENET_STD, from_module, load_model, resolve_layer
from dissect.models.catalog import layer_rows
from dissect.pipeline import announce_layers, layer_paths
from shared_support import user_module as import_user_file

NET_SOURCE = '''
import torch
from torch import nn


class ReusedActNet(nn.Module):
    """A tiny EfficientNet-shaped CNN: ONE activation module object at the stem and the head."""

    def __init__(self, num_classes=3):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self._bn0 = nn.BatchNorm2d(8)
        self._blocks = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self._conv_head = nn.Conv2d(16, 24, 1)
        self._bn1 = nn.BatchNorm2d(24)
        self._swish = nn.SiLU()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self._swish(self._bn0(self._conv_stem(x)))      # call 1: 8x32x32 at 64 px
        x = self._blocks(x)
        x = self._swish(self._bn1(self._conv_head(x)))      # call 2: 24x16x16
        return self._fc(self._avg_pooling(x).flatten(1))


def make(num_classes=3):
    torch.manual_seed(0)
    net = ReusedActNet(num_classes)
    with torch.no_grad():   # BatchNorm statistics that are not the identity
        for bn in (net._bn0, net._bn1):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net
'''

REFUSAL = ("layer '_swish' runs 2 times per forward pass (call 1: 8x32x32, call 2: 24x16x16); "
           "name one call: _swish#1 or _swish#2")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``reused_act_net.make`` importable as ``reused_act_net:make`` (from the current folder)."""
    return import_user_file(tmp_path, monkeypatch, "reused_act_net", NET_SOURCE)


def _brute(net, x):
    """The stem and head calls of ``_swish``, computed by hand."""
    with torch.no_grad():
        stem = F.silu(net._bn0(net._conv_stem(x)))
        head = F.silu(net._bn1(net._conv_head(net._blocks(stem))))
    return stem, head


# ----------------------------------------------------------------------------- the default
def test_a_module_that_runs_twice_is_never_the_default(user_module):
    m = from_module(user_module.make(), name="reused", input_size=64)
    calls = m.layer_calls()
    spatial = [c for c in calls if c.spatial]
    assert spatial[-1].path == "_swish" and spatial[-1].call == 2      # what the old rule took
    assert [c.calls for c in calls if c.path == "_swish"] == [2, 2]
    assert m.default_layers == ["_bn1"]
    assert m.default_reason == ("the last module whose output is a spatial map (24x16x16) in one forward "
                                "pass; _swish runs 2 times and was skipped (use _swish#2)")
    # loaded by name (package.module:callable) the same
    loaded = load_model("reused_act_net:make", input_size=64)
    assert loaded.default_layers == ["_bn1"] and loaded.default_reason == m.default_reason


def test_registered_default_says_so_and_names_alias_first(capsys):
    toy = load_model("toy", weights="none", progress=False)
    assert toy.default_reason == "the registered defaults of toy"
    paths = layer_paths(toy, [])
    assert paths[-1] == ("features.18", "conv4_2")
    announce_layers(toy, paths, "the registered defaults of toy", progress=True)
    line = capsys.readouterr().out.strip()
    assert line == ("dissect: toy: layers conv2_2 (features.8), conv3_2 (features.13), conv4_2 (features.18): "
                    "the registered defaults of toy")
    # a dotted path gets the paper's name beside it too
    assert layer_paths(toy, ["features.18"]) == [("features.18", "conv4_2")]
    # named in any order, layers are dissected and listed shallow to deep (as the pages say)
    assert [p for p, _ in layer_paths(toy, ["conv4_2", "conv2_2", "features.13"])] == \
        ["features.8", "features.13", "features.18"]


def test_layers_are_ordered_by_the_call_not_the_module(user_module):
    """Call 2 of the reused activation runs after ``_bn1``, call 1 before everything else."""
    m = from_module(user_module.make(), name="reused", input_size=64)
    got = layer_paths(m, ["_swish#2", "_bn1", "_swish#1", "_blocks"])
    assert [p for p, _ in got] == ["_swish#1", "_blocks", "_bn1", "_swish#2"]


# ----------------------------------------------------------------------------- naming a call
def test_plain_name_refused_calls_named_and_checked(user_module):
    m = from_module(user_module.make(), name="reused", input_size=64, aliases={"act": "_swish"})
    with pytest.raises(DissectError) as e:
        resolve_layer(m, "_swish")
    assert str(e.value) == REFUSAL and "\n" not in str(e.value)
    with pytest.raises(DissectError, match=r"^layer 'act' runs 2 times .* name one call: act#1 or act#2$"):
        resolve_layer(m, "act")
    assert resolve_layer(m, "_swish#2") == ("_swish#2", None)
    assert resolve_layer(m, "act#1") == ("_swish#1", "act#1")
    with pytest.raises(DissectError, match=r"_swish#3: '_swish' runs 2 times .*K goes from 1 to 2"):
        resolve_layer(m, "_swish#3")
    assert resolve_layer(m, "_bn1#1") == ("_bn1", None)           # call 1 of a module that runs once
    with pytest.raises(DissectError, match="K goes from 1 to 1"):
        resolve_layer(m, "_bn1#2")
    for bad in ("_swish#0", "_swish#x", "#2"):
        with pytest.raises(DissectError, match="NAME#K"):
            resolve_layer(m, bad)


def test_cli_refuses_the_plain_name_in_one_line(capsys, tmp_path, user_module, toyworld_small):
    code = main(["report", "--model", "reused_act_net:make", "--layer", "_swish", "--data", str(toyworld_small),
                 "--input-size", "64", "--out", str(tmp_path / "site"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"dissect: error: {REFUSAL}"]
    assert not (tmp_path / "site").exists()


def test_dissect_layers_shows_shapes_calls_and_the_default(capsys, user_module):
    assert main(["layers", "reused_act_net:make", "--input-size", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {r.split()[1] if r.startswith("*") else r.split()[0]: r for r in out[2:] if r.strip()}
    assert re.fullmatch(r"\s+_swish#1\s+8x32x32\s+8\s+2", rows["_swish#1"])
    assert re.fullmatch(r"\s+_swish#2\s+24x16x16\s+24\s+2", rows["_swish#2"])
    assert re.fullmatch(r"\*\s+_bn1\s+24x16x16\s+24\s+1", rows["_bn1"])
    assert re.fullmatch(r"\s+_fc\s+3\s+3\s+1", rows["_fc"])
    names = [r[2:].split()[0] for r in out[2:-2]]   # execution order: the stem's call first
    assert names.index("_swish#1") < names.index("_blocks") < names.index("_swish#2") < names.index("_fc")
    assert out[-2].startswith("* default layer: _bn1: the last module whose output is a spatial map (24x16x16)")
    assert "_swish" in out[-1] and "NAME#K" in out[-1]
    # a generator: latents in, its registered default marked
    toygan = layer_rows(load_model("toygan", weights="none", progress=False))
    assert "latent" in toygan[0] and any(r.startswith("* layer2") for r in toygan)


# ----------------------------------------------------------------------------- hooks
def test_hooks_act_on_the_named_call_only(user_module):
    net = user_module.make().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    stem, head = _brute(net, x)
    with torch.no_grad(), Trace(net, ["_swish#1", "_swish#2"]) as tr:
        base = net(x)
    assert torch.equal(tr["_swish#1"], stem) and torch.equal(tr["_swish#2"], head)

    ran = []
    net._avg_pooling.register_forward_hook(lambda *a: ran.append("pool"))
    with torch.no_grad(), Trace(net, ["_swish#2"], stop=True) as tr:      # stops after call 2,
        net(x)                                                            # not after call 1
    assert torch.equal(tr["_swish#2"], head) and ran == []
    with torch.no_grad(), Trace(net, ["_swish#1"], stop=True) as tr:
        net(x)
    assert torch.equal(tr["_swish#1"], stem)

    with torch.no_grad(), ablate(net, "_swish#2", [0, 5]), Trace(net, ["_swish#1", "_swish#2"]) as tr:
        out = net(x)
    assert torch.equal(tr["_swish#1"], stem)                              # call 1 untouched
    assert torch.all(tr["_swish#2"][:, [0, 5]] == 0)
    keep = [k for k in range(24) if k not in (0, 5)]
    assert torch.equal(tr["_swish#2"][:, keep], head[:, keep]) and not torch.allclose(out, base)
    expected = net._fc(head.mul(torch.tensor([0.0 if k in (0, 5) else 1.0 for k in range(24)]).view(1, -1, 1, 1))
                       .mean((2, 3)))
    assert torch.allclose(out, expected, atol=1e-6)

    with torch.no_grad(), set_units(net, "_swish#2", [3], 7.0), Trace(net, ["_swish#1", "_swish#2"]) as tr:
        net(x)
    assert torch.equal(tr["_swish#1"], stem) and torch.all(tr["_swish#2"][:, 3] == 7.0)

    seen = []
    with torch.no_grad(), Intervene(net, "_swish#1", lambda o: seen.append(o.shape) or o * 0):
        net(x)
        net(x)                                   # counted again from the start of each pass
    assert seen == [torch.Size([2, 8, 32, 32])] * 2


def test_split_tail_after_the_named_call(user_module):
    net = user_module.make().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    stem, head = _brute(net, x)
    with torch.no_grad():
        full = net(x)
        tail2, how2 = split_tail(net, "_swish#2")
        tail1, how1 = split_tail(net, "_swish#1")
        assert how1 == how2 == "split (torch.fx)"
        assert torch.allclose(tail2(head), full, atol=1e-6) and torch.allclose(tail1(stem), full, atol=1e-6)
        zeroed = head.clone()
        zeroed[:, 4] = 0
        with ablate(net, "_swish#2", [4]):
            assert torch.allclose(tail2(zeroed), net(x), atol=1e-6)
    tail, why = split_tail(net, "_swish")
    assert tail is None and "called 2 times" in why
    assert split_tail(net, "_swish#3")[0] is None


# ----------------------------------------------------------------------------- end to end
def test_dissecting_call_2_is_the_head(tmp_path, user_module, toyworld_small, capsys):
    from dissect.data.probe import open_probe_data
    net = user_module.make()
    index = report(net, layers=["_swish#2"], data=str(toyworld_small), input_size=64, cache_dir=tmp_path / "c",
                   config=DissectConfig(top_k=3, num_workers=0), reproducible=True, progress=True,
                   ablation=False, out=tmp_path / "s")
    printed = capsys.readouterr().out
    assert "dissect: ReusedActNet: layer _swish#2: named with --layer" in printed
    res = json.loads((index.parent / "ReusedActNet" / "results.json").read_text())
    layer = res["layers"][0]
    assert layer["name"] == "_swish#2" and layer["call"] == 2 and layer["calls"] == 2
    assert layer["num_units"] == 24 and layer["activation_shape"] == [24, 16, 16]
    assert layer["slug"] == "_swish-2"
    assert res["model"]["default_layers"] == [{"name": "_bn1", "alias": None}] and res["model"]["layer_reason"] == "named with --layer"
    assert "_swish#2" in res["model"]["default_reason"]
    # the recorded activations are the head's: each unit's best image, recomputed by hand
    probe = open_probe_data(str(toyworld_small), 64, IMAGENET_MEAN, IMAGENET_STD, tmp_path / "c", progress=False)
    for unit in layer["units"][:6]:
        top = unit["top_images"][0]
        _, head = _brute(net.eval(), probe.dataset[top["index"]]["image"][None])
        assert head[0, unit["unit"]].max().item() == pytest.approx(top["max_activation"], rel=1e-4, abs=1e-5)
    site = index.parent / "ReusedActNet"
    assert (site / "_swish-2" / "index.html").is_file() and (site / "_swish-2" / "units.csv").is_file()
    page = (site / "_swish-2" / "index.html").read_text()
    assert "call 2 of the 2 calls of its module per forward pass" in page
    overview = (site / "index.html").read_text()
    assert "Layer dissected: <strong>_swish#2</strong>, named with --layer." in overview
    assert "The model's default is _bn1, the last module whose output is a spatial map (24x16x16)" in overview
    assert "(use _swish#2)" in overview      # why the default is _bn1
