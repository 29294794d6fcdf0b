"""Issue 21: uncertainty beside every ablation number that decides something, the
small-sample rule, class names from ``--class-names``, and published notes that name no
local path and give no command-line advice to a Python user."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dissect.cli import main
from dissect.errors import DissectError
from dissect.experiments.ablation import MIN_CLASS_IMAGES
from dissect.experiments.metrics import (average_ranks, balanced_accuracy, balanced_accuracy_intervals,
                                         resample_counts, spearman, spearman_interval)
from dissect.models import load_model, with_class_names
from dissect.models.weights import parse_class_names
from shared_support import visible_text


def _text(path) -> str:
    return visible_text(path, hidden=(), sep=" ")


# ------------------------------------------------------------------------------ the bootstrap
def test_resamples_keep_class_counts_and_are_seeded():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    a, b = resample_counts(y, 50, 3), resample_counts(torch.tensor(y), 50, 3)
    assert (a == b).all() and not (a == resample_counts(y, 50, 4)).all()
    for c in range(3):
        assert (a[:, y == c].sum(1) == (y == c).sum()).all()     # stratified: class counts kept
    assert a.min() >= 0 and a.shape == (50, 10)


def test_paired_bootstrap_equals_brute_force_resample():
    rng = np.random.default_rng(0)
    N, M, K, B = 40, 6, 4, 300
    y = rng.integers(0, K, N)
    preds = np.where(rng.random((M, N)) < 0.7, y, rng.integers(0, K, (M, N)))   # mostly right
    counts = resample_counts(y, B, 11)
    rows, classes = [1, 2, 3, 4, 5, 5], [0, 1, 2, 3, 0, 3]
    drops = balanced_accuracy_intervals(torch.tensor(preds), torch.tensor(y), rows, classes, counts,
                                        base_rows=[0] * len(rows))
    plain = balanced_accuracy_intervals(preds, y, rows, classes, counts, chunk_elems=N)   # chunks of one pair
    brute_drop, brute_ba = [], []
    for b in range(B):                       # the same resampled images, drawn out explicitly
        idx = np.repeat(np.arange(N), counts[b])
        ba = balanced_accuracy(torch.tensor(preds[:, idx]), torch.tensor(y[idx]), K).numpy()
        brute_drop.append([ba[0, c] - ba[r, c] for r, c in zip(rows, classes)])
        brute_ba.append([ba[r, c] for r, c in zip(rows, classes)])
    want_drop = np.quantile(np.array(brute_drop), [0.025, 0.975], axis=0).T
    want_ba = np.quantile(np.array(brute_ba), [0.025, 0.975], axis=0).T
    np.testing.assert_allclose(drops, want_drop, atol=1e-12)
    np.testing.assert_allclose(plain, want_ba, atol=1e-12)
    # paired: a row equal to the baseline has a zero-width interval at 0, unlike two unpaired draws
    same = balanced_accuracy_intervals(preds, y, [0], [2], counts, base_rows=[0])
    assert same.tolist() == [[0.0, 0.0]]
    # the point estimate lies inside its interval
    full = balanced_accuracy(torch.tensor(preds), torch.tensor(y), K).numpy()
    for (r, c), (lo, hi) in zip(zip(rows, classes), plain):
        assert lo - 1e-12 <= full[r, c] <= hi + 1e-12


def test_undefined_balanced_accuracy_has_no_interval():
    y = np.array([0, 0, 0, 0])                 # no image of another class: TNR undefined
    preds = np.zeros((2, 4), dtype=np.int64)
    iv = balanced_accuracy_intervals(preds, y, [1], [0], resample_counts(y, 20, 1), base_rows=[0])
    assert np.isnan(iv).all()


def test_spearman_interval_equals_brute_force():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, 30).astype(float)   # many ties, like the many-classes counts
    y = x + rng.normal(0, 1.5, 30)
    v = rng.random((3, 9)).round(1)
    for row in v:                               # tie-averaged ranks agree with spearman's own
        r = average_ranks(row)
        assert spearman(row, np.arange(9.0)) == pytest.approx(np.corrcoef(r, np.arange(9.0))[0, 1])
    lo, hi = spearman_interval(x, y, 400, 2)
    idx = np.random.default_rng(2).integers(0, 30, size=(400, 30))
    rhos = [spearman(x[i], y[i]) for i in idx]
    rhos = np.array([r for r in rhos if r is not None])
    assert (lo, hi) == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])), abs=1e-12)
    assert lo <= spearman(x, y) <= hi


# ------------------------------------------------------------------------------ class names
def test_class_names_files(tmp_path):
    (tmp_path / "a.txt").write_text("cat\n dog \n\nbird\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"2": "bird", "0": "cat", "1": "dog"}), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps(["cat", "dog", "bird"]), encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps({"0": "cat", "2": "bird"}), encoding="utf-8")
    for f in ("a.txt", "b.json", "c.json"):
        assert parse_class_names(tmp_path / f) == ["cat", "dog", "bird"]
    with pytest.raises(DissectError, match="without gaps"):
        parse_class_names(tmp_path / "d.json")
    with pytest.raises(DissectError, match="cannot read the class names"):
        parse_class_names(tmp_path / "missing.txt")
    toy = load_model("toy", weights="none", progress=False)
    with pytest.raises(DissectError, match="3 class names in .*a.txt, but model toy has 6 outputs"):
        with_class_names(toy, tmp_path / "a.txt")
    named = with_class_names(toy, ["a", "b", "c", "d", "e", "f"])
    assert named.class_names == ["a", "b", "c", "d", "e", "f"] and toy.class_names is None


def test_class_names_count_mismatch_exits_2(tmp_path, capsys):
    (tmp_path / "names.txt").write_text("one\ntwo\n", encoding="utf-8")
    rc = main(["report", "--model", "toy", "--weights", "none", "--class-names", str(tmp_path / "names.txt"),
               "--out", str(tmp_path / "site"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "2 class names" in err[0] and "6 outputs" in err[0]


NAMES = ["woods", "town", "road", "shore", "pond", "meadow"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory, toyworld_small):
    """The toy classifier with random weights and the user's own class names (--class-names),
    ablated on a folder of 4 images: 2 classes, one ranking and one held-out image each
    (the alternate halves), plus a class with a single image."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "names.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    folder = root / "photos"
    for c, name in enumerate(["woods", "shore", "pond"]):
        (folder / name).mkdir(parents=True)
        for i in range(1 if name == "pond" else 2):
            Image.new("RGB", (64, 64), (60 * c + 30 * i, 120, 200 - 50 * c)).save(folder / name / f"p{i}.png")
    out = root / "site"
    rc = main(["report", "--model", "toy", "--weights", "none", "--class-names", str(root / "names.txt"),
               "--data", str(toyworld_small), "--layer", "conv4_2", "--ablation-data", str(folder),
               "--ablation-top-n", "1,5", "--attack-pairs", "0", "--workers", "0", "--quiet", "--reproducible",
               "--out", str(out), "--cache-dir", str(root / "cache")])
    assert rc == 0
    return out / "toy", folder


