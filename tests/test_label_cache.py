"""The label cache (dissect/data/label_cache.py): a dissection reads its probe set's label
planes from the cache exactly as it would decode them from the PNGs; damaged or stale
entries are written again, never trusted; the budget, ``off`` and two writers at once."""

import os
import pickle
import threading

import numpy as np
import pytest
import torch

from dissect import report
from dissect.cli import main
from dissect.data import broden
from dissect.data.broden import BrodenDataset, make_loader
from dissect.data.label_cache import HEADER_BYTES, LabelCacheOptions, attach_label_cache
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.stats.intervals import IntervalOptions
from tiny_model import Tiny

FINGERPRINT = ("tables", "files")


def dissect(dataset, workers: int = 0, model=None):
    config = DissectConfig(num_workers=workers, intervals=IntervalOptions(0))
    stats = dissect_layers(model or Tiny(), ["conv"], dataset, config, progress=False)["conv"]
    return stats, summarize_layer(stats, dataset, config)


def assert_same(a, b):
    """Two dissections equal bit for bit: thresholds, tallies, top images, IoUs and labels."""
    sa, sb = a[0].to_state(), b[0].to_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        x, y = sa[key], sb[key]
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                assert (torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]), (key, k)
        else:
            assert (torch.equal(x, y) if torch.is_tensor(x) else x == y), key
    assert a[1]["units"] == b[1]["units"]


@pytest.fixture(scope="module")
def probe(toyworld_small):
    return BrodenDataset(toyworld_small, input_size=64, indices=range(100))   # the first 100 images


@pytest.fixture(scope="module")
def reference(probe):
    """The dissection with the labels decoded from the PNGs, as without a label cache."""
    probe.label_cache = None
    return dissect(probe)


def entry_file(cache):
    files = sorted((cache / "labels").glob("labels-*.bin"))
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope="module")
def warm(probe, reference, tmp_path_factory):
    """A cache folder with the entry written by a cold run (checked against the reference)."""
    cache = tmp_path_factory.mktemp("labelcache")
    entry = attach_label_cache(probe, cache, "auto", FINGERPRINT)
    assert entry is not None and entry.writing
    assert_same(dissect(probe), reference)
    assert not entry.writing and entry.check() is None     # committed by the first pass
    path = entry_file(cache)
    # 100 images x 5 planes x 64 x 64 px, one byte each (44 labels), after its header and CRCs
    assert path.stat().st_size == entry.layout.total and 100 * 5 * 64 * 64 < entry.layout.total < 2.1e6
    assert [p.name for p in (cache / "labels").iterdir()] == [path.name]   # no temporary file left
    return cache


def test_warm_run_reads_the_cache_and_equals_cold(probe, reference, warm, monkeypatch):
    entry = attach_label_cache(probe, warm, "auto", FINGERPRINT)
    assert entry is not None and not entry.writing

    def no_png(path):
        raise AssertionError(f"label PNG {path} decoded although the label cache holds it")
    monkeypatch.setattr(broden, "decode_label_png", no_png)   # also in the (forked) loader workers
    assert_same(dissect(probe, workers=2), reference)
    # a loader worker (spawned: pickled) reads the same planes
    clone = pickle.loads(pickle.dumps(entry))
    for r in (0, 7, 99):
        assert np.array_equal(clone.planes(r), entry.planes(r))
    probe.label_cache = None


