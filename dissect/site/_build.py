"""Build the site: gather views, copy images and assets, render pages, swap atomically."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dissect
from dissect.errors import DissectError
from dissect.site import _ablation, _generator, _images, _resources, _views

MARKER = ".dissect-site"
#: Top-level names the site owns; anything else in an existing site is kept as it is.
_OWNED = {"index.html", "assets", ".nojekyll", MARKER}
#: Names a model folder may not take (site files) and a layer folder may not take.
_RESERVED_MODEL = _OWNED | {"index.html"}
_RESERVED_LAYER = {"index.html", "results.json", "provenance.json"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _safe_slug(slug: Any, fallback: str, reserved: set[str]) -> str:
    s = _SAFE.sub("-", str(slug or "")).strip(".-")
    return fallback if not s or s in reserved else s


def _dump_json(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    except ValueError as exc:
        raise DissectError(f"results hold a value JSON cannot carry (NaN or infinity): {exc}") from exc


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _check_results(results: Any) -> None:
    if not isinstance(results, dict) or results.get("schema") != "dissect.results":
        raise DissectError("not a dissect results dict (schema must be 'dissect.results')")
    if results.get("schema_version") != 1:
        raise DissectError(
            f"results schema_version {results.get('schema_version')!r} is not supported; this dissect reads version 1"
        )


def _units_csv(ctx: _views.ModelContext, layer: dict[str, Any]) -> str:
    cats = ctx.categories
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["unit", "label", "category", "iou", "detector", "threshold", "active_fraction", "max_activation", "dead"]
    for c in cats:
        head += [f"top_{c}", f"top_{c}_iou"]
    w.writerow(head)

    def cell(v: Any) -> Any:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return v

    for u in layer["units"]:
        row = [cell(u.get(k)) for k in head[:9]]
        by_cat = u.get("top_by_category") or {}
        for c in cats:
            t = by_cat.get(c) or {}
            row += [cell(t.get("name")), cell(t.get("iou"))]
        w.writerow(row)
    return buf.getvalue()


def _build_model(
    env: Any,
    dest: Path,
    results: dict[str, Any],
    run_dir: Path,
    *,
    version: str,
    reproducible: bool,
    thumb_height: int,
    jpeg_quality: int,
    notes: Any,
) -> None:
    """Write one model folder ``dest`` from ``results`` (already holding safe slugs)."""
    dest.mkdir()
    site_results = results  # already the caller's private copy
    if reproducible and isinstance(site_results.get("provenance"), dict):
        site_results["provenance"]["created"] = None
    ctx = _views.ModelContext(site_results, version, reproducible)
    slugs = [layer["slug"] for layer in site_results["layers"]]

    for layer in site_results["layers"]:
        ldir = dest / layer["slug"]
        img_dir = ldir / "img"
        img_dir.mkdir(parents=True)
        jobs = []
        for u in layer["units"]:
            strip = u.get("strip")
            if not strip:
                raise DissectError(f"unit {u['unit']} of layer {layer['name']} has no strip image")
            jobs.append((u, Path(run_dir) / strip, f"unit-{u['unit']:04d}"))
        # PIL releases the GIL while decoding, resizing and encoding: threads pay off.
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            written = list(pool.map(
                lambda job: _images.write_strip(
                    job[1], img_dir, job[2], thumb_height=thumb_height, jpeg_quality=jpeg_quality
                ),
                jobs,
            ))
        images: dict[int, dict[str, Any]] = {}
        for (u, _, _), (full, thumb) in zip(jobs, written):
            images[u["unit"]] = {"full": full, "thumb": thumb}
            # In the site the model folder is the run folder: strips point at the copies.
            u["strip"] = f"{layer['slug']}/{full.src}"

        _write(ldir / "units.csv", _units_csv(ctx, layer))
        _write(ldir / "index.html", env.get_template("layer.html").render(_views.layer_page(ctx, layer, images)))
        unit_tpl = env.get_template("unit.html")
        for i, u in enumerate(layer["units"]):
            page = _views.unit_page(ctx, layer, i, images)
            _write(ldir / _views.unit_file(u["unit"]), unit_tpl.render(page))
        gentry = _generator.layer_entry(site_results, layer)
        if gentry is not None:
            _generator.copy_media(gentry, run_dir, ldir)
            _write(ldir / _generator.PAGE, env.get_template("interventions.html").render(
                _generator.interventions_page(ctx, layer, gentry)))
        ablation = _ablation.layer_entry(site_results, layer)
        if ablation is not None:
            _write(ldir / _ablation.PAGE,
                   env.get_template("ablation.html").render(_ablation.ablation_page(ctx, layer, ablation)))

    _write(dest / "index.html", env.get_template("model.html").render(_views.model_page(ctx, slugs, notes)))
    _write(dest / "results.json", _dump_json(site_results))
    prov = {k: site_results.get(k) for k in ("schema", "schema_version", "model", "probe", "params", "provenance")}
    _write(dest / "provenance.json", _dump_json(prov))


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a kept folder into the new site; hard links where the file system allows."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, copy_function=link_or_copy, symlinks=True)
    else:
        link_or_copy(str(src), str(dst))


def _existing_site(out: Path) -> list[str]:
    """Model slugs of the dissect site at ``out`` ([] when ``out`` is new or empty)."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise DissectError(f"--out {out} is a file, not a folder; choose an empty or new folder")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise DissectError(f"--out {out} is not empty and is not a dissect site; choose an empty or new folder")
        return []
    try:
        slugs = json.loads(marker.read_text(encoding="utf-8")).get("models", [])
    except (ValueError, AttributeError):
        slugs = []
    found = {p.parent.name for p in out.glob("*/results.json")}
    return sorted(s for s in set(slugs) | found if isinstance(s, str) and (out / s / "results.json").is_file())


