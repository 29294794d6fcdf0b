"""Build the site: gather views, copy images and assets, render pages, swap atomically.

Each page is rendered from its shared context (:mod:`dissect.site.context`) plus its own
view; a layer's extra pages come from the page kinds of :mod:`dissect.site.kinds`.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from dissect.errors import DissectError
from dissect.experiments.comparison import build_comparison
from dissect.site import views
from dissect.atomic import clean_leftovers, folder_lock, fresh_dir, is_temp_name
from dissect.devices import usable_cpus
from dissect.site.bases import basis_records
from dissect.site.compare_page import compare_page
from dissect.site.context import ModelContext, compare_context, index_context
from dissect.site.folder import MARKER, OWNED, copy_tree, existing_models, site_target, swap
from dissect.site.format import unit_file, unit_label
from dissect.site.images import copy_image, write_strip
from dissect.site.kinds import layer_pages
from dissect.site.pagekind import LayerPages
from dissect.site.resources import ASSETS, asset_bytes, environment, plotly_js
from dissect.slugs import slugify
from dissect.version import __version__

#: Names a model folder may not take (the site's own files) and a layer folder may not take.
_RESERVED_MODEL = OWNED
_RESERVED_LAYER = {"index.html", "results.json", "provenance.json"}


def _workers() -> int:
    return min(8, usable_cpus())


def _safe_slug(slug: Any, fallback: str, reserved: set[str]) -> str:
    s = slugify(slug, fallback)
    return fallback if s in reserved else s


def _dump_json(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    except ValueError as exc:
        raise DissectError(f"results hold a value JSON cannot carry (NaN or infinity): {exc}") from exc


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _render(env: jinja2.Environment, path: Path, template: str, shared: dict[str, Any], own: dict[str, Any]) -> None:
    """Write the page ``path``: ``template`` rendered with its shared context and its own view."""
    _write(path, env.get_template(template).render({**shared, **own}))


def _check_results(results: Any) -> None:
    if not isinstance(results, dict) or results.get("schema") != "dissect.results":
        raise DissectError("not a dissect results dict (schema must be 'dissect.results')")
    if results.get("schema_version") != 1:
        raise DissectError(
            f"results schema_version {results.get('schema_version')!r} is not supported; this dissect reads version 1"
        )


def _units_csv(ctx: ModelContext, layer: dict[str, Any]) -> str:
    cats = ctx.categories
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["unit", "label", "category", "iou", "detector", "threshold", "active_fraction", "max_activation", "dead"]
    for c in cats:
        head += [f"top_{c}", f"top_{c}_iou"]
    head += ["saturated", "none_reason", "iou_lo", "iou_hi", "detector_interval"]   # added later, so at the end (docs/results-schema.md)
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
        row += [cell(u.get("saturated")), cell(u.get("none_reason"))]
        lo, hi = u.get("iou_interval") or (None, None)
        row += [cell(lo), cell(hi), cell(u.get("detector_interval"))]
        w.writerow(row)
    return buf.getvalue()


def _build_grid(env: jinja2.Environment, ctx: ModelContext, ldir: Path, layer: dict[str, Any], run_dir: Path,
                pages: LayerPages, thumb_height: int, jpeg_quality: int) -> None:
    """Write the folder ``ldir`` of a layer (or of a basis's features, ``layer["unit_word"]``
    "feature"): its strips, units.csv, grid and unit pages."""
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
            lambda job: write_strip(job[1], img_dir, job[2], thumb_height=thumb_height, jpeg_quality=jpeg_quality),
            jobs,
        ))
    images: dict[int, dict[str, Any]] = {}
    for (u, _, _), (full, thumb) in zip(jobs, written):
        images[u["unit"]] = {"full": full, "thumb": thumb}
        # In the site the model folder is the run folder: strips point at the copies.
        u["strip"] = f"{ldir.name}/{full.src}"
        images[u["unit"]]["formula"] = []
        for r in (u.get("formula") or {}).get("strips") or []:   # the formula's rows, copied alike
            row = copy_image(Path(run_dir) / r["src"], img_dir, Path(r["src"]).name)
            images[u["unit"]]["formula"].append(row)
            r["src"] = f"{ldir.name}/{row.src}"
    word = layer.get("unit_word", "unit")
    _write(ldir / "units.csv", _units_csv(ctx, layer))
    _render(env, ldir / "index.html", "layer.html", ctx.layer_context(layer),
            {**views.layer_page(ctx, layer, images), "unit_word": word, "basis": layer.get("basis_intro")})
    for i, u in enumerate(layer["units"]):
        shared = ctx.layer_context(layer, leaf=f"{word} {u['unit']}", title=f"{word} {u['unit']}: {unit_label(u)}")
        _render(env, ldir / unit_file(u["unit"]), "unit.html", shared,
                {**views.unit_page(ctx, layer, i, images, pages), "unit_word": word})


def _build_model(
    env: jinja2.Environment,
    dest: Path,
    results: dict[str, Any],
    run_dir: Path,
    *,
    version: str,
    reproducible: bool,
    thumb_height: int,
    jpeg_quality: int,
    notes: Markup | None,
) -> None:
    """Write one model folder ``dest`` from ``results`` (already holding safe slugs)."""
    dest.mkdir()
    site_results = results  # already the caller's private copy
    if reproducible and isinstance(site_results.get("provenance"), dict):
        site_results["provenance"].update(created=None, seconds=None)
    ctx = ModelContext(site_results, version, reproducible)
    slugs = [layer["slug"] for layer in site_results["layers"]]
    pages_by_layer: list[LayerPages] = []

    for layer in site_results["layers"]:
        ldir = dest / layer["slug"]
        pages = layer_pages(site_results, layer)
        pages_by_layer.append(pages)
        _build_grid(env, ctx, ldir, layer, run_dir, pages, thumb_height, jpeg_quality)
        for kind, entry in pages:
            if kind.copy_media is not None:
                kind.copy_media(entry, run_dir, ldir)
            _render(env, ldir / kind.file, kind.template, ctx.layer_context(layer, leaf=kind.label, plotly=kind.plotly),
                    kind.view(ctx, layer, entry))
        for basis in basis_records(site_results, layer):   # a basis's features: a grid beside the layer's
            _build_grid(env, ctx, dest / basis["slug"], basis, run_dir, [], thumb_height, jpeg_quality)

    overview = views.model_page(ctx, slugs, notes, pages_by_layer)
    _render(env, dest / "index.html", "model.html", ctx.overview_context(views.overview_has_charts(overview)), overview)
    _write(dest / "results.json", _dump_json(site_results))
    prov = {k: site_results.get(k) for k in ("schema", "schema_version", "model", "probe", "params", "provenance")}
    _write(dest / "provenance.json", _dump_json(prov))


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
    named = Path(out_dir)
    out = site_target(named)  # a symbolic link keeps pointing at the site: it is built at its target
    existing_models(named)     # the check of --out, before anything is prepared
    version = __version__

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

    notes = views.render_notes(notes_md)
    env = environment()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # One run at a time builds and swaps a site in this folder; leftovers of killed runs go.
        with folder_lock(out.parent):
            clean_leftovers(out.parent, out.name, locked=True)
            _build_and_swap(env, out, prepared, seen, version, reproducible, thumb_height, jpeg_quality, notes)
    except OSError as exc:
        raise DissectError(f"cannot write the site at {named}: {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if exc.filename else ''}; "
                           "the previous site, if any, is unchanged") from exc
    return named


def _build_and_swap(env, out: Path, prepared, seen, version, reproducible, thumb_height, jpeg_quality,
                    notes) -> None:
    existing = existing_models(out)
    tmp = fresh_dir(out.parent, out.name, "building")
    try:
        for r, run_dir in prepared:
            _build_model(
                env, tmp / r["model"]["slug"], r, run_dir, version=version, reproducible=reproducible,
                thumb_height=thumb_height, jpeg_quality=jpeg_quality, notes=notes,
            )
        kept = [s for s in existing if s not in seen]
        if out.is_dir():
            for entry in sorted(out.iterdir()):
                if entry.name in OWNED or entry.name in seen or is_temp_name(entry.name):
                    continue
                copy_tree(entry, tmp / entry.name)

        # The site index lists every model in the folder, new and kept, read from results.
        all_results = {r["model"]["slug"]: r for r, _ in prepared}
        for s in kept:
            try:
                all_results[s] = json.loads((out / s / "results.json").read_text(encoding="utf-8"))
                all_results[s]["model"]["slug"] = s
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DissectError(f"cannot read {out / s / 'results.json'} of the existing site: {exc}") from exc
        rows = [views.index_row(all_results[s]) for s in sorted(all_results)]
        comparison = build_comparison([all_results[s] for s in sorted(all_results)])

        assets = tmp / "assets"
        assets.mkdir()
        for name in ASSETS:
            (assets / name).write_bytes(asset_bytes(name))
        (assets / "plotly.min.js").write_bytes(plotly_js())
        _render(env, tmp / "index.html", "index.html", index_context(rows, version),
                {**views.index_page(rows), "compare_href": "compare.html" if comparison else None})
        if comparison:
            _write(tmp / "comparison.json", _dump_json(comparison))
            _render(env, tmp / "compare.html", "compare.html", compare_context(version),
                    compare_page(comparison, [all_results[s] for s in sorted(all_results)]))
        (tmp / ".nojekyll").write_bytes(b"")
        marker = {"tool": "dissect", "tool_version": version, "schema_version": 1, "models": sorted(all_results)}
        _write(tmp / MARKER, _dump_json(marker))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    swap(tmp, out)
