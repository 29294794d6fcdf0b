"""Non-finite activations, models that fail on real data, layers that return tuples (issue 15).

A unit holding NaN or infinity must never be reported with made-up numbers: by default the
run stops with one line naming the layer, the units and the images; with
``nonfinite="invalid"`` those units are reported as invalid (null, never 0.0, never "dead")
and every other unit's statistics are exactly those of a run without the bad values.
"""

import json

import pytest
import torch
from torch import nn

from dissect import report
from dissect.cli import main
from dissect.data.broden import BrodenDataset
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, _s, dissect_layers, summarize_layer

N = 24


class Spoiled(nn.Module):
    """Four units of image statistics; with ``spoil``, unit 1 is NaN on images whose mean
    red is high and unit 3 is +inf everywhere (a unit that would look constant: "dead")."""

    def __init__(self, spoil: bool):
        super().__init__()
        self.spoil = spoil
        self.units = nn.Identity()

    def forward(self, x):
        pooled = nn.functional.avg_pool2d(x, 4)                                  # [B, 3, 16, 16]
        a = torch.cat([pooled, pooled[:, :1] * pooled[:, 1:2]], 1).clone()      # [B, 4, 16, 16]
        if self.spoil:
            red = x[:, 0].mean(dim=(1, 2)) > x[:, 0].mean()
            a[red, 1, 2, 3] = float("nan")
            a[:, 3] = float("inf")
        return self.units(a)


def _config(policy, device="cpu"):
    return DissectConfig(top_k=3, batch_size=8, num_workers=0, device=device, nonfinite=policy)


def test_nonfinite_activations_stop_the_run_naming_layer_units_images(toyworld_small, device):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(N))
    with pytest.raises(DissectError) as err:
        dissect_layers(Spoiled(True), ["units"], ds, _config("error", device), progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "layer 'units'" in msg and "unit(s) 1, 3" in msg and "--nonfinite invalid" in msg
    assert "toy-00000.png" in msg   # the first image of the first batch (unit 3 is inf everywhere)


def test_invalid_units_are_reported_as_invalid_and_others_are_exact(toyworld_small, device):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(N))
    config = _config("invalid", device)
    bad = dissect_layers(Spoiled(True), ["units"], ds, config, progress=False)["units"]
    good = dissect_layers(Spoiled(False), ["units"], ds, config, progress=False)["units"]
    assert bad.invalid == [1, 3] and good.invalid == []
    for k in (0, 2):   # the other units: exactly as without the bad values
        assert torch.equal(bad.thresholds[k], good.thresholds[k])
        assert torch.equal(bad.top_indices[k], good.top_indices[k])
        assert torch.equal(bad.tally["inter"][k], good.tally["inter"][k])
    layer = summarize_layer(bad, ds, config)
    ref = summarize_layer(good, ds, config)
    for k in (1, 3):
        u = layer["units"][k]
        assert u["invalid"] is True and u["dead"] is False and u["detector"] is False
        assert u["threshold"] is None and u["iou"] is None and u["label"] is None
        assert u["max_activation"] is None and u["active_fraction"] is None
    for k in (0, 2):
        assert layer["units"][k] == ref["units"][k]
    assert layer["summary"]["invalid_units"] == 2 and layer["summary"]["dead_units"] == 0


def test_invalid_units_in_results_json_and_pages(tmp_path, toyworld_small):
    index = report(Spoiled(True), layers=["units"], data=str(toyworld_small), data_size=N, input_size=64,
                   cache_dir=tmp_path / "c", out=tmp_path / "s", reproducible=True, progress=False,
                   ablation=False, config=_config("invalid"))
    site = index.parent / "Spoiled"
    text = (site / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    units = json.loads(text)["layers"][0]["units"]
    assert [u.get("invalid", False) for u in units] == [False, True, False, True]
    assert units[3]["threshold"] is None and units[3]["dead"] is False
    page = (site / "units" / "unit-0003.html").read_text()
    assert "invalid: non-finite activations" in page and ">dead<" not in page
    assert "1 invalid" not in (site / "units" / "index.html").read_text()
    assert "2 invalid (non-finite activations)" in (site / "units" / "index.html").read_text()


def test_cli_nonfinite_is_one_line_exit_2(capsys, tmp_path, toyworld_small):
    code = main(["report", "--model", "test_nonfinite:spoiled", "--layer", "units",
                 "--data", str(toyworld_small), "--data-size", str(N), "--input-size", "64",
                 "--no-ablation", "--workers", "0", "--out", str(tmp_path / "s"),
                 "--cache-dir", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "non-finite activations" in err[0], err
    assert not (tmp_path / "s").exists()


def spoiled():
    return Spoiled(True)


def test_nonfinite_numbers_are_never_written_as_zero():
    assert _s(float("nan")) is None and _s(float("inf")) is None and _s(-float("inf")) is None
    assert _s(0.0) == 0.0 and _s(1.23456789) == 1.23457


class FailsOnData(nn.Module):
    """Runs on the all-zero example input, raises on real images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        if x.abs().sum() > 0:
            raise RuntimeError("shape mismatch in my custom block\nsecond line")
        return self.conv(x)


class TupleLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return (self.block(x), x)


class WithTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = TupleLayer()

    def forward(self, x):
        return self.pair(x)[0]


@pytest.mark.parametrize("model, layer, expect", [
    (FailsOnData(), "conv", "the model failed on the batch of images 0-7 (toy-00000.png, toy-00001.png, "
                            "toy-00002.png, ...): RuntimeError: shape mismatch in my custom block"),
    (WithTuple(), "pair", "layer 'pair' returns a tuple, not one tensor"),
])
def test_models_that_fail_are_one_line_errors(toyworld_small, model, layer, expect):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(N))
    with pytest.raises(DissectError) as err:
        dissect_layers(model, [layer], ds, _config("error"), progress=False)
    assert expect in str(err.value) and "\n" not in str(err.value), str(err.value)