@pytest.mark.parametrize("damage", ["truncate", "fingerprint", "data byte"])
def test_damaged_entry_is_recomputed(probe, reference, warm, tmp_path, capsys, damage):
    cache = tmp_path / "c"
    (cache / "labels").mkdir(parents=True)
    path = cache / "labels" / entry_file(warm).name
    blob = bytearray(entry_file(warm).read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "fingerprint":
        start = blob.index(b'"key": "') + 8
        blob[start] = ord("0") if blob[start] != ord("0") else ord("1")
    else:   # a label in the data, past the header and the per-image CRCs
        blob[-5000] = (blob[-5000] + 1) % 40
    path.write_bytes(bytes(blob))

    entry = attach_label_cache(probe, cache, "auto", FINGERPRINT)
    if damage == "data byte":   # size and header are right: caught by the image's CRC when read
        assert not entry.writing
        assert_same(dissect(probe), reference)
        assert not path.exists()                             # removed: the next run writes it again
        entry = attach_label_cache(probe, cache, "auto", FINGERPRINT)
    else:
        assert "writing it again" in capsys.readouterr().err
    assert entry.writing
    assert_same(dissect(probe), reference)
    assert path.read_bytes() == entry_file(warm).read_bytes()   # the same entry as the cold run's
    probe.label_cache = None


def test_budget_too_small_writes_nothing(probe, reference, tmp_path, capsys):
    for _ in range(2):
        assert attach_label_cache(probe, tmp_path, "1", FINGERPRINT) is None   # the entry takes ~2 MB
    err = capsys.readouterr().err
    assert err.count("over the budget of 1 MB") == 1, err                     # said once
    assert_same(dissect(probe), reference)
    assert not (tmp_path / "labels").exists()
    assert attach_label_cache(probe, tmp_path, "off", FINGERPRINT) is None
    assert attach_label_cache(probe, tmp_path, 0, FINGERPRINT) is None
    assert not (tmp_path / "labels").exists()


def test_budget_reads_an_entry_it_would_not_write(probe, warm):
    """``--label-cache 0`` (and any budget) still reads an entry that is there."""
    entry = attach_label_cache(probe, warm, 0, FINGERPRINT)
    assert entry is not None and not entry.writing
    probe.label_cache = None


def test_two_writers_at_once(probe, reference, tmp_path):
    """Two runs start on an empty cache at the same time: each writes its own temporary
    entry and renames it into place; both finish with the reference results and one entry."""
    barrier = threading.Barrier(2)
    results, errors = [None, None], []
    models = [Tiny(), Tiny()]   # made here: Tiny() seeds torch's global generator

    def run(k):
        try:
            ds = BrodenDataset(probe.index, input_size=64, indices=probe.indices)
            entry = attach_label_cache(ds, tmp_path, "auto", FINGERPRINT)
            assert entry.writing
            barrier.wait(timeout=60)
            results[k] = dissect(ds, model=models[k])
        except BaseException as e:   # reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert_same(r, reference)
    path = entry_file(tmp_path)
    assert [p.name for p in (tmp_path / "labels").iterdir()] == [path.name]
    entry = attach_label_cache(probe, tmp_path, "auto", FINGERPRINT)
    assert not entry.writing and entry.check() is None
    probe.label_cache = None


def test_unfinished_pass_leaves_nothing(probe, tmp_path):
    """A pass that stops early (an error, a subset) commits nothing and removes its file."""
    ds = BrodenDataset(probe.index, input_size=64, indices=probe.indices)
    entry = attach_label_cache(ds, tmp_path, "auto", FINGERPRINT)
    next(iter(make_loader(ds, 16, 0)))
    assert entry.writing and len(list((tmp_path / "labels").iterdir())) == 1   # its temporary file
    entry.abandon()
    assert list((tmp_path / "labels").iterdir()) == []


@pytest.mark.parametrize("value", ["-3", "banana", "1.5"])
def test_bad_label_cache_is_one_line_exit_2(capsys, tmp_path, value):
    code = main(["report", "--model", "toy", "--label-cache", value, "--out", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("dissect: error: --label-cache takes auto, off"), err
    assert not (tmp_path / "s").exists()


def test_options_parse():
    assert LabelCacheOptions.parse(None) == LabelCacheOptions("auto")
    assert LabelCacheOptions.parse(" OFF ") == LabelCacheOptions("off")
    assert LabelCacheOptions.parse("512") == LabelCacheOptions("budget", 512)
    assert LabelCacheOptions.parse(64).budget_bytes(".") == 64 * 2 ** 20
    assert 0 < LabelCacheOptions().budget_bytes(os.getcwd()) <= 8192 * 2 ** 20
    with pytest.raises(DissectError):
        LabelCacheOptions("budget", -1).validate()
    assert HEADER_BYTES == 4096


def test_report_with_label_cache_off_writes_nothing(tmp_path, toyworld_small):
    report(Tiny(), layers=["conv"], data=str(toyworld_small), data_size=40, input_size=64,
           cache_dir=tmp_path / "c", out=tmp_path / "s", ablation=False, progress=False,
           config=DissectConfig(top_k=2, num_workers=0, intervals=IntervalOptions(0)), label_cache="off")
    assert (tmp_path / "c" / "stats").is_dir() and not (tmp_path / "c" / "labels").exists()
