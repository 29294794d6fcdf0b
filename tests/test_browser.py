"""The report site in a real browser: headless Chromium opens every page, from ``file://``
and from a static server under a sub-path (as on GitHub Pages), and fails on console
errors, failed requests, requests leaving the folder, images that did not load, broken
links and charts that did not render. It also drives the unit grid's sort, filter and
search by keyboard, checks the phone layout, measures the overview's first paint, and
keeps screenshots in ``artifacts/screenshots/`` (``DISSECT_ARTIFACTS`` overrides).

One small site is built per module (the toy classifier's conv3_2 on 120 toy-world images,
top-5 images, a small ablation; any toy generator; and a synthetic model full of hostile
strings); no test needs the network.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from pathlib import Path
from urllib.parse import urldefrag

import pytest

from browser_support import ARTIFACTS, CHROMIUM_ARGS, SiteBrowser, StaticServer, require_browser
from shared_support import visible_text

SUBPATH = "pages/dissect-demo"        # the site is served at http://127.0.0.1:PORT/pages/dissect-demo/
# The first contentful paint of the page now open, in ms since navigation (None if none in 5 s).
_FCP_JS = """() => new Promise(res => {
  new PerformanceObserver(l => { for (const e of l.getEntries())
    if (e.name === 'first-contentful-paint') res(e.startTime); }).observe({type: 'paint', buffered: true});
  setTimeout(() => res(null), 5000); })"""
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture(scope="module")
def browser():
    sync_playwright, exe = require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, browser):
    """A site of several models: the toy classifier dissected for real (with its experiment
    pages), any toy generator, and a synthetic model with hostile strings."""
    from dissect.experiments.dissection import DissectConfig
    from dissect import report
    from dissect.site import write_site
    from test_site import make_run

    root = tmp_path_factory.mktemp("browser")
    www = root / "www"
    out = www / SUBPATH
    notes = root / "notes.md"
    notes.write_text("## What we found\n\nUnits of *conv3_2* fire on **sky**.\n\n"
                     "<script>alert('notes')</script><img src=x onerror=alert(3)>\n", encoding="utf-8")
    # The trained toy weights when they are there (charts then have detectors to show).
    import dissect.models
    trained = (Path(dissect.models.__file__).parent / "weights" / "toy_classifier.safetensors").is_file()
    from dissect.bases.options import BasisOptions
    report(model="toy", weights=None if trained else "none", data_size=120, out=out, layers=["conv3_2"],
           bases=BasisOptions(bases=("units",)),   # no SAE here: test_units_vs_features_pages has its own site
           config=DissectConfig(top_k=5), cache_dir=root / "cache", notes=notes, reproducible=True,
           command="dissect report --model toy --data-size 120 --top-k 5 --layer conv3_2", progress=False,
           **_quick_experiments())
    # Every shipped toy generator too (its pages: dissection plus interventions), once one exists.
    from dissect.models import get_model_spec, list_models
    for name in list_models():
        if name.startswith("toy") and get_model_spec(name).kind == "generator":
            from dissect.experiments.generator import GeneratorExperimentConfig
            report(model=name, data_size=60, out=out, config=DissectConfig(top_k=5), cache_dir=root / "cache",
                   reproducible=True, progress=False,
                   interventions=GeneratorExperimentConfig(samples=8, insert_samples=4, curve_samples=2,
                                                           top_n=(1, 10), random_draws=1, strip_samples=3))
    results, run_dir = make_run(root)  # 'a"b<c>' with <script> labels, slug "toy-hostile"
    results["model"]["slug"] = "toy-hostile"
    _add_clip_labels(results)   # open-vocabulary labels beside the IoU labels, with hostile concepts
    write_site(out, [(results, run_dir)])
    return out


def _quick_experiments() -> dict:
    """Keyword arguments that keep the report's experiments (ablation, attack) small, so the
    site has every kind of page without a long run; only fields the config knows are set."""
    import dataclasses
    import inspect

    from dissect import report

    if "ablation" not in inspect.signature(report).parameters:
        return {}
    from dissect.experiments.ablation import AblationConfig

    small = {"top_n": (1, 5), "random_draws": 1, "attack_images": 4, "attack_steps": 2, "attack_pairs": 1}
    known = {f.name for f in dataclasses.fields(AblationConfig)}
    return {"ablation": AblationConfig(**{k: v for k, v in small.items() if k in known})}


def _pages(site: Path) -> set[str]:
    return {p.relative_to(site).as_posix() for p in site.rglob("*.html")}


def _crawl(sb: SiteBrowser, site: Path, units_per_folder: int | None = None) -> tuple[list, list[str]]:
    """Visit every page reachable from index.html; check every link and fragment. With
    ``units_per_folder``, only that many unit pages of each folder are visited (every page is
    still found and every link's target still checked: they share one template)."""
    queue, seen, visits, ids = deque(["index.html"]), {"index.html"}, [], {}
    links: list[tuple[str, str]] = []
    units_seen: dict[str, int] = {}
    while queue:
        rel = queue.popleft()
        folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        if units_per_folder is not None and name.startswith("unit-"):
            units_seen[folder] = units_seen.get(folder, 0) + 1
            if units_seen[folder] > units_per_folder:
                continue
        v = sb.visit(rel)
        visits.append(v)
        ids[rel] = set(v.info["ids"])
        for ref in v.info["links"]:
            target = sb.path_of(ref)
            if target is None or not target.is_file():
                continue  # reported by visit()
            trel = target.relative_to(site).as_posix()
            links.append((rel, ref))
            if target.suffix == ".html" and trel not in seen:
                seen.add(trel)
                queue.append(trel)
    problems = [p for v in visits for p in v.problems]
    for rel, ref in links:
        target = sb.path_of(ref)
        frag = urldefrag(ref).fragment
        if frag and target.suffix == ".html" and "=" not in frag:  # key=value: grid state, not an id
            trel = target.relative_to(site).as_posix()
            if frag not in ids.get(trel, set()):
                problems.append(f"{rel}: link to a missing anchor {ref}")
    missing = _pages(site) - seen
    if missing:
        problems.append(f"pages no link leads to: {sorted(missing)[:10]}")
    return visits, problems


def _assert_clean(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


def test_every_page_from_file_url(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        visits, problems = _crawl(sb, site)
        _assert_clean(problems + [p for p in sb.problems if p not in problems])
    finally:
        sb.close()
    assert len(visits) == len(_pages(site)) > 50
    if _quick_experiments():
        assert any(v.url.endswith("/ablation.html") for v in visits), "no ablation page was rendered"
    charts = sum(v.info["charts"] for v in visits)
    assert charts >= 2, "the overview pages render their charts"
    assert all(r.startswith("file://") for r in sb.requests)


def test_every_page_from_server_under_subpath(browser, site):
    www = site.parents[len(Path(SUBPATH).parts) - 1]
    assert (www / SUBPATH) == site
    with StaticServer(www) as server:
        sb = SiteBrowser(browser, server.url + SUBPATH + "/", site)
        try:   # every page kind (test_every_page_from_file_url visits every unit page)
            visits, problems = _crawl(sb, site, units_per_folder=3)
            _assert_clean(problems + [p for p in sb.problems if p not in problems])
        finally:
            sb.close()
    folders = {p.parent for p in site.rglob("unit-*.html")}
    assert len(visits) == len([p for p in _pages(site) if "/unit-" not in f"/{p}"]) + sum(
        min(3, len(list(f.glob("unit-*.html")))) for f in folders)
    assert server.log and all(path.startswith(f"/{SUBPATH}/") for path, _ in server.log), \
        [p for p, _ in server.log if not p.startswith(f"/{SUBPATH}/")][:5]
    assert all(code < 400 for _, code in server.log)


def _layer_page(site: Path) -> str:
    layers = sorted(p.parent.relative_to(site).as_posix() for p in site.glob("toy/*/units.csv"))
    return layers[-1] + "/index.html"


def _visible(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#unit-grid > li:not([hidden])",
        "els => els.map(e => ({unit: +e.dataset.unit, iou: +e.dataset.iou, cat: e.dataset.cat, "
        "det: e.dataset.det, label: e.dataset.label, search: e.dataset.search}))")


def test_grid_sort_filter_search_by_keyboard(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    page = sb.page
    try:
        sb.visit(_layer_page(site))
        total = len(_visible(page))
        assert total > 10
        assert page.is_visible("#grid-controls")
        # Tab from the top of the page reaches every control, in order.
        page.keyboard.press("Tab")
        reached = []
        for _ in range(40):
            page.keyboard.press("Tab")
            name = page.evaluate("() => document.activeElement && document.activeElement.name")
            if name:
                reached.append(name)
            if name == "q":
                break
        assert reached[:4] == ["sort", "cat", "det", "q"], reached

        # Sort by IoU with the keyboard: focus the select, arrow down.
        page.focus("select[name=sort]")
        page.keyboard.press("ArrowDown")
        assert page.input_value("select[name=sort]") == "iou"
        ious = [c["iou"] for c in _visible(page)]
        assert ious == sorted(ious, reverse=True) and len(ious) == total
        assert "sort=iou" in page.url

        # Detectors only, toggled with the space bar.
        page.focus("input[name=det]")
        page.keyboard.press("Space")
        shown = _visible(page)
        assert all(c["det"] == "1" for c in shown)
        count = page.text_content("#grid-controls .count")
        assert (f"{len(shown)} units" in count) if len(shown) == total else (f"showing {len(shown)} of {total}" in count)
        page.keyboard.press("Space")
        assert len(_visible(page)) == total

        # A category.
        cats = page.eval_on_selector_all("select[name=cat] option", "os => os.map(o => o.value).filter(Boolean)")
        assert cats
        page.select_option("select[name=cat]", cats[0])
        assert _visible(page) and all(c["cat"] == cats[0] for c in _visible(page))
        page.select_option("select[name=cat]", "")

        # Search: type a concept one card shows; every card left holds it.
        term = next(c["label"] for c in _visible(page) if c["label"] != "none")
        page.focus("input[name=q]")
        page.keyboard.type(term, delay=10)
        page.wait_for_function("(t) => location.hash.includes('q=')", arg=term)
        shown = _visible(page)
        assert shown and len(shown) <= total and all(term.lower() in c["search"] for c in shown)
        page.keyboard.type(" zzzz-no-such-concept")
        page.wait_for_selector("#grid-empty:not([hidden])")
        assert _visible(page) == []

        # The state is in the URL: reloading it restores the grid (a deep link).
        page.fill("input[name=q]", term)
        page.wait_for_function("(t) => !location.hash.includes('zzzz')", arg=term)
        url = page.url
        sb.visit(url)
        assert page.input_value("input[name=q]") == term and page.input_value("select[name=sort]") == "iou"
        assert len(_visible(page)) == len(shown)

        # Reset brings every unit back.
        page.click("button[type=reset]")
        page.wait_for_function("(n) => document.querySelectorAll('#unit-grid > li:not([hidden])').length === n", arg=total)
        # Enter on a focused card link opens the unit page.
        page.focus("#unit-grid > li a.unit-no")
        page.keyboard.press("Enter")
        page.wait_for_url("**/unit-*.html")
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_formulas_on_cards_pages_search_and_chart(browser, site):
    """The toy classifier's last dissected layer carries formulas (issue 23): on the cards,
    searchable by a concept only the formula names, on the unit page beside the label, and
    the model page's chart of mean IoU by formula length renders."""
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    page = sb.page
    try:
        sb.visit(_layer_page(site))
        cards = page.eval_on_selector_all(
            "#unit-grid > li", "els => els.map(e => ({unit: +e.dataset.unit, search: e.dataset.search, "
            "label: e.dataset.label, formula: (e.querySelector('.formula') || {}).textContent || ''}))")
        with_formula = [c for c in cards if c["formula"]]
        assert with_formula, "formulas on the cards"
        # a concept that some formula holds but that is not that card's label: the search finds the card
        term, unit = next((w, c["unit"]) for c in with_formula
                          for w in c["formula"].split()
                          if w.isalpha() and w != c["label"] and w not in ("OR", "AND", "NOT"))
        page.fill("input[name=q]", term)
        page.wait_for_function("() => location.hash.includes('q=')")
        assert unit in [c["unit"] for c in _visible(page)]
        sb.visit(_layer_page(site).replace("index.html", f"unit-{unit:04d}.html"))
        assert page.is_visible("#formula")
        head = page.text_content("#formula-h")
        assert "IoU" in head and term in head
        assert page.eval_on_selector_all("#formula-lengths tbody tr", "rs => rs.length") >= 2
        # the formula's parts on the top images: a row per part and one for the formula, each image loaded
        parts = page.eval_on_selector_all("#formula p .chip", "es => es.length")
        rows = page.eval_on_selector_all(
            "#formula-parts tbody tr", "rs => rs.map(r => ({part: r.querySelector('th').textContent.trim(), "
            "loaded: r.querySelector('img').complete && r.querySelector('img').naturalWidth > 0}))")
        assert rows and rows[-1]["part"] == "= formula" and all(r["loaded"] for r in rows)
        assert len(rows) - 1 == parts >= 2 and term in " ".join(r["part"] for r in rows)
        sb.visit("toy/index.html")
        page.wait_for_selector("[id^=chart-formulas-] .main-svg", state="attached")
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_unit_deep_link_and_arrow_keys(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    page = sb.page
    try:
        layer = Path(_layer_page(site)).parent.as_posix()
        sb.visit(f"{layer}/unit-0001.html")
        assert "unit 1" in page.text_content("h1")
        page.keyboard.press("ArrowRight")
        page.wait_for_url("**/unit-0002.html")
        page.keyboard.press("ArrowLeft")
        page.wait_for_url("**/unit-0001.html")
        # The grid has an anchor per unit: index.html#unit-5 scrolls to it.
        sb.visit(f"{layer}/index.html#unit-5")
        assert page.evaluate("() => { const r = document.getElementById('unit-5').getBoundingClientRect();"
                             " return r.top >= -1 && r.top < innerHeight; }")
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_readable_on_a_phone(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site, **PHONE)
    page = sb.page
    try:
        layer = Path(_layer_page(site)).parent.as_posix()
        extra = sorted(p.relative_to(site).as_posix() for p in site.glob("*/*/*.html") if not p.name.startswith(("unit-", "index")))
        for rel in ["index.html", "toy/index.html", f"{layer}/index.html", f"{layer}/unit-0000.html", *extra]:
            sb.visit(rel)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{rel} scrolls sideways on a phone by {overflow}px"
            size = page.evaluate("() => parseFloat(getComputedStyle(document.body).fontSize)")
            assert size >= 14
        ARTIFACTS.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screenshots" / "phone-unit.png"))
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_screenshots_and_first_paint(browser, site):
    """Screenshots of the overview, a layer grid and a unit page, and the overview's first
    paint from file:// in a fresh browser context (must be under one second)."""
    shots = ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    metrics = {}
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site, viewport={"width": 1280, "height": 900})
    page = sb.page
    try:
        t0 = time.perf_counter()
        page.goto(sb.url_of("toy/index.html"), wait_until="load")
        wall = time.perf_counter() - t0
        fcp = page.evaluate(_FCP_JS)
        nav = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                            " return {dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd}; }")
        metrics["overview_file_url"] = {"first_contentful_paint_ms": fcp, "dom_content_loaded_ms": nav["dcl"],
                                        "load_event_ms": nav["load"], "wall_s": round(wall, 3)}
        assert fcp is not None and fcp < 1000, metrics
        layer = Path(_layer_page(site)).parent.as_posix()
        pages = [("overview", "toy/index.html"), ("site-index", "index.html"),
                 ("layer-grid", f"{layer}/index.html"), ("unit", f"{layer}/unit-0000.html")]
        pages += [(f"ablation-{p.parent.name}", p.relative_to(site).as_posix()) for p in site.glob("toy/*/ablation.html")]
        pages += [(f"interventions-{p.parent.name}", p.relative_to(site).as_posix())
                  for p in site.glob("toygan/*/interventions.html")]
        for name, rel in pages:
            sb.visit(rel)
            page.screenshot(path=str(shots / f"{name}.png"), full_page=name != "layer-grid")
        _assert_clean(sb.problems)
    finally:
        sb.close()
    (ARTIFACTS / "browser-metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    for name in ("overview", "layer-grid", "unit"):
        assert (shots / f"{name}.png").stat().st_size > 5000


HOSTILE_CONCEPT = '<img src=x onerror=alert("clip")>'


def _add_clip_labels(results: dict) -> None:
    """The fields --labeler clip writes (docs/results-schema.md), some concepts hostile."""
    for layer in results["layers"]:
        for u in layer["units"]:
            top = [{"concept": HOSTILE_CONCEPT if u["unit"] % 2 else (u["label"] or "sky"), "score": -1.25},
                   {"concept": "grass", "score": -2.5}]
            u["clip"] = {"label": top[0]["concept"], "score": -1.25, "top": top}
        labelled = [u for u in layer["units"] if u["label"]]
        agree = sum(1 for u in labelled if u["clip"]["label"] == u["label"])
        layer["clip"] = {"model": "openclip:ViT-B-16/openai", "concepts": "the probe set's label names",
                         "agreement": {"compared": len(labelled), "agree": agree,
                                       "fraction": agree / len(labelled) if labelled else None}}


def test_open_vocabulary_labels_on_cards_and_unit_pages(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        v = sb.visit("toy-hostile/features.3/index.html")
        assert not v.problems, v.problems
        line = " ".join(sb.page.text_content("#clip-agreement").split())
        assert "SoftWPMI with openclip:ViT-B-16/openai" in line and "agree with the IoU label on" in line
        cards = sb.page.eval_on_selector_all(".card .clip-label", "els => els.map(e => e.textContent)")
        assert cards and any(HOSTILE_CONCEPT in c for c in cards)   # shown as text, never run
        # the search finds a unit by its open-vocabulary label
        sb.page.fill("#grid-controls input[name=q]", "onerror")
        sb.page.wait_for_function("() => location.hash.includes('q=')")
        shown = _visible(sb.page)
        assert shown and all(c["unit"] % 2 == 1 for c in shown)
        v = sb.visit("toy-hostile/features.3/unit-0001.html")
        assert not v.problems, v.problems
        assert HOSTILE_CONCEPT in sb.page.text_content("#clip-label")
        rows = sb.page.eval_on_selector_all("#clip-concepts tbody tr", "els => els.map(e => e.textContent)")
        assert len(rows) == 2 and "-1.25" in rows[0] and "grass" in rows[1]
        assert sb.page.eval_on_selector_all("#clip-concepts img", "els => els.length") == 0
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_hostile_strings_do_not_run(browser, site):
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        compare = ["compare.html"] if (site / "compare.html").is_file() else []
        for rel in ["index.html", *compare, "toy-hostile/index.html", "toy-hostile/features.3/index.html",
                    "toy-hostile/features.3/unit-0002.html", "toy/index.html"]:
            v = sb.visit(rel)
            assert not v.problems, v.problems
        text = sb.page.text_content("body")
        assert "What we found" in text  # the notes are there, their script and image are not
        assert sb.page.eval_on_selector_all(".notes script, .notes img", "els => els.length") == 0
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_wide_screens_hide_no_column_and_no_legend(browser, site):
    """At 1280, 1440 and 1600 px no table hides columns behind a scrollbar, and plotly's
    toolbar covers no chart's legend or title (issue 21), on every kind of page."""
    from browser_support import LAYOUT_JS

    layer = _layer_page(site).rsplit("/", 1)[0]
    wanted = ["index.html", "compare.html", "toy/index.html", f"{layer}/index.html", f"{layer}/unit-0000.html",
              f"{layer}/ablation.html"]
    wanted += sorted(p.relative_to(site).as_posix() for p in site.glob("*/*/interventions.html"))[:1]
    wanted += sorted(p.relative_to(site).as_posix() for p in site.glob("*/*/unit-0000.html")
                     if (p.parent / "interventions.html").is_file())[:1]
    pages = [w for w in wanted if (site / w).is_file()]
    assert f"{layer}/ablation.html" in pages or not _quick_experiments()
    problems = []
    for width in (1280, 1440, 1600):
        sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site, viewport={"width": width, "height": 900})
        try:
            for rel in pages:
                sb.visit(rel)
                found = sb.page.evaluate(LAYOUT_JS)
                problems += [f"{width} px, {rel}: {p}" for p in found["hidden_columns"] + found["covered"]]
        finally:
            sb.close()
    assert not problems, "\n".join(problems)


def test_checker_sees_hidden_columns_and_a_covered_legend(browser, tmp_path):
    """The layout check above catches what it is meant to catch."""
    from browser_support import LAYOUT_JS

    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><html lang="en"><body style="margin:0"><div style="width:300px;overflow-x:auto">'
        '<table><caption>wide</caption><tr>' + "<td>column&nbsp;with&nbsp;long&nbsp;text</td>" * 8 +
        '</tr></table></div><div class="chart" data-figure="x" id="c" style="position:relative;width:300px;height:100px">'
        '<div class="modebar" style="position:absolute;right:0;top:0;width:80px;height:20px"></div>'
        '<svg width="300" height="100"><g class="legend"><rect x="200" y="5" width="90" height="20"/></g></svg>'
        '</div></body></html>', encoding="utf-8")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        p = ctx.new_page()
        p.goto(page.resolve().as_uri())
        found = p.evaluate(LAYOUT_JS)
    finally:
        ctx.close()
    assert any(h.startswith("wide:") for h in found["hidden_columns"]), found
    assert found["covered"] == ["c: the toolbar covers its legend"], found


def test_compare_page(browser, site):
    """The comparison page: the toy's shipped snapshots and fine-tuned weights (added to every
    report of the toy classifier) drawn as bars, a curve and a Sankey, the note that names the
    runs it could not compare, and a table that sorts by a click or Enter on a column head."""
    if not (site / "compare.html").is_file():
        pytest.skip("the toy classifier's comparison weights are not shipped")
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        sb.visit("index.html")
        assert sb.page.get_attribute("#compare-link", "href") == "compare.html"
        v = sb.visit("compare.html")
        assert not v.problems, v.problems
        assert v.info["charts"] >= 4
        assert sb.page.eval_on_selector_all("[id^=chart-sankey] g.sankey", "els => els.length") >= 1
        assert sb.page.eval_on_selector_all("[id^=chart-series] .scatterlayer .trace", "els => els.length") >= 1
        note = sb.page.text_content("#not-comparable")
        assert 'a"b<c>' in note and "probe.index_sha256" in note
        counts = sb.page.text_content("[id$=-counts]")
        assert "units kept its label" in counts and "units changed label" in counts
        table = "table.sortable[id$=-table]"
        col = sb.page.eval_on_selector_all(f"{table} thead th", "ths => ths.map(t => t.textContent.trim())").index("Unique")

        def column():
            return sb.page.eval_on_selector_all(
                f"{table} tbody tr", f"rows => rows.map(r => Number(r.cells[{col}].textContent.replace(/,/g, '')))")

        sb.page.click(f"{table} thead th:nth-child({col + 1})")
        assert column() == sorted(column()) and sb.page.get_attribute(
            f"{table} thead th:nth-child({col + 1})", "aria-sort") == "ascending"
        sb.page.focus(f"{table} thead th:nth-child({col + 1})")
        sb.page.keyboard.press("Enter")
        assert column() == sorted(column(), reverse=True)
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_units_vs_features_pages(browser, tmp_path, toyworld_small):
    """The feature bases of a layer (docs/bases.md): the units-vs-features page with its two
    charts and its table, linked from the overview, and each basis's grid and feature pages
    (a small planted layer of 6 units, an SAE of 12 features and its rotation)."""
    from dissect import report
    from dissect.bases.options import BasisOptions
    from dissect.experiments.dissection import DissectConfig
    from test_bases import Planted, _mixing

    site = tmp_path / "site"
    report(model=Planted(_mixing()), layers=["units"], data=str(toyworld_small), data_size=60, input_size=64,
           bases=BasisOptions(bases=("sae", "rotation"), sae_k=1, steps=50, max_vectors=2048), ablation=False,
           config=DissectConfig(top_k=3), out=site, cache_dir=tmp_path / "cache", progress=False, reproducible=True)
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        visits, problems = _crawl(sb, site)
        _assert_clean(problems + [p for p in sb.problems if p not in problems])
        assert len(visits) == len(_pages(site))
        v = sb.visit("Planted/units/features.html")
        assert v.info["charts"] == 2 and not v.problems, v.problems
        rows = sb.page.eval_on_selector_all("#basis-table tbody th", "ths => ths.map(t => t.textContent.trim())")
        assert rows == ["units", "SAE features", "rotated units"]
        sb.visit("Planted/units--sae/index.html")
        assert sb.page.text_content("#unit-grid .unit-no").strip() == "feature 0"
        assert "Explained variance" in sb.page.text_content("#basis-intro")
        _assert_clean(sb.problems)
    finally:
        sb.close()


def test_large_layer_opens_quickly(browser, tmp_path):
    """A 2,048-unit layer: only the thumbnails near the top load at first (lazy loading),
    and the page is usable in well under a second or two."""
    from PIL import Image

    from dissect.site import write_site
    from test_site import make_results

    results = make_results(name="wide", slug="wide")
    layer = results["layers"][0]
    unit0 = layer["units"][0]
    run_dir = tmp_path / "run"
    (run_dir / "units").mkdir(parents=True)
    strip = Image.new("RGB", (4 * 24 + 9, 24), "white")
    for k in range(4):
        strip.paste(Image.new("RGB", (24, 24), (40 * k, 120, 200 - 40 * k)), (k * 27, 0))
    strip.save(run_dir / "units" / "s.jpg", quality=80)
    units = []
    for i in range(2048):
        u = json.loads(json.dumps(unit0))
        u.update(unit=i, iou=round((i * 7919 % 1000) / 4000, 6), strip="units/s.jpg")
        u["detector"] = u["iou"] > 0.04
        units.append(u)
    layer.update(units=units, num_units=2048)
    results["layers"] = [layer]
    site = write_site(tmp_path / "site", [(results, run_dir)])
    page_rel = f"wide/{layer['slug']}/index.html"
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site, viewport={"width": 1280, "height": 900})
    page = sb.page
    try:
        t0 = time.perf_counter()
        page.goto(sb.url_of(page_rel), wait_until="load")
        wall = time.perf_counter() - t0
        thumbs = [r for r in sb.requests if r.endswith("-thumb.jpg")]
        nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")
        fcp = page.evaluate(_FCP_JS)
        assert len(page.query_selector_all("#unit-grid > li")) == 2048
        assert len(thumbs) < 400, f"{len(thumbs)} thumbnails loaded before scrolling: lazy loading is off"
        assert fcp is not None and fcp < 1500, f"the 2,048-unit grid painted first after {fcp} ms"
        assert nav < 5000, f"the 2,048-unit grid took {nav:.0f} ms to load"
        page.select_option("select[name=sort]", "iou")
        assert page.eval_on_selector("#unit-grid > li", "e => +e.dataset.unit") == max(
            range(2048), key=lambda i: ((i * 7919 % 1000), -i))
        _assert_clean(sb.problems)
    finally:
        sb.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser-metrics-2048.json").write_text(json.dumps(
        {"grid_2048_units": {"first_contentful_paint_ms": fcp, "load_event_ms": nav, "wall_s": round(wall, 3),
                             "thumbnails_before_scroll": len(thumbs)}},
        indent=1, sort_keys=True) + "\n")


