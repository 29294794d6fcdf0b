"""Classifier ablation: hooks, the graph split, metrics, bad input, the attack, the report.

The tests marked ``shipped`` check the issue's acceptance numbers on the shipped toy
classifier and skip when its weights are not there.
"""

from __future__ import annotations

import copy
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from dissect.errors import DissectError, SkippedImageWarning
from dissect.data.labeled import (LabeledSplit, TensorImages, labeled_from_broden, labeled_from_folder,
                                  labeled_from_tensors)
from dissect.experiments.ablation import (AblationConfig, AblationRunner, ablate_layer, parse_epsilon,
                                          parse_top_n, select_layers)
from dissect.experiments.attack import choose_pairs, pgd_attack
from dissect.experiments.metrics import balanced_accuracy
from dissect.hooks import Intervene, ablate, set_units, split_tail
from dissect.models import load_model
from dissect.models.weights import WEIGHTS_DIR

SHIPPED = (WEIGHTS_DIR / "toy_classifier.safetensors").is_file()
shipped = pytest.mark.skipif(not SHIPPED, reason="the toy classifier's weights are not there yet")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", weights="none", progress=False).module


def _on(model: nn.Module, device: str) -> nn.Module:
    """``model`` for a test on ``device``: a copy on CUDA (the runners move the model they are
    given, and the module's other tests use it on the CPU)."""
    return model if device == "cpu" else copy.deepcopy(model)


def _random_split(n: int, k: int, seed: int, size: int = 64) -> LabeledSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % k
    return LabeledSplit("s", TensorImages(x), y)


# ------------------------------------------------------------------------------ hooks
def test_hooks_removed_after_exception_and_nest(toy):
    x = torch.randn(2, 3, 64, 64)
    assert _hooks(toy) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(toy, "features.18", [1, 2]):
            assert _hooks(toy) == 1
            raise RuntimeError("boom")
    assert _hooks(toy) == 0
    with pytest.raises(RuntimeError, match="inner"):
        with ablate(toy, "features.18", [0]), set_units(toy, "features.13", [3], 1.0):
            assert _hooks(toy) == 2
            raise RuntimeError("inner")
    assert _hooks(toy) == 0

    seen = {}
    with Intervene(toy, "features.18", lambda o: seen.setdefault("a", o.clone()) * 0 + o):
        with ablate(toy, "features.18", [5]):   # runs after the outer hook
            with set_units(toy, "features.18", [7, 2], [3.0, 4.0]):
                from dissect.hooks import Trace
                with Trace(toy, ["features.18"]) as tr:
                    toy(x)
        out = tr["features.18"]
        assert torch.all(out[:, 5] == 0) and torch.all(out[:, 7] == 3.0) and torch.all(out[:, 2] == 4.0)
        with Trace(toy, ["features.18"]) as tr:   # inner ones gone, outer still on
            toy(x)
        assert _hooks(toy) == 1
        assert torch.any(tr["features.18"][:, 5] != 0)
    assert _hooks(toy) == 0


def test_set_units_rejects_duplicates(toy):
    with pytest.raises(ValueError, match="twice"):
        set_units(toy, "features.18", [1, 1], [1.0, 2.0])


# ------------------------------------------------------------------------------ the split
@pytest.mark.parametrize("layer", ["features.18", "features.13", "features.17"])
def test_tail_split_equals_ablation_in_full_forward(toy, layer, monkeypatch, device):
    toy = _on(toy, device)
    split = _random_split(24, 6, seed=1)
    runner = AblationRunner(toy, layer, split, batch_size=10, chunk_mb=1, device=device)
    assert runner.method.startswith("split")
    # the last layer's tail pools first: its ablations run on pooled values, the same numbers
    assert runner.pooled == (layer == "features.18")
    C = runner.num_units
    masks = torch.ones(6, C)
    sets = [[0], [3, 5], list(range(0, C, 2)), [C - 1], [], list(range(C))]
    for m, units in zip(masks, sets):
        m[units] = 0
    got = runner.logits(masks)
    assert got.device.type == device
    x = split.dataset.images.to(device)
    for j, units in enumerate(sets):
        with torch.no_grad(), ablate(toy, layer, units):
            want = toy(x)
        torch.testing.assert_close(got[j], want, rtol=1e-4, atol=1e-5)
    if runner.pooled:
        monkeypatch.setattr("dissect.experiments.ablation.pools_first", lambda tail: False)
        maps = AblationRunner(toy, layer, split, batch_size=10, chunk_mb=1, device=device)
        assert not maps.pooled and maps.acts.shape[2:] == (8, 8)
        if device == "cpu":
            assert torch.equal(maps.logits(masks), got)
        else:   # CUDA's matrix products round differently from one chunk size to another
            torch.testing.assert_close(maps.logits(masks), got, rtol=1e-5, atol=1e-6)
    assert _hooks(toy) == 0


