"""The speed machinery changes speed, never results: the activation-cache budget, the folded
segmenter, batched generator edits, the precision option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dissect.data.broden import BrodenDataset
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, dissect_layers
from dissect.inference import fold_batchnorm, resolve_precision
from dissect.stats.intervals import IntervalOptions


class CountingConv(nn.Module):
    """A random conv layer that counts the images it has seen."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.relu(self.conv(x))


@pytest.mark.parametrize("replicates", [0, 200])
def test_cache_budget_changes_speed_not_results(toyworld_small, replicates):
    """Budget 0: pass 2 (and pass 3, the intervals, unless --bootstrap 0) runs the model again
    for every image; 1 MB: for the images past the budget only; 2 GB: one pass. The
    statistics are identical."""
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(48))
    runs = {}
    for mb in (0, 1, 2048):
        model = CountingConv().eval()
        stats = dissect_layers(model, ["relu"], ds, DissectConfig(batch_size=8, num_workers=0,
                                                                  activation_cache_mb=mb,
                                                                  intervals=IntervalOptions(replicates)),
                               progress=False)["relu"]
        runs[mb] = (stats, model.seen - 1)      # (one image finds the layer's shape)
    per_image = 6 * 64 * 64 * 4 + 8 * 64 * 64 * 2
    kept = 2 ** 20 // per_image
    assert 0 < kept < 48
    if replicates == 0:
        assert [runs[mb][1] for mb in (0, 1, 2048)] == [96, 96 - kept, 48]
    else:   # pass 3 runs the model again for the same images as pass 2
        assert [runs[mb][1] for mb in (0, 1, 2048)] == [144, 144 - 2 * kept, 48]
    ref = runs[2048][0]
    for mb in (0, 1):
        s = runs[mb][0]
        assert torch.equal(s.thresholds, ref.thresholds) and torch.equal(s.top_indices, ref.top_indices)
        for key in ("inter", "unit_cat", "label_pixels", "active"):
            assert torch.equal(s.tally[key], ref.tally[key])
        assert (s.intervals is None and ref.intervals is None) if replicates == 0 else \
            torch.equal(s.intervals, ref.intervals)


def test_folded_batchnorm_gives_the_same_labels():
    from dissect.data.toyworld import render_scene
    from dissect.segmenters.registry import load_segmenter
    seg = load_segmenter("toy")
    x = torch.stack([torch.from_numpy(render_scene(70_000 + i, 64).image).permute(2, 0, 1) for i in range(6)]).float() / 255
    folded = fold_batchnorm(seg.net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in seg.net.modules())     # the original is untouched
    with torch.no_grad():
        ref, got = seg.net(x), folded(x)
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    labels = seg.segment(x)
    assert torch.equal(labels[:, 0], ref[0].argmax(1) + 1)


def test_batched_edits_equal_one_call_per_edit():
    """run_edits packs many small edit blocks into calls of `rows` images: the same labels
    whatever `rows` is."""
    from dissect.experiments.generator import EditBlock, GeneratorRunner, run_edits
    from dissect.models.latents import sample_z
    from dissect.models.zoo.toy import ToyGenerator
    from dissect.segmenters.color import ColorNamer
    torch.manual_seed(0)
    gen = ToyGenerator(width=8).eval()
    runner = GeneratorRunner(gen, "layer3", torch.device("cpu"))
    z = sample_z(5, 1, 128)
    acts = runner.acts(z)

    def zero(u):
        def edit(a, samples):
            a[:, u] = 0
            return a
        return edit
    blocks = [EditBlock(torch.arange(5), zero(0)), EditBlock(torch.tensor([1, 3]), zero(2)),
              EditBlock(torch.arange(3), zero(5))]
    seg = ColorNamer()
    outs = {}
    for rows in (1, 3, 64):
        got = {}
        for j, s, imgs, lab in run_edits(runner, seg, acts, z, blocks, rows):
            got.setdefault(j, []).append(lab)
        outs[rows] = {j: torch.cat(v) for j, v in got.items()}
    for j, block in enumerate(blocks):
        edited = block.edit(acts[block.samples].clone(), block.samples)
        want = seg.segment(runner.images(edited, z[block.samples]))
        for rows in outs:
            assert torch.equal(outs[rows][j], want), (rows, j)


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(DissectError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(DissectError, match="--precision must be one of"):
        DissectConfig(precision="fp8").validate()


def test_bf16_dissection_keeps_float32_statistics(toyworld_small, device):
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(16))
    a = dissect_layers(CountingConv().eval(), ["relu"], ds, DissectConfig(num_workers=0, device=device, precision="fp32"),
                       progress=False)["relu"]
    b = dissect_layers(CountingConv().eval(), ["relu"], ds, DissectConfig(num_workers=0, precision="bf16",
                                                                           device=device), progress=False)["relu"]
    assert b.thresholds.dtype == torch.float32 and b.tally["inter"].dtype == torch.float64
    assert np.allclose(a.thresholds.numpy(), b.thresholds.numpy(), rtol=0.05, atol=0.05)
