"""torchrun: a 2-process gloo report gives the same numbers as a 1-process report.

Each rank dissects a shard of the probe set and the tallies are merged exactly
(dissect/distributed.py); the ablation computes its activations in shards and splits its unit sets, the attack its class pairs across
the ranks. The numbers of ``results.json`` (labels, IoUs, thresholds, top images, ablation
curves, attacks) must be identical, units with non-finite activations in one rank's shard
included (``--nonfinite invalid``). A bad input in one rank's shard stops every rank at once,
with one line, and the site stays.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from dissect.data.toyworld_probe import write_toyworld
from dissect.distributed import merge_tallies, shard
from dissect.stats.iou import IoUTally
from dissect.stats.quantile import TopQuantile
from dissect.stats.topk import TopK

ROOT = Path(__file__).resolve().parents[1]


def test_shards_cover_every_item_once():
    for n in (0, 1, 5, 64, 101):
        for size in (1, 2, 3, 7):
            parts = [shard(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_state_round_trip_merges_like_one_tally():
    """What a rank sends (state_dict) and the merge in rank order equal one tally of all."""
    torch.manual_seed(0)
    x = torch.randn(4, 1000)
    whole = TopQuantile(4, 0.01, 1000)
    whole.add(x)
    merged = TopQuantile(4, 0.01, 1000)
    for part in (x[:, :300], x[:, 300:]):
        t = TopQuantile(4, 0.01, 1000)
        t.add(part)
        back = TopQuantile(4, 0.01, 1000)
        back.load_state_dict(t.state_dict())
        merged.merge(back)
    assert torch.equal(merged.thresholds(), whole.thresholds())
    acts = torch.rand(10, 3, 2, 2)
    one = TopK(3, 4, (2, 2))
    one.add(acts, torch.arange(10))
    two = TopK(3, 4, (2, 2))
    for lo, hi in ((0, 6), (6, 10)):
        t = TopK(3, 4, (2, 2))
        t.add(acts[lo:hi], torch.arange(lo, hi))
        back = TopK(3, 4, (2, 2))
        back.load_state_dict(t.state_dict())
        two.merge(back)
    assert torch.equal(one.indices, two.indices) and torch.equal(one.maps, two.maps)
    # without a process group, merging is the identity
    tally = {"a": IoUTally(2, 3, torch.tensor([0, 0, 0]), 1)}
    assert merge_tallies(tally, lambda k: None) is tally


def _run(nproc: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m dissect *args`` in one process, or in ``nproc`` under torchrun (gloo)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launch if nproc > 1 else [sys.executable]), "-m", "dissect", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _report_args(tmp_path: Path, name: str, probe: Path, *extra: str) -> list[str]:
    return ["report", "--data", str(probe), "--device", "cpu", "--cache-dir", str(tmp_path / f"cache-{name}"),
            "--out", str(tmp_path / f"site-{name}"), "--reproducible", "--quiet", *extra]


def _report(tmp_path: Path, name: str, probe: Path, nproc: int, *extra: str) -> dict:
    done = _run(nproc, *_report_args(tmp_path, name, probe, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next((tmp_path / f"site-{name}").glob("*/results.json")).read_text())


TOY = ["--model", "toy", "--attack-pairs", "2", "--ablation-top-n", "1,5,all", "--batch-size", "16"]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path, toyworld_small):
    one = _report(tmp_path, "one", toyworld_small, 1, *TOY)
    two = _report(tmp_path, "two", toyworld_small, 2, *TOY)
    assert len(one["layers"]) == len(two["layers"]) == 3
    for a, b in zip(one["layers"], two["layers"]):
        assert a["summary"] == b["summary"]
        assert a["intervals"] == b["intervals"] and a["intervals"]["replicates"] == 1000   # pass 3 merged
        for ua, ub in zip(a["units"], b["units"]):
            for key in ("label", "iou", "threshold", "active_fraction", "max_activation", "top_concepts",
                        "top_images", "iou_interval", "detector_interval"):
                assert ua[key] == ub[key], (a["name"], ua["unit"], key)
    assert one["probe"]["num_images"] == two["probe"]["num_images"] == 200
    # the ablation's unit sets were split across the ranks: the same curves and rankings
    la, lb = one["ablation"]["layers"], two["ablation"]["layers"]
    assert la.keys() == lb.keys() and la
    for name in la:
        assert la[name]["classes"] == lb[name]["classes"]
        assert la[name]["importance"] == lb[name]["importance"]
        assert la[name]["attack"] == lb[name]["attack"]
    # the attack's pairs were split across the ranks too
    assert len(one["ablation"]["attack"]["pairs"]) == 2 and one["ablation"]["attack"] == two["ablation"]["attack"]


class Contrast(nn.Module):
    """Four units: the image's colour channels and its contrast ``(g - min g) / (max g - min g)``,
    which is 0/0 = NaN on a flat image (unit 3 only)."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        pooled = nn.functional.avg_pool2d(x, 4)
        gray = pooled.mean(dim=1, keepdim=True)
        lo, hi = gray.amin(dim=(2, 3), keepdim=True), gray.amax(dim=(2, 3), keepdim=True)
        return self.units(torch.cat([pooled, (gray - lo) / (hi - lo)], 1))


