"""torchrun: a 2-process gloo report gives the same numbers as a 1-process report.

Each rank dissects a shard of the probe set and the tallies are merged exactly
(dissect/distributed.py); the ablation splits its unit sets across the ranks. The numbers of
``results.json`` (labels, IoUs, thresholds, top images, ablation curves) must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _report(tmp_path: Path, name: str, probe: Path, nproc: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["-m", "dissect", "report", "--model", "toy", "--data", str(probe), "--device", "cpu",
            "--cache-dir", str(tmp_path / f"cache-{name}"), "--out", str(tmp_path / f"site-{name}"),
            "--reproducible", "--quiet", "--attack-pairs", "0", "--ablation-top-n", "1,5,all",
            "--batch-size", "16"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / f"site-{name}" / "toy" / "results.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path, toyworld_small):
    one = _report(tmp_path, "one", toyworld_small, 1)
    two = _report(tmp_path, "two", toyworld_small, 2)
    assert len(one["layers"]) == len(two["layers"]) == 3
    for a, b in zip(one["layers"], two["layers"]):
        assert a["summary"] == b["summary"]
        for ua, ub in zip(a["units"], b["units"]):
            for key in ("label", "iou", "threshold", "active_fraction", "max_activation", "top_concepts",
                        "top_images"):
                assert ua[key] == ub[key], (a["name"], ua["unit"], key)
    assert one["probe"]["num_images"] == two["probe"]["num_images"] == 200
    # the ablation's unit sets were split across the ranks: the same curves and rankings
    la, lb = one["ablation"]["layers"], two["ablation"]["layers"]
    assert la.keys() == lb.keys() and la
    for name in la:
        assert la[name]["classes"] == lb[name]["classes"]
        assert la[name]["importance"] == lb[name]["importance"]
