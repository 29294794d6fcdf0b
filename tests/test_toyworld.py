import csv
import json

import numpy as np
import pytest
from PIL import Image

from dissect.data import toyworld as tw
from dissect.data import toyworld_probe as twp
from dissect.segmenters.color import name_colors
from dissect.errors import DissectError

L = tw.LABEL_NUMBER
SAMPLE = [tw.render_scene(s, 64) for s in range(120)]


def test_label_table():
    nums = [n for n, _, _ in tw.LABELS]
    assert nums == list(range(1, len(nums) + 1))
    assert len({name for _, name, _ in tw.LABELS}) == len(nums)
    assert {c for _, _, c in tw.LABELS} == set(tw.CATEGORIES)
    assert tw.CATEGORIES == ["color", "object", "part", "material", "scene", "texture"]
    assert [name for _, name, c in tw.LABELS if c == "scene"] == [
        f"{s}-s" for s in tw.SCENE_CLASSES]
    for name in ["red-c", "sky", "tree", "door", "brick", "wood", "striped", "forest-s"]:
        assert name in L


@pytest.mark.parametrize("size", [64, 112, 224])
def test_shapes_and_determinism(size):
    a, b = tw.render_scene(7, size), tw.render_scene(7, size)
    assert a.image.shape == (size, size, 3) and a.image.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    assert set(a.layers) == set(tw.PIXEL_CATEGORIES)
    for cat, lab in a.layers.items():
        assert lab.shape == (size, size) and lab.dtype == np.int32
        np.testing.assert_array_equal(lab, b.layers[cat])
        cats = {tw.LABEL_CATEGORY[int(v)] for v in np.unique(lab) if v}
        assert cats <= {cat}
    assert (a.scene_class, a.night) == (b.scene_class, b.night)
    assert not np.array_equal(a.image, tw.render_scene(8, size).image)


def test_same_scene_at_every_size():
    small, big = tw.render_scene(3, 64), tw.render_scene(3, 224)
    assert small.scene_class == big.scene_class and small.night == big.night
    assert small.objects == big.objects


def test_labels_consistent_with_pixels():
    for sc in SAMPLE:
        size = sc.image.shape[0]
        obj, part = sc.layers["object"], sc.layers["part"]
        assert (obj > 0).all(), "every pixel shows some object"
        rows = np.nonzero(obj == L["sky"])[0]
        assert rows.max() < round(sc.horizon * size)
        ground = np.isin(obj, [L["grass"], L["sand"], L["road"], L["water"]])
        assert np.nonzero(ground)[0].min() >= round(sc.horizon * size)
        for pname, parent in tw.PART_PARENT.items():
            m = part == L[pname]
            if pname != "window":
                assert (obj[m] == L[parent]).all(), pname
            else:
                assert np.isin(obj[m], [L["house"], L["car"]]).all()
        assert (obj[part == L["door"]] == L["house"]).all()
        assert (sc.layers["material"][part == L["door"]] == L["wood"]).all()
        assert (obj[sc.layers["material"] == L["brick"]] == L["house"]).all()
        np.testing.assert_array_equal(
            sc.layers["color"], tw.COLOR_LABEL_NUMBERS[name_colors(sc.image)])


def test_surfaces_are_not_flat():
    for sc in SAMPLE[:10]:
        sky = sc.image[sc.layers["object"] == L["sky"]]
        assert len(np.unique(sky, axis=0)) > len(sky) // 10


def test_every_concept_appears():
    seen = set()
    for sc in SAMPLE:
        for lab in sc.layers.values():
            seen.update(int(v) for v in np.unique(lab))
    for num, name, cat in tw.LABELS:
        if cat in ("object", "part", "material", "texture"):
            assert num in seen, name
    classes = {sc.scene_class for sc in SAMPLE}
    assert classes == set(range(len(tw.SCENE_CLASSES)))
    nights = sum(sc.night for sc in SAMPLE)
    assert 0.1 * len(SAMPLE) < nights < 0.45 * len(SAMPLE)


def test_scene_composition_rules():
    for sc in SAMPLE:
        objs = set(sc.objects)
        name = sc.scene_name
        if name == "forest":
            assert "tree" in objs and "house" not in objs
        if name == "street":
            assert {"road", "house", "car"} <= objs
        if name == "beach":
            assert {"water", "sand"} <= objs
        if name == "lake":
            assert {"water", "grass", "mountain"} <= objs
        if name == "field":
            assert "fence" in objs
        if name == "village":
            assert "house" in objs
        if sc.night:
            assert "sun" not in objs


def test_render_batch():
    imgs, cls = tw.render_batch([1, 2, 3], size=32)
    assert imgs.shape == (3, 32, 32, 3) and imgs.dtype == np.uint8
    assert cls.dtype == np.int64
    np.testing.assert_array_equal(imgs[1], tw.render_scene(2, 32).image)
    assert cls[2] == tw.render_scene(3, 32).scene_class


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _decode(path):
    a = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1]


