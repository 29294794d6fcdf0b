"""Device memory (dissect/memory.py): batch and chunk sizes from a CUDA device's free memory,
and the retry of a batch in smaller parts on an out-of-memory error, which must give the
same results bit for bit. CUDA is simulated (mocked ``mem_get_info``, raised
``torch.cuda.OutOfMemoryError``), so these run on the CPU."""

import pytest
import torch
from torch import nn

from dissect import memory
from dissect.data.broden import BrodenDataset
from dissect.experiments.dissection import DissectConfig, dissect_layers
from dissect.stats.iou import IoUTally
from dissect.stats.intervals import IntervalOptions

GiB = 2 ** 30


@pytest.fixture()
def fake_cuda(monkeypatch):
    """A CUDA device whose free memory the test sets (``fake_cuda["free"]``)."""
    state = {"free": 8 * GiB, "reserved": 0, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    return state


def test_batch_size_from_free_memory(fake_cuda):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert memory.batch_size(cpu, 64, 10 * 2 ** 20) == 64          # the CPU: as asked, always
    assert memory.free_bytes(cpu) is None
    # 8 GiB free, half of it for batches, 10 MiB an image: 409 fit, the power of two below is 256
    assert memory.batch_size(cuda, 64, 10 * 2 ** 20) == 256
    fake_cuda["reserved"], fake_cuda["allocated"] = 3 * GiB, 1 * GiB   # the allocator's unused 2 GiB count
    assert memory.free_bytes(cuda) == 10 * GiB
    assert memory.batch_size(cuda, 64, 10 * 2 ** 20) == 512
    assert memory.batch_size(cuda, 64, 1) == memory.MAX_BATCH      # never beyond the cap ...
    assert memory.batch_size(cuda, 2048, 1) == 2048                # ... unless asked for more
    fake_cuda["free"], fake_cuda["reserved"] = 100 * 2 ** 20, 0
    assert memory.batch_size(cuda, 64, 10 * 2 ** 20) == 64         # never below what was asked
    assert memory.batch_size(cuda, 64, None) == 64                 # no estimate: as asked
    # the ablation's chunk: the configured MB on the CPU, a share of the free memory on CUDA
    assert memory.chunk_bytes(cpu, 128) == 128 * 2 ** 20
    fake_cuda["free"] = 64 * GiB
    assert memory.chunk_bytes(cuda, 128) == int(64 * GiB * memory.CHUNK_SHARE)
    assert memory.fits(cuda, 32 * GiB) and not memory.fits(cuda, 33 * GiB) and not memory.fits(cpu, 1)


def test_parts_halve_on_oom_and_never_redo_a_done_part():
    calls = []

    def job(s):
        calls.append((s.start, s.stop))
        if s.stop - s.start > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        return list(range(s.start, s.stop))

    parts = memory.Parts()
    out = parts.run(10, job)
    assert [i for p in out for i in p] == list(range(10))
    assert calls == [(0, 10), (0, 5), (0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert parts.limit == 2 and parts.splits == 2
    calls.clear()
    parts.run(4, job)                      # the next job starts at the size that worked
    assert calls == [(0, 2), (2, 4)]
    with pytest.raises(torch.cuda.OutOfMemoryError):   # one row that does not fit: the error stands
        memory.Parts().run(1, lambda s: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")))


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv = nn.Conv2d(3, 6, 5, stride=4, padding=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(6, generator=g))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


def test_out_of_memory_fallback_gives_identical_results(toyworld_small, monkeypatch):
    """Forward passes of more than 5 images and IoU tallies of more than 3 run out of
    (simulated) memory: every batch is retried in parts, and every statistic, the intervals
    too, equals the run without the errors bit for bit."""
    ds = BrodenDataset(toyworld_small, input_size=64, indices=range(24))
    config = DissectConfig(quantile=0.02, top_k=4, batch_size=12, num_workers=0, device="cpu",
                           intervals=IntervalOptions(replicates=100), activation_cache_mb=0)
    model = Conv().eval()
    want = dissect_layers(model, ["relu"], ds, config, progress=False)["relu"]

    raised = {"forward": 0, "tally": 0}
    conv_forward = Conv.forward

    def forward(self, x):
        if len(x) > 5:
            raised["forward"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return conv_forward(self, x)

    add_sparse = IoUTally.add_sparse

    def tally(self, img, unit, masks, labels):
        if labels.pixel.shape[0] > 3:
            # fail as a real one would: after part of the work, before the tally changes
            raised["tally"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return add_sparse(self, img, unit, masks, labels)

    monkeypatch.setattr(Conv, "forward", forward)
    monkeypatch.setattr(IoUTally, "add_sparse", tally)
    got = dissect_layers(model, ["relu"], ds, config, progress=False)["relu"]
    assert raised["forward"] >= 1 and raised["tally"] >= 1
    for name in ("thresholds", "minimum", "maximum", "top_values", "top_indices", "top_maps", "intervals"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.tally.keys() == want.tally.keys()
    for key, value in want.tally.items():
        assert torch.equal(torch.as_tensor(got.tally[key]), torch.as_tensor(value)), key


@pytest.mark.slow
def test_gpu_check_small_runs_on_cpu(tmp_path):
    """``benchmarks/gpu_check.py --device cpu --small``, the prepared device check at tiny
    sizes: every step runs (the label-cache rows may be skipped, saying why), and the table
    and its JSON come out, so that the check a GPU session runs has not rotted."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--small",
                        "--out", str(out), "--work", str(tmp_path / "work")],
                       cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = {row["step"]: row for row in report["rows"]}
    assert report["small"] and report["device"] == "cpu" and report["goals"] is None
    for name in ("cuda tests", "default report", "probe set", "toy dissection", "single-unit sweep",
                 "generator dissection + interventions"):
        assert steps[name]["status"] == "ok", steps[name]
    assert steps["cuda tests"]["numbers"].get("skipped", 0) >= 1          # no GPU here: the CUDA runs skip
    assert steps["toy dissection"]["numbers"]["ratio"] > 0
    assert steps["single-unit sweep"]["numbers"]["units"] == 128
    assert all(row["status"] != "failed" for row in report["rows"])
    assert all(row["status"] == "ok" or row["note"] for row in report["rows"])   # a skip says why
    assert "gpu_check on cpu" in r.stdout and "single-unit sweep" in r.stdout


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda)], indirect=True)
def test_cuda_fp32_labels_equal_the_cpus(toyworld_small, device):
    """On CUDA in fp32 (no TF32) the toy classifier's labels are the CPU's and every IoU equal
    within float rounding (a label may differ only where two concepts' IoUs tie within it)."""
    import numpy as np

    from dissect.experiments.dissection import summarize_layer, unit_scores
    from dissect.models import load_model

    loaded = load_model("toy", progress=False)
    layer = loaded.default_layers[-1]
    ds = BrodenDataset(toyworld_small, input_size=64, mean=loaded.mean, std=loaded.std, indices=range(100))
    runs = {}
    for dev in ("cpu", device):
        config = DissectConfig(num_workers=0, device=dev, precision="fp32", intervals=IntervalOptions(replicates=0))
        runs[dev] = dissect_layers(loaded.module, [layer], ds, config, progress=False)[layer]
    cpu, gpu = runs["cpu"], runs[device]
    torch.testing.assert_close(gpu.thresholds, cpu.thresholds, rtol=1e-4, atol=1e-5)
    a, b = unit_scores(cpu, ds.index), unit_scores(gpu, ds.index)
    np.testing.assert_allclose(b.iou, a.iou, atol=2e-3)
    top2 = np.sort(a.iou, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 4e-3          # the best concept ahead by more than the rounding
    assert np.array_equal(a.best[clear], b.best[clear])
    ua = summarize_layer(cpu, ds, config)["units"]
    ub = summarize_layer(gpu, ds, config)["units"]
    assert sum(x["label"] != y["label"] for x, y in zip(ua, ub)) <= int((~clear).sum())


def test_torchrun_refuses_one_gpu_for_every_rank(monkeypatch):
    """Under torchrun each rank takes the GPU of its LOCAL_RANK (NCCL bound to it); a fixed
    ``--device cuda:N`` would put every rank on one GPU, and is refused in one line."""
    from dissect import distributed
    from dissect.errors import DissectError
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DissectError, match="LOCAL_RANK; pass --device cuda"):
        distributed.init_from_env("cuda:1")


def test_ablation_chunks_retried_on_oom_give_the_same_numbers(monkeypatch):
    """The ablation's chunks of edited activations, split on (simulated) out-of-memory errors:
    the same predictions and expected balanced accuracies as one chunk."""
    from dissect.data.labeled import LabeledSplit, TensorImages
    from dissect.experiments.ablation import AblationRunner
    from dissect.models import load_model

    model = load_model("toy", weights="none", progress=False).module
    g = torch.Generator().manual_seed(4)
    split = LabeledSplit("s", TensorImages(torch.randn(12, 3, 64, 64, generator=g)), torch.arange(12) % 4)
    runner = AblationRunner(model, "features.13", split, batch_size=12, chunk_mb=64)
    C = runner.num_units
    masks = torch.ones(9, C)
    masks[torch.arange(1, 9), torch.arange(8)] = 0.0
    want = runner.run(masks)
    forward = AblationRunner._forward

    def small(self, m, rows):
        if m.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(self, m, rows)

    monkeypatch.setattr(AblationRunner, "_forward", small)
    got = runner.run(masks)
    assert runner.parts.splits >= 1 and runner.parts.limit <= 2
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-9, equal_nan=True)   # NaN: a class with no image
