"""Open-vocabulary labels (issue 25): SoftWPMI exactly as CLIP-Dissect defines it, checked
against a plain reference implementation of the published formula; planted data, where
unit k's top images are the images CLIP says show concept k, labels every unit with its
concept; the labeler end to end in a report (cached, agreement with the IoU labels); and
bad input (an empty or non-text concept list, the missing extra) in one line, exit 2."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from dissect.cli import main
from dissect.errors import DissectError
from dissect.labelers.clip import LabelerOptions, agreement, cosine, read_concepts, unit_labels
from dissect.stats.softwpmi import SoftWPMIParams, soft_wpmi


def reference_soft_wpmi(sim, acts, top_k=100, a=10.0, lam=1.0, p_start=0.998, p_end=0.97, min_prob=1e-7):
    """The published formula, written out with plain loops (numpy float64)."""
    sim, acts = np.asarray(sim, dtype=np.float64), np.asarray(acts, dtype=np.float64)
    n, c = sim.shape
    e = np.exp(a * sim - (a * sim).max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)                       # P[i, c] = softmax over concepts
    units = acts.shape[1]
    k = min(top_k, n)
    log_cu = np.zeros((units, c))
    for u in range(units):
        top = sorted(range(n), key=lambda i: -acts[i, u])[:k]      # rank 1 = highest activation
        for cc in range(c):
            total = 0.0
            for j, i in enumerate(top):
                p_j = p_start - j / k * (p_start - p_end)
                total += math.log(1 + p_j * (prob[i, cc] - 1) + min_prob)
            log_cu[u, cc] = total
    log_c = np.zeros(c)
    for cc in range(c):
        m = log_cu[:, cc].max()
        log_c[cc] = m + math.log(sum(math.exp(x - m) for x in log_cu[:, cc]) / units)
    return log_cu - lam * log_c[None, :]


@pytest.mark.parametrize("top_k, a, lam", [(100, 10.0, 1.0), (7, 2.0, 0.6), (500, 10.0, 1.0)])
def test_soft_wpmi_equals_the_published_formula(top_k, a, lam):
    gen = torch.Generator().manual_seed(3)
    sim = torch.rand(150, 17, generator=gen) * 0.4 - 0.1           # cosine similarities
    acts = torch.randn(150, 9, generator=gen)
    got = soft_wpmi(sim, acts, SoftWPMIParams(top_k=top_k, a=a, lam=lam), chunk=4)
    want = reference_soft_wpmi(sim.numpy(), acts.numpy(), top_k, a, lam)
    assert got.shape == (9, 17)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_planted_units_get_their_concepts():
    """A "CLIP" whose similarities are set: images 40k..40k+39 show concept k (higher
    similarity to k's text), and unit k fires most on exactly those images. A generic
    concept similar to every image a little more than the rest must not win (lambda)."""
    gen = torch.Generator().manual_seed(0)
    units, per = 8, 40
    n = units * per + 200                                          # 200 images of nothing planted
    concepts = [f"concept {k}" for k in range(units)] + ["generic", "distractor a", "distractor b"]
    sim = 0.18 + 0.02 * torch.rand(n, len(concepts), generator=gen)
    sim[:, units] += 0.03                                          # "generic": a bit closer to every image
    acts = torch.rand(n, units, generator=gen)
    for k in range(units):
        rows = slice(k * per, (k + 1) * per)
        sim[rows, k] += 0.08
        acts[rows, k] += 2.0
    scores = soft_wpmi(sim, acts)                                  # CLIP-Dissect's defaults: top 100
    labels = unit_labels(scores, concepts, top=3)
    assert [lab["label"] for lab in labels] == concepts[:units]
    assert all(lab["top"][0]["score"] >= lab["top"][1]["score"] >= lab["top"][2]["score"] for lab in labels)


def test_concept_lists(tmp_path):
    shipped = read_concepts(None)
    assert len(shipped) == 1153 and "red" in shipped and "red-c" not in shipped and len(set(shipped)) == len(shipped)
    f = tmp_path / "c.txt"
    f.write_text("\ufeffdog\n\n cat \ndog\n")
    assert read_concepts(f) == ["dog", "cat"]
    units = [{"label": "dog", "clip": {"label": "dog"}}, {"label": "cat", "clip": {"label": "dog"}},
             {"label": "tree", "clip": {"label": "dog"}}, {"label": None, "clip": {"label": "cat"}}]
    assert agreement(units, ["dog", "cat"]) == {"compared": 2, "agree": 1, "fraction": 0.5}
    assert cosine(torch.tensor([[3.0, 4.0]]), torch.tensor([[4.0, 3.0], [0.0, 2.0]])).tolist()[0] == \
        pytest.approx([24 / 25, 0.8])


@pytest.mark.parametrize("case, needle", [
    ("empty", "holds no concepts; give one concept a line"),
    ("binary", "is not a text file (it holds NUL bytes)"),
    ("latin1", "is not UTF-8 text"),
    ("labeler", "argument --labeler: invalid choice: 'clipp'"),
    ("extra", "--labeler clip needs the open_clip package: pip install 'dissect[clip]'"),
])
def test_bad_concepts_are_one_line_exit_2_before_any_work(capsys, tmp_path, monkeypatch, case, needle):
    f = tmp_path / "concepts.txt"
    f.write_bytes({"empty": b"\n  \n", "binary": b"\x89PNG\r\n\x1a\n\0\0", "latin1": "caf\xe9\n".encode("latin-1")}
                  .get(case, b"dog\n"))
    if case == "extra":
        monkeypatch.setitem(sys.modules, "open_clip", None)
    out = tmp_path / "site"
    args = ["report", "--model", "toy", "--weights", "none", "--out", str(out), "--quiet",
            "--labeler", "clipp" if case == "labeler" else "clip", "--concepts", str(f)]
    if case == "labeler":
        with pytest.raises(SystemExit) as exc:
            main(args)
        code = exc.value.code
    else:
        code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    if case != "labeler":
        assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_default_labeler_needs_no_extra(monkeypatch):
    for name in ("open_clip", "timm", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)
    LabelerOptions().validate()   # iou only: nothing to import
    with pytest.raises(DissectError, match="pip install 'dissect\\[clip\\]'"):
        LabelerOptions(labelers=("iou", "clip")).validate()


def test_clip_labels_in_a_report(tmp_path, toyworld_small, tiny_clip_arch, capsys):
    pytest.importorskip("open_clip")
    out, cache = tmp_path / "site", tmp_path / "cache"
    args = ["report", "--model", "toy", "--data", str(toyworld_small), "--data-size", "60", "--out", str(out),
            "--cache-dir", str(cache), "--no-ablation", "--no-shipped-comparisons", "--bootstrap", "0", "--layer", "conv4_2",
            "--quiet", "--reproducible", "--labeler", "both", "--concepts", "probe",
            "--clip-model", f"openclip:{tiny_clip_arch}", "--clip-weights", "none", "--clip-top-k", "20",
            "--workers", "0"]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads((out / "toy" / "results.json").read_text())
    params = res["params"]["clip_labels"]
    assert params["concepts"]["source"] == "the probe set's label names" and params["top_k"] == 20
    assert (params["a"], params["lambda"], params["num_images"]) == (10.0, 1.0, 60)
    concepts_all = set()
    for layer in res["layers"]:
        for u in layer["units"]:
            if u["clip"] is None:
                assert u["dead"] or u.get("invalid")
                continue
            concepts_all.add(u["clip"]["label"])
            scores = [t["score"] for t in u["clip"]["top"]]
            assert u["clip"]["label"] == u["clip"]["top"][0]["concept"] and scores == sorted(scores, reverse=True)
            assert len(scores) == 5
        agree = layer["clip"]["agreement"]
        both = [u for u in layer["units"] if u["label"] and u["clip"]]
        assert agree["compared"] == len(both) and agree["agree"] == sum(u["label"] == u["clip"]["label"] for u in both)
    # the labels are the probe set's names; the three caches are there, under keys
    assert concepts_all and all(not c.endswith("-c") for c in concepts_all)
    kinds = sorted(p.name.split("-")[0] for p in (cache / "clip").iterdir())
    assert kinds == ["images", "means", "texts"]
    # the labels are SoftWPMI's over the cached pieces, recomputed here from them
    from dissect.data.broden import BrodenIndex
    from dissect.labelers.clip import probe_concepts
    piece = {k: torch.load(next((cache / "clip").glob(f"{k}-*.pt")), weights_only=True) for k in kinds}
    read = piece["means"]["read"]
    assert int(read.sum()) == 60
    concepts = probe_concepts(type("D", (), {"index": BrodenIndex(toyworld_small)})())
    layer = res["layers"][0]
    scores = soft_wpmi(cosine(piece["images"][read], piece["texts"]), piece["means"][layer["name"]][read],
                       SoftWPMIParams(top_k=20))
    for u in layer["units"]:
        if u["clip"] is not None:
            best = int(torch.argmax(scores[u["unit"]]))
            assert u["clip"]["label"] == concepts[best]
            assert u["clip"]["score"] == pytest.approx(float(scores[u["unit"], best]), abs=1e-4)
    # the pages show both labels and the agreement
    layer_page = (out / "toy" / res["layers"][0]["slug"] / "index.html").read_text()
    assert "open-vocabulary" in layer_page.lower()


def test_clip_labels_over_any_image_folder(tmp_path, toyworld_small, tiny_clip_arch, monkeypatch):
    """No probe set, no segmentation: a plain folder of images and a word list."""
    import shutil

    from dissect.labelers.clip import clip_labels_for_folder
    from dissect.models import load_model
    from dissect.segmenters import registry

    monkeypatch.setattr(registry, "load_segmenter", lambda *a, **k: pytest.fail("a segmenter was loaded"))
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, src in enumerate(sorted((toyworld_small / "images").glob("*.png"))[:30]):
        shutil.copy(src, folder / ("sub" if i % 2 else ".") / f"p{i}.png")
    words = tmp_path / "words.txt"
    words.write_text("sky\ngrass\nwater\nred\nbuilding\n")
    loaded = load_model("toy", input_size=64)
    opts = LabelerOptions(labelers=("clip",), concepts=str(words), clip_model=f"openclip:{tiny_clip_arch}",
                          clip_weights="none", softwpmi=SoftWPMIParams(top_k=10))
    ov = clip_labels_for_folder(loaded, ["conv4_2"], folder, opts, tmp_path / "cache")
    labels = ov.labels["features.18"]
    assert ov.params["num_images"] == 30 and ov.concepts == ["sky", "grass", "water", "red", "building"]
    assert len(labels) == 128 and all(lab["label"] in ov.concepts for lab in labels)   # conv4_2: 128 units
    again = clip_labels_for_folder(loaded, ["conv4_2"], folder, opts, tmp_path / "cache")   # from the cache
    assert again.labels == ov.labels and len(list((tmp_path / "cache" / "clip").iterdir())) == 3
    with pytest.raises(DissectError, match="needs a probe set"):
        clip_labels_for_folder(loaded, ["conv4_2"], folder, LabelerOptions(labelers=("clip",), concepts="probe",
                               clip_model=f"openclip:{tiny_clip_arch}", clip_weights="none"), tmp_path / "cache")
