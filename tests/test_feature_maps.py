"""Token sequences and channels-last outputs read as unit maps, and written back.

The conversion (dissect.feature_maps) is checked against a manual reshape, index by index;
Trace reads it and Intervene/ablate write it back (a class token untouched); the ablation
runner gives the same logits as a plain forward pass with the units switched off, on a
ViT (class token: full forward) and a Swin (channels-last: split tail); and each modern
family dissects end to end with random weights at a small input size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

import dissect
from dissect.data.labeled import labeled_from_tensors
from dissect.experiments.ablation import AblationRunner
from dissect.feature_maps import MapLayout, infer_layout
from dissect.hooks import Trace, ablate
from dissect.models.loading import from_module, load_model
from dissect.models.registry import get_model_spec


def _tiny_vit(num_classes: int = 6, image_size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=num_classes).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    return vit


def _tiny_swin(num_classes: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                              window_size=[2, 2], num_classes=num_classes).eval()


def test_infer_layout_rules() -> None:
    assert infer_layout((2, 512, 14, 14)).kind == "map"
    assert infer_layout((2, 512, 14, 7)).kind == "map"
    assert infer_layout((2, 8, 8, 8)).kind == "map"          # ambiguous: read as a map
    cl = infer_layout((2, 7, 7, 768))
    assert (cl.kind, cl.grid) == ("channels_last", (7, 7))
    assert cl.describe() == "channels-last 7x7x768 transposed to 768x7x7"
    vit = infer_layout((2, 197, 768))
    assert (vit.kind, vit.grid, vit.class_tokens) == ("tokens", (14, 14), 1)
    assert vit.describe() == "tokens 197x768 -> 14x14 map, class token dropped"
    plain = infer_layout((2, 49, 32))
    assert (plain.kind, plain.grid, plain.class_tokens) == ("tokens", (7, 7), 0)
    assert infer_layout((2, 1000)).kind == "other" and infer_layout((2, 12, 3)).kind == "other"
    assert infer_layout((2, 512, 14, 14)).describe() == ""


def test_token_map_equals_manual_reshape() -> None:
    n, g, c = 2, 3, 5
    x = torch.randn(n, 1 + g * g, c)
    layout = infer_layout(x.shape)
    maps = layout.to_map(x)
    assert maps.shape == (n, c, g, g)
    for b in range(n):
        for ch in range(c):
            for i in range(g):
                for j in range(g):
                    assert maps[b, ch, i, j] == x[b, 1 + i * g + j, ch]
    edited = maps.clone()
    edited[:, 2] = 0
    back = layout.from_map(edited, x)
    assert torch.equal(back[:, 0], x[:, 0])                  # the class token is kept
    assert torch.equal(back[:, 1:, 2], torch.zeros(n, g * g))
    keep = [k for k in range(c) if k != 2]
    assert torch.equal(back[:, :, keep], x[:, :, keep])
    assert torch.equal(layout.from_map(layout.to_map(x), x), x)
    with pytest.raises(ValueError, match="class token"):
        layout.from_map(maps)


def test_channels_last_equals_manual_transpose() -> None:
    x = torch.randn(2, 4, 4, 6)
    layout = infer_layout(x.shape)
    maps = layout.to_map(x)
    for b, i, j, ch in [(0, 0, 0, 0), (1, 3, 2, 5), (0, 1, 3, 4)]:
        assert maps[b, ch, i, j] == x[b, i, j, ch]
    assert torch.equal(layout.from_map(maps), x)
    assert torch.equal(MapLayout().to_map(x), x)


def test_trace_and_ablate_on_vit_tokens() -> None:
    vit = _tiny_vit()
    layer = "encoder.layers.encoder_layer_0"   # (the last block's patch tokens do not reach the head)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), Trace(vit, [layer], maps=False) as raw:
        plain = vit(x)
    with torch.no_grad(), Trace(vit, [layer]) as tr:
        vit(x)
    tokens = raw[layer]                                      # [3, 1 + 16, 16]
    assert tokens.shape == (3, 17, 16)
    assert torch.equal(tr[layer], tokens[:, 1:].transpose(1, 2).reshape(3, 16, 4, 4))
    assert tr.layouts[layer].describe() == "tokens 17x16 -> 4x4 map, class token dropped"
    with torch.no_grad(), ablate(vit, layer, [3, 7]), Trace(vit, [layer], maps=False) as after:
        edited = vit(x)
    a = after[layer]
    assert torch.equal(a[:, 1:, [3, 7]], torch.zeros(3, 16, 2))
    assert torch.equal(a[:, 0], tokens[:, 0])                # the class token was not switched off
    others = [k for k in range(16) if k not in (3, 7)]
    assert torch.equal(a[:, :, others], tokens[:, :, others])
    assert not torch.allclose(edited, plain)


@pytest.mark.parametrize("build,layer,method", [
    (_tiny_vit, "encoder.layers.encoder_layer_0", "class token"),
    (_tiny_swin, "features.1", None),
])
def test_ablation_runner_equals_forward_with_units_off(build, layer, method) -> None:
    model = build()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 32, 32, generator=gen)
    labels = torch.arange(6) % 6
    data = labeled_from_tensors(images, labels, images, labels, [f"c{i}" for i in range(6)])
    runner = AblationRunner(model, layer, data.rank, batch_size=4)
    if method:
        assert method in runner.method and runner.tail is None
    units = runner.num_units
    masks = torch.ones(3, units)
    masks[1, 0] = 0
    masks[2, 1:units // 2] = 0
    logits = runner.logits(masks)
    for m in range(3):
        off = [k for k in range(units) if masks[m, k] == 0]
        with torch.no_grad(), ablate(model, layer, off):
            expected = model(images)
        torch.testing.assert_close(logits[m], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_modern_families_dissect_end_to_end(tmp_path: Path) -> None:
    scenes = load_model("toy").class_names
    vit = from_module(_tiny_vit(len(scenes), image_size=64), name="tinyvit", input_size=64, class_names=scenes,
                      default_layers=["encoder.layers.encoder_layer_1"])
    cases = [(vit, [], "tokens 65x16 -> 8x8 map, class token dropped"),
             ("swin_t", ["stage2"], "channels-last 8x8x192 transposed to 192x8x8"),
             ("convnext_tiny", ["stage2"], ""), ("efficientnet_b0", ["stage3"], ""),
             ("regnet_y_400mf", ["block2"], "")]
    for model, layers, reading in cases:
        loaded = model if not isinstance(model, str) else load_model(model, weights="none", input_size=64)
        out = tmp_path / f"site-{loaded.name}"
        dissect.report(model=loaded, layers=layers, data="toyworld", data_size=8, out=out,
                       cache_dir=tmp_path / "cache", progress=False, reproducible=True,
                       ablation=loaded.name == "tinyvit")
        results = json.loads((out / loaded.name / "results.json").read_text())
        (layer,) = results["layers"]
        assert layer["reading"] == reading, loaded.name
        c, h, w = layer["activation_shape"]
        assert h == w and h > 1 and len(layer["units"]) == c
        page = (out / loaded.name / layer["slug"] / "index.html").read_text()
        if reading:
            assert f"read as {reading.replace('>', '&gt;')}" in page
        if loaded.name == "tinyvit":
            abl = results["ablation"]
            assert abl["error"] is None
            (entry,) = abl["layers"].values()
            assert "class token" in entry["method"] and "error" not in entry


def test_default_layer_of_a_model_you_hold_can_be_a_token_layer() -> None:
    vit = from_module(_tiny_vit(), name="mine", input_size=32)
    assert vit.default_layers == ["encoder"]                # its last output read as a map
    conv = from_module(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), input_size=16)
    assert conv.default_layers == ["1"]
    spec = get_model_spec("vit_b_16")   # the last block but one: the last one's patch tokens reach no output
    assert spec.aliases[spec.default_layer] == "encoder.layers.encoder_layer_10"
