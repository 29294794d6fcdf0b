"""Comparisons: several weights of one model, training snapshots, fine-tuning transitions,
the rotation experiment, and the comparison page, checked against each model's own results."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dissect.data.broden import BrodenDataset
from dissect.errors import DissectError
from dissect.experiments.compare_runs import members_for_report, probe_subset
from dissect.experiments.comparison import NO_LABEL, build_comparison, mean_live_iou, transitions
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.experiments.rotation import parse_rotations, random_rotation, rotate_layer, rotation_path
from dissect.models.loading import load_model
from dissect.models.registry import IMAGENET_MEAN, IMAGENET_STD
from dissect.models.series import expand_weights, steps_from_names, toy_comparison_weights
from dissect.models.weights import WEIGHTS_DIR
from dissect.segmenters.color import COLOR_NAMES, name_colors
from dissect.site.compare_page import compare_page

from test_site import make_results

LAST = "features.18"   # the toy classifier's conv4_2
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _recount(layer: dict) -> tuple[Counter, Counter]:
    """Detector units and unique detectors per category, counted from scratch."""
    det = [(u["category"], u["label"]) for u in layer["units"] if u["detector"] and u["label"]]
    return Counter(c for c, _ in det), Counter(c for c, _ in set(det))


# ---------------------------------------------------------------------------------- pure parts

def test_steps_from_names_and_globs(tmp_path):
    assert steps_from_names(["ckpt-100.pth", "ckpt-20.pth", "ckpt-3000.pth"]) == [100, 20, 3000]
    assert steps_from_names(["a/resnet50-ep1.pth", "a/resnet50-ep2.pth"]) == [1, 2]   # the last number counts
    assert steps_from_names(["a.pth", "b.pth"]) is None
    assert steps_from_names(["run1-100.pth", "run2-100.pth"]) is None                   # differ elsewhere
    assert steps_from_names(["ckpt-1.pth"]) is None
    for n in (3, 1, 2):
        (tmp_path / f"s-{n}.safetensors").write_bytes(b"")
    assert [Path(p).name for p in expand_weights([str(tmp_path / "s-*.safetensors")])] == [
        "s-1.safetensors", "s-2.safetensors", "s-3.safetensors"]
    with pytest.raises(DissectError, match="matches no file"):
        expand_weights([str(tmp_path / "nothing-*.pth")])
    with pytest.raises(DissectError, match="twice"):
        expand_weights([str(tmp_path / "s-1.safetensors")] * 2)


def test_parse_rotations():
    assert parse_rotations("1,0,0.5") == (0.0, 0.5, 1.0)
    for bad in ("", "x", "1.5", "-0.1"):
        with pytest.raises(DissectError, match="--rotate"):
            parse_rotations(bad)


@pytest.mark.parametrize("n", [2, 7, 64])
def test_rotation_path_goes_from_identity_to_the_random_rotation(n):
    q = random_rotation(n, seed=3)
    assert np.allclose(q @ q.T, np.eye(n), atol=1e-10) and np.linalg.det(q) == pytest.approx(1.0)
    assert np.array_equal(random_rotation(n, seed=3), q) and not np.allclose(random_rotation(n, seed=4), q)
    r0, r_half, r1 = rotation_path(q, [0.0, 0.5, 1.0])
    assert torch.equal(r0, torch.eye(n))                                      # exactly the identity
    assert torch.allclose(r1, torch.from_numpy(q).float(), atol=1e-4)          # R(1) = Q
    assert torch.allclose(r_half @ r_half, r1, atol=1e-4)                     # halfway along the geodesic
    for r in (r_half, r1):
        assert torch.allclose(r @ r.T, torch.eye(n), atol=1e-5)


def _results(slug: str, labels: list[tuple[str | None, str | None, float]], **changes) -> dict:
    r = make_results(name=slug, slug=slug)
    r["layers"] = r["layers"][:1]
    r["layers"][0]["units"] = [
        {**r["layers"][0]["units"][0], "unit": i, "label": lab, "category": cat, "iou": iou, "detector": iou > 0.04,
         "dead": False} for i, (lab, cat, iou) in enumerate(labels)]
    for key, value in changes.items():
        part, field = key.split("__")
        r[part][field] = value
    return r


BEFORE = [("tree", "object", 0.2), ("tree", "object", 0.1), ("red", "color", 0.05), (None, None, 0.0),
          ("sky", "object", 0.03), ("wheel", "part", 0.09)]
AFTER = [("tree", "object", 0.3), ("house", "object", 0.1), (None, None, 0.0), ("door", "part", 0.2),
         ("sky", "object", 0.02), ("wheel", "part", 0.05)]


def test_transitions_count_every_label_pair():
    a, b = _results("a", BEFORE), _results("b", AFTER)
    t = transitions(a["layers"][0], b["layers"][0])
    assert t["counts"] == {"kept": 2, "changed": 1, "gained": 1, "lost": 1, "none": 1}
    pairs = Counter()
    for ua, ub in zip(a["layers"][0]["units"], b["layers"][0]["units"]):
        pairs[(ua["label"] if ua["detector"] else NO_LABEL, ub["label"] if ub["detector"] else NO_LABEL)] += 1
    assert {(lk["source"], lk["target"]): lk["units"] for lk in t["links"]} == dict(pairs)
    assert [u["change"] for u in t["units"]] == ["kept", "changed", "lost", "gained", "none", "kept"]


def test_runs_on_other_probes_or_parameters_are_never_mixed():
    a = _results("a", BEFORE)
    b = _results("b", AFTER)
    other_q = _results("c", AFTER, params__quantile=0.01)
    other_probe = _results("d", AFTER, probe__index_sha256="ef" * 32)
    comp = build_comparison([a, b, other_q, other_probe])
    assert [[r["model"] for r in g["runs"]] for g in comp["groups"]] == [["a", "b"]]
    assert {r["model"] for r in comp["not_comparable"]["runs"]} == {"c", "d"}
    assert set(comp["not_comparable"]["differs"]) == {"params.quantile", "probe.index_sha256"}
    assert build_comparison([a, other_q]) is None                  # nothing comparable: no page
    assert build_comparison([a]) is None


# ------------------------------------------------------------------------------ the toy models

@pytest.fixture(scope="module")
def probe(toyworld_small):
    return BrodenDataset(toyworld_small, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_rotation_zero_gives_the_unrotated_results_exactly(probe, device):
    toy = load_model("toy")
    data = probe_subset(probe, 60)
    cfg = DissectConfig(batch_size=30, device=device)
    plain = dissect_layers(toy.module, [LAST], data, cfg, progress=False)[LAST]
    (identity,) = rotation_path(random_rotation(128, 0), [0.0])
    with rotate_layer(toy.module, LAST, identity):
        rotated = dissect_layers(toy.module, [LAST], data, cfg, progress=False)[LAST]
    assert torch.equal(plain.thresholds, rotated.thresholds)
    for k in plain.tally:
        assert torch.equal(torch.as_tensor(plain.tally[k]), torch.as_tensor(rotated.tally[k])), k
    assert summarize_layer(plain, data, cfg)["units"] == summarize_layer(rotated, data, cfg)["units"]
    # and a real rotation does change the layer: the hook is in place
    (full,) = rotation_path(random_rotation(128, 0), [1.0])
    with rotate_layer(toy.module, LAST, full):
        moved = dissect_layers(toy.module, [LAST], data, cfg, progress=False)[LAST]
    assert not torch.equal(plain.thresholds, moved.thresholds)


def test_a_full_rotation_dilutes_the_toy_classifiers_units(probe):
    """On the trained toy classifier the rotation's effect shows in how well units match
    their best concept, not in the unique-detector count, which the toy world's few
    detectable concepts saturate (docs/compare.md): under a full random rotation the mean IoU
    of the live units' best concepts falls at conv3_2 (by a sixth at least, with fewer
    detector units) and at conv4_2."""
    toy = load_model("toy")
    cfg = DissectConfig(batch_size=50)
    both = dissect_layers(toy.module, ["features.13", LAST], probe, cfg, progress=False)
    for layer, fall in (("features.13", 0.85), (LAST, 1.0)):
        plain = summarize_layer(both[layer], probe, cfg)
        (full,) = rotation_path(random_rotation(len(plain["units"]), 0), [1.0])
        with rotate_layer(toy.module, layer, full):
            moved = summarize_layer(dissect_layers(toy.module, [layer], probe, cfg, progress=False)[layer],
                                    probe, cfg)
        assert mean_live_iou(moved) < fall * mean_live_iou(plain), layer
        if layer == "features.13":
            assert _recount(moved)[0].total() < _recount(plain)[0].total()


class ColorCode(nn.Module):
    """Unit k is 1 (graded a little by brightness) exactly where the color namer names the
    pixel with color k: a perfectly axis-aligned layer, one concept per unit."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()

    def forward(self, x):
        rgb = ((x * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        names = torch.from_numpy(np.stack([name_colors(im) for im in rgb]))
        onehot = torch.nn.functional.one_hot(names, len(COLOR_NAMES)).permute(0, 3, 1, 2).float()
        return self.units(onehot * (1.0 + 0.1 * x.mean(1, keepdim=True)))


def test_a_rotation_lowers_the_unique_detectors_of_an_axis_aligned_layer(probe):
    """Ground truth for the rotation experiment: rotating a one-concept-per-unit code leaves
    units that each still pick one concept (their largest coefficient), but several pick the
    same one, so unique detectors fall, as the 2017 paper found for real networks."""
    data = probe_subset(probe, 60)
    cfg = DissectConfig(batch_size=30, quantile=0.02)
    unique = []
    for rot in rotation_path(random_rotation(len(COLOR_NAMES), 0), [0.0, 1.0]):
        net = ColorCode()
        with rotate_layer(net, "units", rot):
            stats = dissect_layers(net, ["units"], data, cfg, progress=False)["units"]
        unique.append(sum(_recount(summarize_layer(stats, data, cfg))[1].values()))
    assert unique[0] >= 6
    assert unique[1] < unique[0]


@pytest.fixture(scope="module")
def shipped_series(probe):
    """The toy's shipped snapshots and fine-tuned weights, with the trained weights, dissected
    side by side at its last layer on 100 toy-world images."""
    shipped, final_step, _ = toy_comparison_weights()
    if not shipped:
        pytest.skip("the toy classifier's snapshots are not shipped")
    trained = load_model("toy")
    members = [(trained, "trained", final_step, "model")] + [
        (load_model("toy", weights=str(w.path), progress=False), w.name, w.step, w.role) for w in shipped]
    data = probe_subset(probe, 100)
    return members_for_report(members, LAST, "conv4_2", data, DissectConfig(batch_size=50), {"test": 1},
                              None, progress=False, probe={"num_images": len(data)})


def test_shipped_snapshots_are_float16_and_recorded():
    record = json.loads((WEIGHTS_DIR / "toy_classifier_snapshots.json").read_text())
    assert record["command"].startswith("dissect train toy-classifier --seed 0 --train-size 6000 --epochs 14")
    assert record["snapshots"][0]["step"] == 0 and record["total_steps"] == 14 * 94
    from safetensors.torch import load_file
    for s in record["snapshots"]:
        assert {v.dtype for v in load_file(WEIGHTS_DIR / s["file"]).values()} == {torch.float16}
    assert record["shipped_run"]["same_epochs"] in (True, False)
    finetuned = json.loads((WEIGHTS_DIR / "toy_finetuned.json").read_text())
    assert finetuned["command"].startswith("dissect train toy-finetune")
    assert load_model("toy", weights=str(WEIGHTS_DIR / "toy_finetuned.safetensors")).class_names == \
        finetuned["class_names"]


def test_random_init_has_fewer_detectors_than_trained(shipped_series):
    by_step = {m["step"]: m for m in shipped_series if m["step"] is not None}
    init, trained = by_step[0]["layers"][0], by_step[max(by_step)]["layers"][0]
    assert sum(_recount(init)[0].values()) < sum(_recount(trained)[0].values())
    assert sum(_recount(init)[1].values()) < sum(_recount(trained)[1].values())


def test_finetuning_moves_units_to_other_concepts(shipped_series):
    trained = shipped_series[0]["layers"][0]
    tuned = next(m for m in shipped_series if m["role"] == "finetuned")["layers"][0]
    t = transitions(trained, tuned)
    assert sum(t["counts"].values()) == 128
    assert t["counts"]["changed"] + t["counts"]["gained"] + t["counts"]["lost"] > t["counts"]["kept"]


# --------------------------------------------------------------------------- reports and site

@pytest.mark.slow
def test_report_of_several_weights_and_its_comparison(tmp_path, toyworld_small):
    """Two weights in one report (each a section), the rotation, and the comparison page,
    every count checked against each model's own results.json."""
    from dissect import report
    snap0 = WEIGHTS_DIR / "toy_classifier_step_00000.safetensors"
    if not snap0.is_file():
        pytest.skip("the toy classifier's snapshots are not shipped")
    out = tmp_path / "site"
    report(model="toy", weights=[str(snap0), str(WEIGHTS_DIR / "toy_classifier.safetensors")],
           snapshot_steps=[0, 1316], data=str(toyworld_small), data_size=60, layers=["conv4_2"],
           ablation=False, rotate=(0.0, 1.0), out=out, cache_dir=tmp_path / "cache", progress=False,
           config=DissectConfig(top_k=3))
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["schema"] == "dissect.comparison" and comp["version"] == 1
    (group,) = comp["groups"]
    own = {s: json.loads((out / s / "results.json").read_text())
           for s in ("toy_classifier_step_00000", "toy_classifier")}
    for row in group["layers"]:
        layer = next(layer for layer in own[row["model"]]["layers"] if (layer["alias"] or layer["name"]) == row["layer"])
        units, unique = _recount(layer)
        assert {c: n for c, n in row["detectors_by_category"].items() if n} == dict(units)
        assert {c: n for c, n in row["unique_by_category"].items() if n} == dict(unique)
    (series,) = group["series"]
    assert [p["step"] for p in series["points"]] == [0, 1316]
    (tr,) = group["transitions"]
    a, b = (own[s]["layers"][0]["units"] for s in ("toy_classifier_step_00000", "toy_classifier"))
    pairs = Counter((ua["label"] if ua["detector"] else NO_LABEL, ub["label"] if ub["detector"] else NO_LABEL)
                    for ua, ub in zip(a, b))
    assert {(lk["source"], lk["target"]): lk["units"] for lk in tr["links"]} == dict(pairs)
    # the Sankey on the page: its link values are those pairs (units unlabeled on both sides left out)
    view = compare_page(comp, list(own.values()))
    sankey = view["groups"][0]["transitions"][0]["chart"]["data"][0]
    labels = sankey["node"]["label"]
    drawn = Counter()
    for s, t, v in zip(sankey["link"]["source"], sankey["link"]["target"], sankey["link"]["value"]):
        drawn[(labels[s], labels[t])] += v
    assert drawn == Counter({k: v for k, v in pairs.items() if k != (NO_LABEL, NO_LABEL)})
    # rotation 0 is the unrotated layer
    rot = own["toy_classifier"]["comparison"]["rotation"]
    units, unique = _recount(own["toy_classifier"]["layers"][0])
    assert rot["points"][0]["amount"] == 0.0
    assert {c: n for c, n in rot["points"][0]["unique_by_category"].items() if n} == dict(unique)
    assert rot["points"][0]["detectors"] == sum(units.values())
    live = [u["iou"] for u in own["toy_classifier"]["layers"][0]["units"] if not u["dead"]]
    assert rot["points"][0]["mean_iou"] == pytest.approx(sum(live) / len(live), abs=1e-6)
    html = (out / "compare.html").read_text()
    assert "Transitions" in html and "Training snapshots" in html and "Rotation" in html
    assert 'href="compare.html"' in (out / "index.html").read_text()


def test_bad_comparison_options_are_one_line_errors(tmp_path):
    from dissect.cli import main
    assert main(["report", "--model", "toy", "--weights", str(tmp_path / "none-*.pth"), "--out",
                 str(tmp_path / "s")]) == 2
    assert main(["report", "--model", "toy", "--weights", "none", "--snapshot-steps", "1,2", "--out",
                 str(tmp_path / "s")]) == 2
    assert main(["report", "--rotate", "0,2", "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_the_compare_page_names_what_is_not_comparable(tmp_path):
    from test_site import make_run
    from dissect.site import write_site
    runs = []
    for slug, changes in (("a", {}), ("b", {}), ("c", {"quantile": 0.01})):
        results, run_dir = make_run(tmp_path, name=slug, slug=slug)
        results["params"].update(changes)
        runs.append((results, run_dir))
    write_site(tmp_path / "site", runs)
    html = (tmp_path / "site" / "compare.html").read_text()
    assert "Not comparable" in html and "params.quantile" in html
    comp = json.loads((tmp_path / "site" / "comparison.json").read_text())
    assert [r["model"] for r in comp["groups"][0]["runs"]] == ["a", "b"]
    # the counts on the page are the models' own, recounted
    for row in comp["groups"][0]["layers"]:
        layer = next(layer for layer in runs[0][0]["layers"] if (layer.get("alias") or layer["name"]) == row["layer"])
        assert {c: n for c, n in row["unique_by_category"].items() if n} == dict(_recount(layer)[1])
    # a later run that leaves only one model drops the page
    write_site(tmp_path / "site2", runs[:1])
    assert not (tmp_path / "site2" / "compare.html").exists()