def test_resnet_split_and_fallback_agree():
    net = torchvision.models.resnet18(num_classes=7).eval()
    split = _random_split(6, 7, seed=2, size=32)
    tail, how = split_tail(net, "layer4")
    assert tail is not None and how.startswith("split")
    _, why = split_tail(net, "layer4.0.conv1")      # a skip connection goes around it
    assert "skip" in why
    for layer in ("layer4", "layer4.0.conv1"):
        runner = AblationRunner(net, layer, split, batch_size=4)
        assert runner.pooled == (layer == "layer4")      # avgpool -> flatten -> fc
        C = runner.num_units
        masks = torch.ones(3, C)
        masks[1, :7] = 0
        masks[2, C // 2:] = 0
        got = runner.logits(masks)
        for j in range(3):
            units = torch.nonzero(masks[j] == 0).flatten().tolist()
            with torch.no_grad(), ablate(net, layer, units):
                want = net(split.dataset.images)
            torch.testing.assert_close(got[j], want, rtol=1e-4, atol=1e-4)
    assert _hooks(net) == 0


class BatchSizeFromInput(nn.Module):
    """Reads the batch size from its input and uses it after the layer (``out.view(bs, -1)``,
    as the common EfficientNet implementation does), through ``size(0)`` or ``shape[0]``."""

    def __init__(self, shape_attr: bool):
        super().__init__()
        self.shape_attr = shape_attr
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        bs = x.shape[0] if self.shape_attr else x.size(0)
        return self.fc(self.pool(self.act(self.conv(x))).view(bs, -1))


@pytest.mark.parametrize("shape_attr", [False, True])
def test_batch_size_read_from_the_input_still_splits(shape_attr):
    """The input's batch size is no skip connection: the tail reads it from the activation,
    splits, pools first, and ablates exactly as a full forward pass does."""
    torch.manual_seed(0)
    net = BatchSizeFromInput(shape_attr).eval()
    tail, how = split_tail(net, "act")
    assert tail is not None and how.startswith("split"), how
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(tail(net.act(net.conv(x))), net(x))
    split = _random_split(8, 3, seed=4, size=12)
    runner = AblationRunner(net, "act", split, batch_size=3)
    assert runner.method.startswith("split") and runner.pooled
    masks = torch.ones(2, 6)
    masks[1, [0, 4]] = 0
    got = runner.logits(masks)
    with torch.no_grad(), ablate(net, "act", [0, 4]):
        want = net(split.dataset.images)
    torch.testing.assert_close(got[1], want, rtol=1e-5, atol=1e-5)
    assert _hooks(net) == 0


class Branchy(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        if a.mean() > 1e9:
            a = a * 2
        return self.head(a.mean((2, 3)))


def test_untraceable_model_falls_back_to_full_forward():
    net = Branchy().eval()
    tail, why = split_tail(net, "conv")
    assert tail is None and "could not trace" in why
    split = _random_split(9, 3, seed=3, size=16)
    runner = AblationRunner(net, "conv", split, batch_size=4)
    assert runner.method.startswith("full forward")
    preds, _ = runner.run(torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]]))
    with torch.no_grad(), ablate(net, "conv", [1]):
        assert torch.equal(preds[0], net(split.dataset.images).argmax(1))
    assert _hooks(net) == 0


# ------------------------------------------------------------------------------ metrics
def test_balanced_accuracy_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([[0, 0, 1, 1, 0, 2],     # class 0: recall 2/3, TNR 2/3 -> 2/3
                          [0, 0, 0, 1, 1, 2]])    # perfect
    ba = balanced_accuracy(preds, labels, 4)
    assert ba[0, 0].item() == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ba[0, 1].item() == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert ba[0, 2].item() == pytest.approx(1.0)
    assert torch.all(ba[1, :3] == 1.0)
    assert math.isnan(ba[0, 3].item())             # class 3 has no image