def contrast():
    return Contrast()


FLAT = 20   # the flat scene: in rank 1's half of the 24
CONTRAST = ["--model", "test_distributed:contrast", "--layer", "units", "--input-size", "64", "--no-ablation",
            "--workers", "0"]


@pytest.fixture(scope="module")
def flat_probe(tmp_path_factory) -> Path:
    """24 toy scenes, scene ``FLAT`` painted one flat colour."""
    probe = write_toyworld(tmp_path_factory.mktemp("flat") / "toyworld", n=24, seed=7, image_size=64,
                           progress=False)
    Image.new("RGB", (64, 64), (90, 120, 60)).save(probe / "images" / f"toy-{FLAT:05d}.png")
    return probe


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, flat_probe) -> tuple[Path, dict]:
    """The one-process report of :class:`Contrast` on ``flat_probe`` (``--nonfinite invalid``):
    its folder and results."""
    work = tmp_path_factory.mktemp("one")
    return work, _report(work, "one", flat_probe, 1, *CONTRAST, "--nonfinite", "invalid")


def test_invalid_units_of_one_rank_are_invalid_on_every_rank(tmp_path, flat_probe, one_process):
    """Only rank 1 sees the flat scene's NaN: the ranks' invalid units are merged (union)."""
    one = one_process[1]
    two = _report(tmp_path, "two", flat_probe, 2, *CONTRAST, "--nonfinite", "invalid")
    assert [u.get("invalid", False) for u in one["layers"][0]["units"]] == [False, False, False, True]
    assert one["layers"] == two["layers"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failing_rank_stops_the_run_with_one_line_and_the_site_stays(tmp_path, flat_probe, one_process):
    """A bad input in rank 1's shard only (the flat scene, whose NaN stops the run under the
    default ``--nonfinite error``) stops both ranks at once: rank 1 says why in one line,
    rank 0 says nothing (no traceback), and the earlier site at ``--out`` is untouched."""
    shutil.copytree(one_process[0] / "site-one", tmp_path / "site-bad")
    before = _files(tmp_path / "site-bad")
    done = _run(2, *_report_args(tmp_path, "bad", flat_probe, *CONTRAST), timeout=120)
    said = [line for line in done.stderr.splitlines() if line.startswith("dissect:")]
    assert done.returncode != 0 and len(said) == 1, done.stderr[-3000:]
    assert said[0].startswith("dissect: error (rank 1 of 2): layer 'units' gives non-finite activations"), said
    assert f"in unit(s) 3 on image(s) toy-{FLAT:05d}.png" in said[0]
    assert "[rank0]" not in done.stderr and "exitcode  : 2" in done.stderr   # rank 1's status, in torchrun's summary
    assert _files(tmp_path / "site-bad") == before
    assert {p.name for p in tmp_path.iterdir()} <= {"site-bad", "cache-bad"}   # no temporary folder left