def test_class_names_reach_results_and_ablation_page(tiny_report):
    site, _ = tiny_report
    res = json.loads((site / "results.json").read_text())
    assert res["model"]["class_names"] == NAMES
    layer = res["ablation"]["layers"]["features.18"]
    assert layer["class_order"] == ["woods", "shore", "pond"]
    text = _text(site / "conv4_2" / "ablation.html")
    for name in ("woods", "shore", "pond"):
        assert name in text


def test_small_ablation_set_carries_banner_and_warnings(tiny_report):
    site, folder = tiny_report
    res = json.loads((site / "results.json").read_text())
    layer = res["ablation"]["layers"]["features.18"]
    assert layer["images"] == {"rank": 3, "eval": 2, "skipped": []}
    lo, hi = layer["accuracy"]["eval_interval"]
    assert lo <= layer["accuracy"]["eval"] <= hi and {lo, hi} <= {0.0, 0.5, 1.0}   # 2 images: k/2
    small = layer["small_sample"]
    assert small["min_images"] == MIN_CLASS_IMAGES and set(small["classes"]) == {"woods", "shore", "pond"}
    assert small["warning"] in layer["messages"]                 # the console prints the messages
    assert f"fewer than {MIN_CLASS_IMAGES} images" in res["ablation"]["params"]["small_sample_rule"]
    woods = next(c for c in layer["classes"] if c["name"] == "woods")
    assert woods["few_images"] and woods["images_rank"] == woods["images_eval"] == 1
    lo, hi = woods["balanced_accuracy_interval"]
    assert lo <= woods["balanced_accuracy"] <= hi
    assert all(t["drop_interval"] is None or t["drop_interval"][0] <= t["drop"] <= t["drop_interval"][1]
               for t in woods["top_units"])
    assert len(woods["remove_top_interval"]) == len(layer["top_n"])
    pond = next(c for c in layer["classes"] if c["name"] == "pond")
    assert pond["images_eval"] == 0 and "no held-out image" in pond["no_curves"]
    assert layer["many_classes"]["spearman_note"].startswith("only 3 classes ranked")
    text = _text(site / "conv4_2" / "ablation.html")
    assert "Too few images to separate effects from chance" in text
    assert f"fewer than {MIN_CLASS_IMAGES} images" in text                 # the rule, stated
    assert "1 ranking and 1 held-out image(s): too few to rank units" in text
    assert "no image in one of the splits" not in text
    assert "No curves: no held-out image" in text
    assert "Caveat: only 3 classes ranked" in text
    assert "95% interval" in text
    assert str(folder) not in (site / "conv4_2" / "ablation.html").read_text()   # no local path


def test_published_skip_note_names_no_path_and_no_flag(tmp_path, toyworld_small, capsys):
    from dissect import report
    missing = tmp_path / "no-such-folder"
    report(model="toy", weights="none", data=str(toyworld_small), out=tmp_path / "site", layers=["conv4_2"],
           class_names=NAMES, ablation_data=str(missing), reproducible=True, progress=True,
           cache_dir=tmp_path / "cache", interventions=False)
    console = capsys.readouterr()
    res = json.loads((tmp_path / "site" / "toy" / "results.json").read_text())
    error = res["ablation"]["error"]
    assert error == "the labeled data is not a folder"
    page = (tmp_path / "site" / "toy" / "index.html").read_text()
    assert "Ablation skipped: the labeled data is not a folder" in page
    for published in (error, page, json.dumps(res["ablation"])):
        assert str(missing) not in published and "--ablation" not in published and "--no-ablation" not in published
    said = console.out + console.err
    assert f"ablation_data={str(missing)!r}" in said                  # the Python API's own terms
    assert not re.search(r"--(no-)?ablation", said)