def test_parsers():
    assert parse_top_n("1, 2,all,2") == (1, 2, "all")
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    for bad in ("x", "0", "-1"):
        with pytest.raises(DissectError):
            parse_top_n(bad)
    with pytest.raises(DissectError, match="attack-epsilon"):
        parse_epsilon("2")
    with pytest.raises(DissectError, match="splits must differ"):
        AblationConfig(rank_split="val").validate()


# ------------------------------------------------------------------------------ experiment
def _toy_data(n_rank=60, n_eval=30, k=6, seed=0):
    r, e = _random_split(n_rank, k, seed), _random_split(n_eval, k, seed + 1)
    names = ["forest", "village", "street", "beach", "lake", "field"]
    return labeled_from_tensors(r.dataset.images, r.labels, e.dataset.images, e.labels, names)


def test_ablate_layer_shapes_and_random_baseline_is_seeded(toy, device):
    toy = _on(toy, device)
    data = _toy_data()
    cfg = AblationConfig(top_n=(1, 3, 1000, "all"), random_draws=3, list_units=4)
    a = ablate_layer(toy, "features.18", data, cfg, device=device)
    b = ablate_layer(toy, "features.18", data, cfg, device=device)
    assert a["top_n"] == [1, 3, 128] and a["top_n_dropped"] == [1000]
    assert any("1000" in m and "exceed" in m for m in a["messages"])
    assert len(a["classes"]) == 6 and len(a["units"]) == 128
    c = a["classes"][0]
    assert len(c["remove_top"]) == len(c["keep_top"]) == len(c["random_remove"]) == 3
    assert c["remove_top"][-1] == c["random_remove"][-1]          # all units removed either way
    assert c["keep_top"][-1] == pytest.approx(c["balanced_accuracy"])
    assert len(c["top_units"]) == 4
    assert a["classes"] == b["classes"]                          # seeded: same random draws
    assert np.array(a["importance"]["eval"]).shape == (128, 6)
    assert sum(u["num_classes"] for u in a["units"]) == 6 * cfg.important


