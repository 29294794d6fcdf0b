"""Publishing: byte-identical rebuilds, the zip archive, the size report, the size/detail
options, and the user guide (``mkdocs build --strict``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from dissect.cli import main
from dissect.publish import format_size_report, site_size, zip_site
from dissect.site import write_site
from test_site import make_run

REPO = Path(__file__).resolve().parent.parent
DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def _tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_zip_is_deterministic_and_complete(tmp_path):
    results, run_dir = make_run(tmp_path)
    site = write_site(tmp_path / "site", [(results, run_dir)])
    a = zip_site(site, tmp_path / "a.zip")
    b = zip_site(site, tmp_path / "b" / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {n.removeprefix("site/") for n in names} == set(_tree_hashes(site))
        assert "site/.nojekyll" in names and "site/index.html" in names
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
        assert zf.read("site/toy/index.html") == (site / "toy" / "index.html").read_bytes()
        assert zf.testzip() is None
    assert not list(tmp_path.glob(".*.tmp")), "temporary archive left behind"
    # An archive written inside the site does not swallow itself.
    inner = zip_site(site, site / "supplement.zip")
    with zipfile.ZipFile(inner) as zf:
        assert "site/supplement.zip" not in zf.namelist()


def test_size_report(tmp_path):
    results, run_dir = make_run(tmp_path)
    site = write_site(tmp_path / "site", [(results, run_dir)])
    size = site_size(site, top=3)
    assert size.num_files == len(_tree_hashes(site))
    assert size.total_bytes == sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    assert size.largest[0][0] == "assets/plotly.min.js" and len(size.largest) == 3
    text = format_size_report(size, zip_bytes=1_234_567)
    assert "site size:" in text and "zip 1.23 MB" in text and "assets/plotly.min.js" in text
    assert "--thumb-height" in text and "--jpeg-quality" in text and "--top-k" in text


def test_thumb_height_and_jpeg_quality(tmp_path):
    results, run_dir = make_run(tmp_path)
    # A PNG strip is re-encoded at the chosen quality; a JPEG one is copied as it is.
    png = run_dir / "units" / "features.3" / "unit-0000.png"
    Image.open(run_dir / results["layers"][0]["units"][0]["strip"]).save(png)
    results["layers"][0]["units"][0]["strip"] = "units/features.3/unit-0000.png"
    small = write_site(tmp_path / "small", [(results, run_dir)], thumb_height=24, jpeg_quality=30)
    big = write_site(tmp_path / "big", [(results, run_dir)], thumb_height=96, jpeg_quality=95)
    with Image.open(small / "toy" / "features.3" / "img" / "unit-0001-thumb.jpg") as im:
        assert im.height == 24
    with Image.open(big / "toy" / "features.3" / "img" / "unit-0001-thumb.jpg") as im:
        assert im.height == 96
    s = (small / "toy" / "features.3" / "img" / "unit-0000.jpg").stat().st_size
    b = (big / "toy" / "features.3" / "img" / "unit-0000.jpg").stat().st_size
    assert s < b


def _report(cwd: Path, *extra: str) -> None:
    """``dissect report`` in ``cwd`` with relative paths, so two folders hold the same command."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = main(["report", "--model", "toy", "--weights", "none", "--data-size", "100", "--top-k", "4",
                   "--layer", "conv2_2", "--out", "site", "--cache-dir", "cache", *extra])
    finally:
        os.chdir(old)
    assert rc == 0


@pytest.mark.slow
def test_same_inputs_same_bytes(tmp_path, capsys):
    """Two runs from scratch (separate caches) give byte-identical site trees and zips."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    args = ("--reproducible", "--zip", "site.zip", "--thumb-height", "32", "--jpeg-quality", "80")
    _report(a, *args)
    out = capsys.readouterr().out
    assert "site size:" in out and "largest files:" in out and "assets/plotly.min.js" in out
    _report(b, *args)
    ha, hb = _tree_hashes(a / "site"), _tree_hashes(b / "site")
    assert ha == hb
    assert (a / "site.zip").read_bytes() == (b / "site.zip").read_bytes()
    assert (a / "site.zip").stat().st_size < 25e6
    assert json.loads((a / "site" / "toy" / "provenance.json").read_text())["provenance"]["created"] is None
    with Image.open(next((a / "site" / "toy" / "conv2_2" / "img").glob("*-thumb.jpg"))) as im:
        assert im.height == 32
    # Rebuilt in place from the cache: still the same bytes.
    _report(a, *args)
    assert _tree_hashes(a / "site") == hb

    # Without --reproducible the date is recorded, but only in provenance.json / results.json.
    _report(b, "--zip", "site.zip", "--thumb-height", "32", "--jpeg-quality", "80")
    prov = json.loads((b / "site" / "toy" / "provenance.json").read_text())["provenance"]
    assert DATE.match(prov["created"])
    for page in (b / "site").rglob("*.html"):
        assert not DATE.search(page.read_text(encoding="utf-8")), f"{page} holds a date"
    dated = {k for k, v in _tree_hashes(b / "site").items() if hb.get(k) != v}
    # The command line (shown on the overview) changed too; images and unit pages did not.
    assert dated <= {"toy/results.json", "toy/provenance.json", "toy/index.html"}, dated


def test_cli_rejects_bad_publish_options(tmp_path, capsys):
    assert main(["report", "--jpeg-quality", "100", "--out", str(tmp_path / "s")]) == 2
    assert "jpeg_quality must be an integer from 1 to 95" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert main(["report", "--zip", str(tmp_path / "d"), "--out", str(tmp_path / "s")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _need_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None:
        msg = "the user guide build needs mkdocs (pip install mkdocs)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


@pytest.mark.slow
def test_user_guide_builds_strict(tmp_path):
    """``mkdocs build --strict``: every page of the guide, its links, the generated CLI
    reference, and the example site the project builds into it."""
    _need_mkdocs()
    out = tmp_path / "guide"
    env = {**os.environ, "DISSECT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for page in ["index.html", "install/index.html", "quickstart/index.html", "cli/index.html",
                 "results-schema/index.html", "own-model/index.html", "own-data/index.html",
                 "publishing/index.html", "method/index.html", "example/index.html", "example/toy/index.html"]:
        assert (out / page).is_file(), page
    cli = (out / "cli" / "index.html").read_text(encoding="utf-8")
    for flag in ("--zip", "--thumb-height", "--jpeg-quality", "--reproducible", "--notes", "--top-k"):
        assert flag in cli, flag
    quick = (out / "quickstart" / "index.html").read_text(encoding="utf-8")
    assert "../example/" in quick
    shutil.rmtree(out)