def test_write_toyworld(tmp_path):
    out = tmp_path / "toy"
    n, seed = 12, 5
    got = twp.write_toyworld(out, n=n, seed=seed, image_size=48, progress=False)
    assert got == out
    index = _read_csv(out / "index.csv")
    assert list(index[0].keys()) == ["image", "split", "ih", "iw", "sh", "sw", "color", "object",
                                     "part", "material", "scene", "texture"]
    assert len(index) == n
    assert [r["split"] for r in index].count("val") == round(n * 0.2)
    for i, row in enumerate(index):
        sc = tw.render_scene(tw.image_seed(seed, i), 48)
        assert row["image"] == f"toy-{i:05d}.png"
        assert (int(row["ih"]), int(row["iw"]), int(row["sh"]), int(row["sw"])) == (48,) * 4
        img = np.asarray(Image.open(out / "images" / row["image"]).convert("RGB"))
        np.testing.assert_array_equal(img, sc.image)
        assert int(row["scene"]) == L[f"{tw.SCENE_CLASSES[sc.scene_class]}-s"]
        for cat in tw.PIXEL_CATEGORIES:
            files = row[cat].split(";")
            assert files == [f"toy-{i:05d}_{cat}.png"]
            np.testing.assert_array_equal(_decode(out / "images" / files[0]), sc.layers[cat])

    labels = _read_csv(out / "label.csv")
    assert list(labels[0].keys()) == ["number", "name", "category", "frequency", "coverage",
                                      "syns"]
    assert [(int(r["number"]), r["name"]) for r in labels] == [
        (num, name) for num, name, _ in tw.LABELS]
    by_name = {r["name"]: r for r in labels}
    sky = by_name["sky"]
    assert sky["category"] == f"object({n})" and int(sky["frequency"]) == n
    assert 0.2 < float(sky["coverage"]) < 0.7
    scene_freq = sum(int(by_name[f"{s}-s"]["frequency"]) for s in tw.SCENE_CLASSES)
    assert scene_freq == n

    cats = _read_csv(out / "category.csv")
    assert [c["name"] for c in cats] == tw.CATEGORIES
    assert list(cats[0].keys()) == ["name", "first", "last", "count", "frequency"]
    for c in cats:
        rows = _read_csv(out / f"c_{c['name']}.csv")
        assert list(rows[0].keys()) == ["code", "number", "name", "frequency", "coverage"]
        assert [int(r["code"]) for r in rows] == list(range(1, len(rows) + 1))
        assert int(c["count"]) == len(rows)
        assert int(c["first"]) == int(rows[0]["number"])
        assert int(c["last"]) == int(rows[-1]["number"])
        for r in rows:
            assert by_name[r["name"]]["frequency"] == r["frequency"]
            assert tw.LABEL_CATEGORY[int(r["number"])] == c["name"]

    manifest = json.loads((out / "toyworld.json").read_text())
    assert manifest["n"] == n and manifest["seed"] == seed and manifest["image_size"] == 48
    # no temp dirs left behind
    assert [p.name for p in tmp_path.iterdir()] == ["toy"]


def test_write_broden_is_byte_identical_and_cached(tmp_path, monkeypatch):
    a = twp.write_toyworld(tmp_path / "a", n=4, seed=1, image_size=32, progress=False)
    b = twp.write_toyworld(tmp_path / "b", n=4, seed=1, image_size=32, progress=False)
    for p in sorted(a.rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (b / p.relative_to(a)).read_bytes(), p.name
    stamp = (a / "index.csv").stat().st_mtime_ns

    def boom(*args, **kw):
        raise AssertionError("cache hit must not render")

    monkeypatch.setattr(tw, "render_scene", boom)
    assert twp.write_toyworld(a, n=4, seed=1, image_size=32, progress=False) == a
    assert (a / "index.csv").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # different parameters: regenerated in place
    twp.write_toyworld(a, n=3, seed=1, image_size=32, progress=False)
    assert len(_read_csv(a / "index.csv")) == 3
    assert json.loads((a / "toyworld.json").read_text())["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_scenes_drawn_by_several_processes_are_the_same_files(tmp_path, monkeypatch):
    monkeypatch.setattr(twp, "usable_cpus", lambda: 2)
    n = 2 * twp.CHUNK + 5                              # three chunks, the last one short
    many = twp.write_toyworld(tmp_path / "many", n=n, seed=3, image_size=16, progress=False)
    monkeypatch.setattr(twp, "usable_cpus", lambda: 1)
    one = twp.write_toyworld(tmp_path / "one", n=n, seed=3, image_size=16, progress=False)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) > 5 * n
    assert files == sorted(p.relative_to(many) for p in many.rglob("*") if p.is_file())
    for f in files:
        assert (one / f).read_bytes() == (many / f).read_bytes(), f


def test_write_broden_refuses_foreign_dir(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DissectError) as e:
        twp.write_toyworld(foreign, n=2, seed=0, image_size=32, progress=False)
    assert "\n" not in str(e.value)
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    # an empty existing directory is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    twp.write_toyworld(empty, n=2, seed=0, image_size=32, progress=False)
    assert (empty / "index.csv").is_file()