class OneUnit(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(1, 3)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_one_unit_layer_and_empty_class():
    torch.manual_seed(0)
    net = OneUnit().eval()
    r, e = _random_split(12, 3, 4, size=8), _random_split(12, 2, 5, size=8)   # class 2 absent from eval
    data = labeled_from_tensors(r.dataset.images, r.labels, e.dataset.images, e.labels, ["a", "b", "c"])
    res = ablate_layer(net, "act", data, AblationConfig(), device="cpu")
    assert res["top_n"] == [1]
    assert any("1 unit" in m for m in res["messages"])
    c2 = next(c for c in res["classes"] if c["name"] == "c")
    assert c2["balanced_accuracy"] is None and c2["images_eval"] == 0
    assert any("class c has no image" in m for m in res["messages"])
    json.dumps(res["classes"], allow_nan=False)                  # no NaN reaches results.json


def test_class_names_that_do_not_match(toyworld_small):
    with pytest.raises(DissectError, match="none of the 6 classes"):
        labeled_from_broden(toyworld_small, ["cat", "dog"], 64, MEAN, STD)
    with pytest.raises(DissectError, match="no class names"):
        labeled_from_broden(toyworld_small, None, 64, MEAN, STD)
    data = labeled_from_broden(toyworld_small, ["Forest", "beach", "cat"], 64, MEAN, STD)
    assert set(data.rank.labels.tolist()) <= {0, 1}
    assert any("not outputs of the model" in m for m in data.messages)
    assert data.rank.name == "train" and data.eval.name == "val"


def test_image_folder(tmp_path):
    names = ["forest", "beach"]
    for cls in names + ["unknown_class"]:
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("RGB", (40 + i, 30), (i * 40, 90, 10)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "forest" / "broken.jpg").write_bytes(b"not an image")
    data = labeled_from_folder(tmp_path, names, 32, MEAN, STD)
    assert len(data.rank.labels) == 5 and len(data.eval.labels) == 4      # alternate halves
    assert any("unknown_class" in m for m in data.messages)
    item = data.rank.dataset[0]
    assert item["ok"] and item["image"].shape == (3, 32, 32)
    net = OneUnit().eval()
    net.head = nn.Linear(1, 2)
    runner = AblationRunner(net, "act", data.rank, batch_size=4, num_workers=0)
    assert len(runner) == 4 and runner.skipped                  # the broken file is skipped


def test_unreadable_ablation_image_is_warned_once_and_named_in_its_folder(tmp_path):
    """An unreadable image of --ablation-data: one warning naming the file, however many
    runners read it; counted, and listed by its name in the folder (never a local path)."""
    names = ["forest", "beach"]
    for cls in names:
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("RGB", (40 + i, 30), (i * 40, 90, 10)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "forest" / "1broken.jpg").write_bytes(b"not an image")   # 0, 1, 1broken, 2, 3: the ranking half
    data = labeled_from_folder(tmp_path, names, 32, MEAN, STD)
    net = OneUnit().eval()
    net.head = nn.Linear(1, 2)
    with pytest.warns(SkippedImageWarning) as seen:
        first = AblationRunner(net, "act", data.rank, batch_size=4, num_workers=0)
        second = AblationRunner(net, "act", data.rank, batch_size=4, num_workers=0)
    mine = [str(w.message) for w in seen if issubclass(w.category, SkippedImageWarning)]
    assert len(mine) == 1 and mine[0].startswith(f"skipped unreadable image {tmp_path / 'forest' / '1broken.jpg'}: ")
    assert "\n" not in mine[0]
    assert first.skipped == second.skipped == ["forest/1broken.jpg"] and len(first) == 4


def test_select_layers():
    layers = [{"name": "a", "alias": "x"}, {"name": "b", "alias": None}]
    assert select_layers(layers, ()) == ([layers[1]], [layers[0]])
    assert select_layers(layers, ("all",))[0] == layers
    assert select_layers(layers, ("x",)) == ([layers[0]], [layers[1]])
    with pytest.raises(DissectError, match="unknown ablation layer"):
        select_layers(layers, ("nope",))


# ------------------------------------------------------------------------------ attack
def test_pgd_respects_the_box(toy, device):
    toy = _on(toy, device).to(device)
    x = (torch.rand(3, 3, 64, 64) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    eps = 4 / 255
    adv = pgd_attack(toy, x.to(device), torch.tensor([1, 2, 3], device=device), MEAN, STD, eps, steps=3,
                     step_size=2 / 255)
    assert adv.device.type == device
    adv = adv.cpu()
    s, m = torch.tensor(STD).view(1, 3, 1, 1), torch.tensor(MEAN).view(1, 3, 1, 1)
    p0, p1 = x * s + m, adv * s + m
    assert (p1 - p0).abs().max() <= eps + 1e-5
    assert p1.min() >= -1e-6 and p1.max() <= 1 + 1e-6
    assert all(p.grad is None for p in toy.parameters())


def test_choose_pairs():
    logits = torch.tensor([[5.0, 4.0, 0.0], [5.0, 0.0, 1.0], [0.0, 9.0, 0.0], [1.0, 0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 2])
    pairs = choose_pairs(logits, labels, [0, 1, 2], 2)
    assert pairs == [(0, 1), (2, 0)]      # by mean p(B) over A's images: 0.137, 0.114


# ------------------------------------------------------------------------------ report
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_data(self, data):
        self.text.append(data)


def test_report_without_class_names_still_writes_the_site(tmp_path, toyworld_small):
    from dissect import report
    index = report(model="toy", weights="none", data=str(toyworld_small), out=tmp_path / "site",
                   layers=["conv4_2"], progress=False, reproducible=True)
    res = json.loads((tmp_path / "site" / "toy" / "results.json").read_text())
    assert "no class names" in res["ablation"]["error"]
    assert index.is_file() and not (tmp_path / "site" / "toy" / "conv4_2" / "ablation.html").exists()


@shipped
def test_report_ablation_page(tmp_path, toyworld_small):
    from dissect import report
    cfg = AblationConfig(top_n=(1, 5, "all"), random_draws=2, attack_pairs=1, attack_images=4,
                         attack_steps=2, num_workers=0)
    report(model="toy", data=str(toyworld_small), out=tmp_path / "site", layers=["conv3_2", "conv4_2"],
           progress=False, reproducible=True, ablation=cfg)
    root = tmp_path / "site" / "toy"
    res = json.loads((root / "results.json").read_text())
    abl = res["ablation"]
    assert abl["error"] is None and list(abl["layers"]) == ["features.18"]       # the deepest layer
    assert any("not on conv3_2 (features.13)" in m for m in abl["messages"])
    layer = abl["layers"]["features.18"]
    assert layer["slug"] == "conv4_2" and layer["method"].startswith("split")
    assert abl["params"]["top_n"] == [1, 5, "all"] and layer["top_n"] == [1, 5, 128]
    assert abl["attack"]["pairs"] and layer["attack"][0]["suppressed"]
    page = root / "conv4_2" / "ablation.html"
    p = _Links()
    p.feed(page.read_text())
    text = " ".join(p.text)
    assert "forest" in text and "Adversarial view" in text
    assert all((page.parent / h.split("#")[0]).is_file() for h in p.links if h and not h.startswith("#"))
    assert 'href="conv4_2/ablation.html"' in (root / "index.html").read_text()
    dependent = next(u["unit"] for u in layer["units"] if u["classes"])
    unit_page = (root / "conv4_2" / f"unit-{dependent:04d}.html").read_text()
    assert "Classes that depend on this unit" in unit_page and "ablation.html#class-" in unit_page
    assert not (root / "conv3_2" / "ablation.html").exists()


# ------------------------------------------------------------------------------ shipped model
@pytest.fixture(scope="module")
def shipped_result(tmp_path_factory):
    """The shipped classifier on 1500 fresh toy scenes (1000 rank / 500 eval)."""
    from dissect.data.toyworld import SCENE_CLASSES, image_seed, render_batch
    loaded = load_model("toy", progress=False)
    ims, cls = render_batch([image_seed(11, i) for i in range(1500)], 64)
    x = torch.from_numpy(ims).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.from_numpy(cls)
    data = labeled_from_tensors(x[:1000], y[:1000], x[1000:], y[1000:], SCENE_CLASSES)
    cfg = AblationConfig(top_n=(5, 20, "all"), random_draws=8, list_units=10)
    return ablate_layer(loaded.module, "features.18", data, cfg, device="cpu"), loaded


@shipped
def test_shipped_forest_top5_beats_random(shipped_result):
    res, _ = shipped_result
    forest = next(c for c in res["classes"] if c["name"] == "forest")
    i5 = res["top_n"].index(5)
    drop_top = forest["balanced_accuracy"] - forest["remove_top"][i5]
    drop_rand = forest["balanced_accuracy"] - forest["random_remove"][i5]
    assert drop_top > 0.005 and drop_top >= 3 * max(drop_rand, 0.0), (drop_top, drop_rand)


@shipped
def test_shipped_forest_depends_on_tree_units(shipped_result, toyworld_small):
    """Forest's top units detect trees (labels from a dissection at q = 0.01 over upsampled
    maps, the 2020 paper's setting that goes with its ablation experiment)."""
    from dissect.data.broden import BrodenDataset
    from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
    res, loaded = shipped_result
    ds = BrodenDataset(toyworld_small, input_size=64, mean=loaded.mean, std=loaded.std)
    cfg = DissectConfig(quantile=0.01, quantile_space="upsampled", num_workers=0, device="cpu")
    stats = dissect_layers(loaded.module, ["features.18"], ds, cfg, progress=False)["features.18"]
    labels = {u["unit"]: u["label"] for u in summarize_layer(stats, ds, cfg)["units"]}
    forest = next(c for c in res["classes"] if c["name"] == "forest")
    top = [labels[u["unit"]] for u in forest["top_units"][:10]]
    assert {"tree", "crown", "trunk"} & set(top), top


@shipped
def test_shipped_forest_keep_top20(shipped_result):
    res, _ = shipped_result
    forest = next(c for c in res["classes"] if c["name"] == "forest")
    keep20 = forest["keep_top"][res["top_n"].index(20)]
    assert forest["balanced_accuracy"] - keep20 <= 0.10, (forest["balanced_accuracy"], keep20)