def _fresh_dir(parent: Path, prefix: str) -> Path:
    while True:
        p = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def write_site(
    out_dir: str | os.PathLike[str],
    runs: list[tuple[dict, Path]],
    *,
    reproducible: bool = False,
    thumb_height: int = 48,
    jpeg_quality: int = 85,
    notes_md: str | None = None,
) -> Path:
    """Write (or update) the static site at ``out_dir`` from dissection results.

    Each run is ``(results, run_dir)``: a results dict (``docs/results-schema.md``) and the
    folder its image paths are relative to. Models already in a dissect site at
    ``out_dir`` and not among ``runs`` are kept byte for byte; a model with the same slug
    is replaced. The site is built in a folder beside ``out_dir`` and swapped in at the
    end, so an interrupted build leaves the old site (or nothing) in place.

    ``reproducible`` drops the ``created`` timestamp from the pages and from the site's
    copies of the results. ``notes_md`` is Markdown shown (sanitized) on the overview of
    every model written by this call. Returns the site folder.

    Raises :class:`DissectError` when ``out_dir`` is a non-empty folder that is not a
    dissect site (nothing is touched then), or when the results cannot be rendered.
    """
    out = Path(out_dir)
    existing = _existing_site(out)
    version = getattr(dissect, "__version__", "0")

    prepared: list[tuple[dict[str, Any], Path]] = []
    seen: set[str] = set()
    for results, run_dir in runs:
        _check_results(results)
        r = copy.deepcopy(results)
        slug = _safe_slug(r["model"].get("slug") or r["model"].get("name"), "model", _RESERVED_MODEL)
        if slug in seen:
            raise DissectError(f"two runs share the model slug {slug!r}; give each model its own slug")
        seen.add(slug)
        r["model"]["slug"] = slug
        layer_slugs: set[str] = set()
        for i, layer in enumerate(r["layers"]):
            ls = _safe_slug(layer.get("slug") or layer.get("name"), f"layer-{i}", _RESERVED_LAYER)
            if ls in layer_slugs:
                ls = f"{ls}-{i}"
            layer_slugs.add(ls)
            layer["slug"] = ls
            numbers = [u.get("unit") for u in layer["units"]]
            if len(set(numbers)) != len(numbers) or not all(isinstance(n, int) and n >= 0 for n in numbers):
                raise DissectError(f"layer {layer.get('name')!r}: unit numbers must be distinct non-negative integers")
        prepared.append((r, Path(run_dir)))

    notes = _views.render_notes(notes_md)
    env = _resources.environment()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(out.parent, f".{out.name}.building-")
    try:
        for r, run_dir in prepared:
            _build_model(
                env, tmp / r["model"]["slug"], r, run_dir, version=version, reproducible=reproducible,
                thumb_height=thumb_height, jpeg_quality=jpeg_quality, notes=notes,
            )
        kept = [s for s in existing if s not in seen]
        if out.is_dir():
            for entry in sorted(out.iterdir()):
                if entry.name in _OWNED or entry.name in seen:
                    continue
                _copy_tree(entry, tmp / entry.name)

        # The site index lists every model in the folder, new and kept, read from results.
        all_results = {r["model"]["slug"]: r for r, _ in prepared}
        for s in kept:
            try:
                all_results[s] = json.loads((out / s / "results.json").read_text(encoding="utf-8"))
                all_results[s]["model"]["slug"] = s
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DissectError(f"cannot read {out / s / 'results.json'} of the existing site: {exc}") from exc
        rows = [_views.index_row(all_results[s]) for s in sorted(all_results)]

        assets = tmp / "assets"
        assets.mkdir()
        for name in _resources.ASSETS:
            (assets / name).write_bytes(_resources.asset_bytes(name))
        (assets / "plotly.min.js").write_bytes(_resources.plotly_js())
        _write(tmp / "index.html", env.get_template("index.html").render(_views.index_page(rows, version)))
        (tmp / ".nojekyll").write_bytes(b"")
        marker = {"tool": "dissect", "tool_version": version, "schema_version": 1, "models": sorted(all_results)}
        _write(tmp / MARKER, _dump_json(marker))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    _swap(tmp, out)
    return out


def _swap(new: Path, out: Path) -> None:
    """Put ``new`` at ``out``: move the old site away, move the new one in, delete the old."""
    if not out.exists():
        os.rename(new, out)
        return
    old = _fresh_dir(out.parent, f".{out.name}.old-")
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