def test_checker_catches_problems(browser, tmp_path):
    """The checks above are only as good as the checker: a page with every fault fails it."""
    from PIL import Image

    site = tmp_path / "bad"
    site.mkdir()
    Image.new("RGB", (4, 4), "red").save(site / "ok.png")
    (tmp_path / "outside.txt").write_text("secret")
    (site / "index.html").write_text("""<!doctype html><html><head><title>bad</title></head><body><h1>bad</h1>
<img src="ok.png"><img src="missing.png" alt="gone">
<a href="nope.html">dead link</a> <a href="https://example.com/">away</a>
<div class="chart" id="c1" data-figure="c1-data"><p class="chart-fallback">no chart</p></div>
<script>console.error("boom"); var i = new Image(); i.src = "../outside.txt";</script>
<script src="https://example.com/lib.js"></script>
</body></html>""", encoding="utf-8")
    sb = SiteBrowser(browser, site.resolve().as_uri() + "/", site)
    try:
        v = sb.visit("index.html", chart_timeout_ms=300)
    finally:
        sb.close()
    found = "\n".join(v.problems)
    for expected in ["console error", "images did not load", "images without alt text", "broken link",
                     "link leaves the site", "charts did not render", "request leaves the site folder: https://example.com/lib.js",
                     "outside.txt"]:
        assert expected in found, f"{expected!r} not reported in:\n{found}"


def test_no_sentence_or_separator_is_glued_to_the_next(site):
    """Template line breaks that Jinja trims can glue two sentences ("--layer.The model's") or a
    separator to a word ("dead ·units.csv"); every page's visible text has neither."""
    glued = []
    for page in sorted(site.rglob("*.html")):
        text = visible_text(page, hidden=("script", "style", "pre", "code"))
        for m in re.finditer(r"[a-z)]\.[A-Z][a-z]|[^\s(·]·|·[^\s)·]", text):
            glued.append(f"{page.relative_to(site)}: …{text[max(0, m.start() - 30):m.end() + 30]}…")
    assert not glued, "\n".join(glued[:20])
