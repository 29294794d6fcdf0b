"""The report site: build it from synthetic results, then read it back like a browser."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from dissect.errors import DissectError
from dissect.site import write_site
from shared_support import visible_text

XSS = "<script>alert(1)</script>"
HOSTILE_MODEL = 'a"b<c>'
CATEGORIES = ["object", "part", "color", "weird&cat"]
TILE, GAP, TOP_K = 24, 3, 4


def _strip(path: Path, seed: int) -> None:
    """A strip of TOP_K colored tiles separated by white gaps, like the real ones."""
    width = TOP_K * TILE + (TOP_K - 1) * GAP
    img = Image.new("RGB", (width, TILE), "white")
    for k in range(TOP_K):
        color = ((seed * 37 + k * 50) % 200, (seed * 11) % 200, (k * 60) % 200)
        img.paste(Image.new("RGB", (TILE, TILE), color), (k * (TILE + GAP), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)


def _unit(layer_slug: str, u: int, label: str | None, category: str | None, iou: float, *, dead=False) -> dict:
    strip = f"units/{layer_slug}/unit-{u:04d}.jpg"
    tops = [] if dead else [
        {"name": label, "category": category, "iou": iou},
        {"name": "sky", "category": "object", "iou": round(iou / 2, 6)},
    ]
    by_cat = {} if dead else {category: {"name": label, "iou": iou}, "color": {"name": "red", "iou": 0.01}}
    return {
        "unit": u, "label": label, "category": category, "iou": iou, "detector": iou > 0.04,
        "threshold": 1.5 + u, "active_fraction": 0.0049, "max_activation": 5.25, "dead": dead,
        "top_concepts": tops, "top_by_category": by_cat,
        "top_images": [{"index": 17 + k, "image": f"images/toy-{17 + k:05d}.png", "max_activation": 5.0 - k}
                       for k in range(TOP_K)],
        "strip": strip,
    }


def make_results(name: str = HOSTILE_MODEL, slug: str = "toy") -> dict:
    specs = {
        "features.3": [("tree", "object", 0.23), ("wheel", "part", 0.11), (XSS, "weird&cat", 0.09),
                       ("tree", "object", 0.05), (None, None, 0.0), ("red", "color", 0.02)],
        "features.7": [("sky", "object", 0.31), ("leg", "part", 0.07), ("grass", "object", 0.12),
                       ("blue", "color", 0.044), ("wheel", "part", 0.01), ("sky", "object", 0.2)],
    }
    layers = []
    for li, (lname, units) in enumerate(specs.items()):
        us = [_unit(lname, i, lab, cat, iou, dead=lab is None) for i, (lab, cat, iou) in enumerate(units)]
        det = [u for u in us if u["detector"]]
        layers.append({
            "name": lname, "alias": f"conv{li + 1}" if li == 0 else None, "slug": lname,
            "num_units": len(us), "activation_shape": [len(us), 8, 8],
            "summary": {
                "detectors": len(det), "unique_concepts": len({u["label"] for u in det}),
                "detectors_by_category": {}, "unique_by_category": {},
                "iou_histogram": {"edges": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35],
                                  "counts": [2, 1, 1, 0, 1, 0, 1]},
                "dead_units": sum(u["dead"] for u in us),
            },
            "units": us,
        })
    return {
        "schema": "dissect.results", "schema_version": 1,
        "model": {"name": name, "slug": slug, "kind": "classifier", "weights": "builtin:toy",
                  "weights_sha256": "ab" * 32, "weights_file_sha256": None, "num_parameters": 1234567,
                  "input_size": 64, "class_names": ["beach", XSS]},
        "probe": {"name": "toyworld", "path": "/data/toyworld", "index_sha256": "cd" * 32, "num_images": 200,
                  "num_skipped": 1, "skipped": [f"images/{XSS}.jpg"], "label_size": [64, 64],
                  "categories": CATEGORIES, "num_concepts": 40},
        "params": {"quantile": 0.005, "quantile_space": "activation", "iou_threshold": 0.04, "top_k": TOP_K,
                   "upsample": "bilinear", "batch_size": 64, "seed": 1, "image_size": 64},
        "provenance": {"tool": "dissect", "tool_version": "0.1.0", "torch_version": "2.4.0", "python": "3.11.7",
                       "device": "cpu", "command": "dissect report --out site/", "created": "2026-11-22T10:00:00Z"},
        "layers": layers,
    }


def make_run(tmp_path: Path, name: str = HOSTILE_MODEL, slug: str = "toy") -> tuple[dict, Path]:
    run_dir = tmp_path / f"run-{slug}"
    results = make_results(name, slug)
    for layer in results["layers"]:
        for u in layer["units"]:
            _strip(run_dir / u["strip"], u["unit"] + 7 * len(layer["name"]))
    return results, run_dir


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.imgs: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.refs.append(a[key])
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def site(tmp_path):
    results, run_dir = make_run(tmp_path)
    out = write_site(tmp_path / "site", [(results, run_dir)], notes_md=f"# Findings\n\nTrees *abound*. {XSS}\n\n<img src=x onerror=alert(2)>")
    return out, results


def test_layout(site):
    out, _ = site
    for rel in ["index.html", ".nojekyll", ".dissect-site", "assets/style.css", "assets/site.js",
                "assets/plotly.min.js", "toy/index.html", "toy/results.json", "toy/provenance.json",
                "toy/features.3/index.html", "toy/features.3/units.csv", "toy/features.3/unit-0000.html",
                "toy/features.7/unit-0005.html", "toy/features.3/img/unit-0000.jpg",
                "toy/features.3/img/unit-0000-thumb.jpg"]:
        assert (out / rel).is_file(), rel
    marker = json.loads((out / ".dissect-site").read_text())
    assert marker["models"] == ["toy"] and marker["tool"] == "dissect"
    assert [p.relative_to(out).as_posix() for p in out.rglob("plotly.min.js")] == ["assets/plotly.min.js"]
    assert not list(out.parent.glob(".site.*")), "temporary folders left behind"


def test_links_resolve_and_stay_inside(site):
    out, _ = site
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 1 + 1 + 2 + 12
    root = out.resolve()
    for page in pages:
        parsed = _parse(page)
        for ref in parsed.refs:
            assert not re.match(r"^(https?:)?//", ref), f"{page}: external {ref}"
            assert not ref.startswith(("/", "data:", "javascript:")), f"{page}: {ref}"
            parts = urlsplit(ref)
            if not parts.path:
                assert parts.fragment in parsed.ids, f"{page}: dangling anchor {ref}"
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            assert target.is_file(), f"{page}: broken link {ref}"
            assert root in target.parents, f"{page}: {ref} leaves the site"
            if parts.fragment and target.suffix == ".html":
                assert parts.fragment in _parse(target).ids, f"{page}: dangling anchor {ref}"
        text = page.read_text(encoding="utf-8")
        assert "fetch(" not in text and "XMLHttpRequest" not in text
        assert ("plotly.min.js" in text) == (page == out / "toy" / "index.html"), page
    js = (out / "assets" / "site.js").read_text()
    assert "fetch(" not in js and "XMLHttpRequest" not in js and "http" not in js


def test_grid_cards(site):
    out, _ = site
    page = out / "toy" / "features.3" / "index.html"
    parsed = _parse(page)
    assert len(parsed.imgs) == 6
    for img in parsed.imgs:
        assert img["loading"] == "lazy" and img["alt"].startswith("unit ")
        with Image.open(page.parent / img["src"]) as im:
            assert (int(img["width"]), int(img["height"])) == im.size
            assert im.height == 48 and im.format == "JPEG"
    text = page.read_text()
    assert 'alt="unit 0 top images: tree"' in text
    assert 'class="card cat-none dead"' in text and 'alt="unit 4 top images: none"' in text
    for control in ('<select name="sort">', '<select name="cat">', 'type="checkbox" name="det"', 'type="search"'):
        assert control in text
    # The thumbnail is the strip's first tiles (all 4 of them here), not a squashed strip.
    with Image.open(page.parent / "img" / "unit-0000-thumb.jpg") as im:
        assert im.width == round((TOP_K * TILE + (TOP_K - 1) * GAP) * 48 / TILE)


def test_hostile_strings_escaped(site):
    out, _ = site
    raw = [XSS, HOSTILE_MODEL, "onerror", "alert(2)", "weird&cat"]
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for s in raw:
            assert s not in text, f"{page} holds raw {s!r}"
    overview = (out / "toy" / "index.html").read_text()
    assert "a&#34;b&lt;c&gt;" in overview
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (out / "toy" / "features.3" / "unit-0002.html").read_text()
    assert "<h1>Findings</h1>" in overview and "<em>abound</em>" in overview
    assert "weird&amp;cat" in (out / "toy" / "features.3" / "index.html").read_text()
    assert "a&#34;b&lt;c&gt;" in (out / "index.html").read_text()


def test_results_json_and_csv(site):
    out, results = site
    text = (out / "toy" / "results.json").read_text(encoding="utf-8")
    back = json.loads(text)
    expected = copy.deepcopy(results)
    for layer in expected["layers"]:
        for u in layer["units"]:
            u["strip"] = f"{layer['slug']}/img/unit-{u['unit']:04d}.jpg"
    assert back == expected
    assert text == json.dumps(back, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    for layer in back["layers"]:  # the site's model folder works as a run folder
        for u in layer["units"]:
            assert (out / "toy" / u["strip"]).is_file()
    with open(out / "toy" / "features.3" / "units.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert list(rows[0])[:9] == ["unit", "label", "category", "iou", "detector", "threshold",
                                 "active_fraction", "max_activation", "dead"]
    assert rows[0]["label"] == "tree" and rows[0]["detector"] == "true" and rows[0]["top_object"] == "tree"
    assert rows[2]["label"] == XSS and rows[4]["dead"] == "true" and rows[4]["label"] == ""


def test_unit_page(site):
    out, _ = site
    page = out / "toy" / "features.3" / "unit-0001.html"
    text = page.read_text()
    assert 'href="unit-0000.html"' in text and 'href="unit-0002.html"' in text and 'href="index.html"' in text
    assert "wheel" in text and "0.110" in text and "q = 0.005" in text
    first = (out / "toy" / "features.3" / "unit-0000.html").read_text()
    assert 'rel="prev"' not in first and 'rel="next"' in first
    img = [i for i in _parse(page).imgs][0]
    assert img["src"] == "img/unit-0001.jpg"
    assert (page.parent / img["src"]).read_bytes() == (
        Path(page.parents[3]) / "run-toy" / "units" / "features.3" / "unit-0001.jpg").read_bytes()


def test_top_images_are_named_by_the_users_files(tmp_path):
    """A top image's own name (``source``: an image folder's original file) is what the unit
    page shows, escaped, with the probe file beside it; results written before ``source``
    show the probe file."""
    results, run_dir = make_run(tmp_path)
    u = results["layers"][0]["units"][1]
    for k, t in enumerate(u["top_images"]):
        t["source"] = f"holiday/{XSS}-{k}.jpg" if k == 0 else f"holiday/astronaut {k}.jpg"
    out = write_site(tmp_path / "site", [(results, run_dir)])
    text = (out / "toy" / "features.3" / "unit-0001.html").read_text()
    assert XSS not in text and "<code>holiday/&lt;script&gt;alert(1)&lt;/script&gt;-0.jpg</code>" in text
    strip = _parse(out / "toy" / "features.3" / "unit-0001.html").imgs[0]
    assert "holiday/astronaut 1.jpg, holiday/astronaut 2.jpg" in strip["alt"]
    assert "holiday/astronaut 3.jpg" in strip["title"]
    assert "<code>holiday/astronaut 2.jpg</code> <span class=\"muted\">(probe file <code>images/toy-00019.png</code>)" in text
    old = (out / "toy" / "features.3" / "unit-0000.html").read_text()   # no source: the probe file
    assert "<code>images/toy-00017.png</code></td>" in old and "probe file" not in old


def test_index_sentences_are_spaced(tmp_path):
    """The site index reads "2 models in this report. Compare them: ..." (a space between
    the sentences, whatever the template's line breaks)."""
    runs = [make_run(tmp_path, name=slug, slug=slug) for slug in ("a", "b")]
    out = write_site(tmp_path / "site", runs)

    text = visible_text(out / "index.html", hidden=())
    assert "2 models in this report. Compare them: unique detectors" in text, text[:400]
    assert not re.search(r"[a-z]\.[A-Z]", text)


def test_deterministic(tmp_path):
    results, run_dir = make_run(tmp_path)
    a = write_site(tmp_path / "a", [(results, run_dir)], notes_md="hi")
    b = write_site(tmp_path / "b", [(copy.deepcopy(results), run_dir)], notes_md="hi")
    assert _tree_hashes(a) == _tree_hashes(b)
    again = write_site(tmp_path / "a", [(results, run_dir)], notes_md="hi")  # rebuild in place
    assert _tree_hashes(again) == _tree_hashes(b)
    assert str(tmp_path) not in "".join(p.read_text() for p in a.rglob("*.html"))


def test_reproducible_drops_created(tmp_path):
    results, run_dir = make_run(tmp_path)
    out = write_site(tmp_path / "s", [(results, run_dir)], reproducible=True)
    assert json.loads((out / "toy" / "results.json").read_text())["provenance"]["created"] is None
    assert "2026-11-22" not in (out / "toy" / "index.html").read_text()
    assert results["provenance"]["created"] == "2026-11-22T10:00:00Z"  # input untouched


def test_foreign_folder_refused(tmp_path):
    results, run_dir = make_run(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    before = _tree_hashes(out)
    with pytest.raises(DissectError, match="not empty and is not a dissect site"):
        write_site(out, [(results, run_dir)])
    assert _tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run-toy"]


def test_empty_folder_accepted(tmp_path):
    results, run_dir = make_run(tmp_path)
    (tmp_path / "empty").mkdir()
    assert (write_site(tmp_path / "empty", [(results, run_dir)]) / "toy" / "index.html").is_file()


def test_second_model_keeps_first(tmp_path):
    ra, da = make_run(tmp_path, name="alpha", slug="alpha")
    rb, db = make_run(tmp_path, name=HOSTILE_MODEL, slug="beta")
    out = write_site(tmp_path / "site", [(ra, da)])
    (out / "CNAME").write_text("example.org\n")  # a user's file in the site survives
    first = {k: v for k, v in _tree_hashes(out).items() if k.startswith("alpha/")}
    write_site(out, [(rb, db)])
    after = _tree_hashes(out)
    assert {k: v for k, v in after.items() if k.startswith("alpha/")} == first
    assert any(k.startswith("beta/") for k in after)
    assert (out / "CNAME").read_text() == "example.org\n"
    index = (out / "index.html").read_text()
    assert 'href="alpha/index.html"' in index and 'href="beta/index.html"' in index
    assert json.loads((out / ".dissect-site").read_text())["models"] == ["alpha", "beta"]
    assert [p.relative_to(out).as_posix() for p in out.rglob("plotly.min.js")] == ["assets/plotly.min.js"]
    # Rebuilding alpha replaces it and keeps beta.
    beta = {k: v for k, v in after.items() if k.startswith("beta/")}
    write_site(out, [(ra, da)])
    assert {k: v for k, v in _tree_hashes(out).items() if k.startswith("beta/")} == beta


def test_failed_build_leaves_old_site(tmp_path):
    results, run_dir = make_run(tmp_path)
    out = write_site(tmp_path / "site", [(results, run_dir)])
    before = _tree_hashes(out)
    broken = copy.deepcopy(results)
    broken["layers"][1]["units"][3]["strip"] = "units/missing.jpg"
    with pytest.raises(DissectError, match="cannot read unit image"):
        write_site(out, [(broken, run_dir)])
    assert _tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-toy", "site"]


def test_unsafe_slugs_stay_inside(tmp_path):
    results, run_dir = make_run(tmp_path)
    results["model"]["slug"] = "../escape"
    results["layers"][0]["slug"] = "../../x"
    out = write_site(tmp_path / "site", [(results, run_dir)])
    (slug,) = json.loads((out / ".dissect-site").read_text())["models"]
    assert "/" not in slug and (out / slug / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-toy", "site"]
    layer_slug = json.loads((out / slug / "results.json").read_text())["layers"][0]["slug"]
    assert "/" not in layer_slug and (out / slug / layer_slug / "index.html").is_file()
