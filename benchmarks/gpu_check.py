"""The prepared device check (issue 22): one command, one table, one JSON file.

    python3 benchmarks/gpu_check.py --device cuda --out gpu_check.json    # one CUDA GPU, no network, < 8 min
    python3 benchmarks/gpu_check.py --device cpu --small                  # the same steps, tiny (CI runs it)

Steps, each one row of the table (``ok``, ``failed`` with its first error line, or
``skipped`` with why; a failed step never stops the others):

1. ``cuda tests``: the device-sensitive tests on the device (``pytest -m cuda`` with
   ``DISSECT_TEST_DEVICE=cuda``: a missing GPU fails them); on the CPU only their wiring
   (they skip);
2. ``default report``: ``dissect report`` from an empty cache, timed, and how many unit
   labels the default precision (bf16 autocast on CUDA) changes against ``--precision fp32``;
3. ``probe set``: a Broden-sized toy world (20,000 images at 224 px, labels at 112 px);
4. ``vgg16 dissection``: VGG-16 conv5_3 (random weights): the forward-pass floor (decode +
   forward once, at the dissection's batch size), the dissection (every statistic), their
   ratio, images/s, and the time extrapolated to Broden's 63,305 images;
5. ``vgg16 report``: the whole report with its site on that set, extrapolated likewise;
   cold and warm label cache where this build has ``--label-cache`` (else skipped, saying so);
6. ``single-unit sweep``: 513 ablations (none, then each of conv5_3's 512 units) over every
   labeled image of the set, scaled to the 36,500 Places365 validation images;
7. ``generator``: a ProGAN-sized generator (``progan-church`` architecture, random weights,
   256 px) dissected on its own images labeled by the toy segmenter, with ablation and
   insertion, and its site.

``--small`` shrinks every size (and uses the toy GAN) so the whole check runs on two CPU
cores in about a minute; the numbers then mean nothing, the point is that nothing rots.
On a GPU the JSON also says which of issue 22's goals were met.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from broden_sized_probe import BRODEN_IMAGES
from common import ROOT, model_and_layer, timed, toyworld_set
from floor import floor_pass

PLACES_VAL_IMAGES = 36_500    # the 2020 paper's ablation set (Places365 validation)
GOALS = {   # issue 22's goals on one current GPU (seconds, or a ratio)
    "dissection / floor": 1.2,
    "vgg16 conv5_3 dissection at 63,305 images (s)": 60.0,
    "single-unit sweep at 36,500 images (s)": 60.0,
    "default report (s)": 30.0,
}


#: the test files with device-sensitive tests (those taking the ``device`` fixture); named, so
#: that no other file's imports (Playwright, test-only packages) need to be on the machine
DEVICE_TESTS = tuple(f"tests/test_{name}.py" for name in
                     ("dissection", "stats", "ablation", "generator", "compare", "nonfinite", "speed", "gpu"))


@dataclasses.dataclass(frozen=True)
class Sizes:
    images: int = 20_000          # the Broden-sized set
    image_size: int = 224
    classifier: str = "vgg16"     # random weights, its last conv layer (conv5_3)
    generator: str = "progan-church"
    generated: int = 2_000        # the generator's probe set
    gen_samples: int = 256        # latents of the generator ablation
    gen_insert_samples: int = 32
    sweep_units: int | None = None   # None: every unit (513 ablations)
    report_data_size: int | None = None   # None: the default report, as it is
    test_files: tuple[str, ...] = DEVICE_TESTS


#: --small: every step on the toy models and a few images, the default report cut down to the
#: toy classifier's last layer (the steps' code paths, not their numbers)
SMALL = Sizes(images=24, image_size=64, classifier="toy", generator="toygan", generated=24, gen_samples=4,
              gen_insert_samples=2, sweep_units=4, report_data_size=24,
              test_files=("tests/test_stats.py",))


class Check:
    """The rows of the table, each step timed and its failure kept to one line."""

    def __init__(self, budget_s: float):
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def step(self, name: str, fn: Callable[[], dict], note: str = "") -> dict:
        row = {"step": name, "status": "ok", "seconds": None, "numbers": {}, "note": note}
        spent = time.perf_counter() - self.t0
        if spent > self.budget_s:
            row.update(status="skipped", note=f"the check's time budget ({self.budget_s:.0f}s) was spent")
        else:
            t = time.perf_counter()
            try:
                got = fn() or {}
                row["note"] = got.pop("_note", note)
                if got.pop("_skipped", False):
                    row["status"] = "skipped"
                row["numbers"] = got
            except Exception as e:   # one line in the table, the traceback on stderr
                traceback.print_exc()
                first = (str(e).strip().splitlines() or [""])[0][:200]
                row.update(status="failed", note=f"{type(e).__name__}: {first}")
            row["seconds"] = round(time.perf_counter() - t, 2)
        self.rows.append(row)
        print(f"gpu_check: {name}: {row['status']} ({row['seconds']}s) {row['numbers']} {row['note']}",
              file=sys.stderr, flush=True)
        return row


def run_tests(device: torch.device, sizes: Sizes) -> dict:
    """The device-marked tests in a subprocess; counts from pytest's summary line."""
    env = {**os.environ, "DISSECT_TEST_DEVICE": "cuda" if device.type == "cuda" else "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                        *sizes.test_files], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    out = r.stdout + r.stderr
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    if r.returncode not in (0,):
        bad = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))][:3]
        raise RuntimeError(f"pytest exit {r.returncode}: {counts}; " + " | ".join(bad))
    return counts


def site_labels(site: Path) -> dict[tuple, str | None]:
    """Every unit's label in a site's results.json files, by (model, layer, unit)."""
    out = {}
    for path in sorted(site.glob("*/results.json")):
        r = json.loads(path.read_text())
        for layer in r.get("layers", []):
            for u in layer["units"]:
                out[path.parent.name, layer["name"], u["unit"]] = u["label"]
    return out


def default_report(work: Path, device: torch.device, sizes: Sizes) -> dict:
    import dissect
    from dissect.experiments.dissection import DissectConfig
    kw: dict = dict(cache_dir=work / "default-cache", progress=False)
    if sizes.report_data_size is not None:   # --small: the toy classifier's last layer on a few images
        loaded, layer = model_and_layer("toy")
        kw.update(model="toy", layers=[layer], data_size=sizes.report_data_size, shipped_comparisons=False,
                  ablation=False)
    t: dict = {}
    with timed("report", t):
        dissect.report(out=work / "default-site", config=DissectConfig(device=str(device)), **kw)
    got = {"seconds": round(t["report"], 2)}
    if device.type != "cuda":
        got["_note"] = "on the CPU the default precision is fp32: no label can differ"
        return got
    kw.update(ablation=False, interventions=False)
    dissect.report(out=work / "default-fp32", config=DissectConfig(device=str(device), precision="fp32"), **kw)
    a, b = site_labels(work / "default-site"), site_labels(work / "default-fp32")
    common = sorted(set(a) & set(b))
    got.update(units=len(common), labels_differing_from_fp32=sum(a[k] != b[k] for k in common))
    return got


def class_names(loaded, root: Path) -> list[str]:
    """The model's class names; for a model without them (VGG-16, ImageNet's 1000 outputs with
    random weights) the toy world's scenes as its first outputs and placeholders for the rest,
    so that every labeled image of the set is swept (the timing does not depend on names)."""
    if loaded.class_names:
        return list(loaded.class_names)
    from dissect.data.broden import BrodenIndex
    from dissect.data.labeled import CLASS_CATEGORY
    index = BrodenIndex(root)
    scenes = sorted({lab.display for lab in index.labels.values() if lab.category == CLASS_CATEGORY})
    outputs = int(getattr(loaded.spec, "num_classes", 0) or len(scenes))
    return scenes + [f"output-{i}" for i in range(len(scenes), outputs)]


def label_cache_option() -> tuple[str, str] | None:
    """Where this build takes ``--label-cache`` (``("report", name)`` or ``("config", name)``),
    or None when it has none (the label cache is another branch's work)."""
    import dissect.pipeline as pipeline
    from dissect.experiments.dissection import DissectConfig
    if "label_cache" in {f.name for f in dataclasses.fields(pipeline.ReportOptions)}:
        return ("report", "label_cache")
    if "label_cache" in {f.name for f in dataclasses.fields(DissectConfig)}:
        return ("config", "label_cache")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (CI, on the CPU)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON table (default gpu_check.json)")
    p.add_argument("--work", type=Path, default=None, help="folder for probe sets, caches, sites (default: temp)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds after which later steps are skipped (default 450)")
    p.add_argument("--skip-tests", action="store_true", help="leave out step 1 (the CUDA tests)")
    p.add_argument("--workers", type=int, default=None,
                   help="image decoding processes of the VGG-16 steps (default: the product's, up to 4)")
    args = p.parse_args()
    from dissect.data.broden import BrodenDataset
    from dissect.data.labeled import open_labeled_data
    from dissect.devices import resolve_device
    from dissect.experiments.ablation import AblationConfig, split_runners
    from dissect.experiments.dissection import DissectConfig, dissect_layers, dissection_batch_size
    from dissect.experiments.generator import GeneratorExperimentConfig
    import dissect

    device = resolve_device(args.device)
    sizes = SMALL if args.small else Sizes()
    work = args.work or Path(tempfile.mkdtemp(prefix="dissect-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args.budget)
    ctx: dict = {}

    if args.skip_tests:
        check.rows.append({"step": "cuda tests", "status": "skipped", "seconds": None, "numbers": {},
                           "note": "--skip-tests"})
    else:
        check.step("cuda tests", lambda: run_tests(device, sizes))
    check.step("default report", lambda: default_report(work, device, sizes))

    def probe() -> dict:
        ctx["root"] = toyworld_set(work, sizes.images, sizes.image_size)
        return {"images": sizes.images, "px": sizes.image_size}
    check.step("probe set", probe, note="toy world, Broden's format and sizes")

    def vgg_dissection() -> dict:
        loaded, layer = model_and_layer(sizes.classifier)
        ctx["vgg"] = (loaded, layer)
        ds = BrodenDataset(ctx["root"], input_size=sizes.image_size, mean=loaded.mean, std=loaded.std)
        config = DissectConfig(device=str(device), num_workers=args.workers)
        config.batch_size = dissection_batch_size(loaded.module, [layer], ds, config)
        model = loaded.module.to(device).eval()
        warm = BrodenDataset(ctx["root"], input_size=sizes.image_size, mean=loaded.mean, std=loaded.std,
                             indices=range(min(len(ds), 2 * config.batch_size)))
        floor_pass(model, layer, warm, config, device)          # warm-up: kernels, page cache
        t: dict = {}
        with timed("floor", t):
            n = floor_pass(model, layer, ds, config, device)
        with timed("dissection", t):
            dissect_layers(model, [layer], ds, config, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return {"images": n, "batch_size": config.batch_size, "precision": config.precision, "workers": args.workers,
                "floor_s": round(t["floor"], 2), "dissection_s": round(t["dissection"], 2),
                "ratio": round(t["dissection"] / t["floor"], 3),
                "images_per_s": round(n / t["dissection"], 1),
                "dissection_at_63305_s": round(t["dissection"] * BRODEN_IMAGES / n, 1)}
    check.step(f"{sizes.classifier} dissection", vgg_dissection)

    where = label_cache_option()

    def vgg_report(kind: str) -> dict:
        loaded, layer = ctx["vgg"]
        extra: dict = {}
        config = DissectConfig(device=str(device), num_workers=args.workers)
        if kind != "plain":
            scope, name = where
            if scope == "report":
                extra[name] = "auto"
            else:
                config = dataclasses.replace(config, **{name: "auto"})
        cache = work / ("vgg-cache" if kind != "plain" else "vgg-cache-plain")
        t: dict = {}
        with timed("report", t):
            dissect.report(model=sizes.classifier, weights="none", data=str(ctx["root"]), layers=[layer], ablation=False,
                           out=work / f"vgg-site-{kind}", cache_dir=cache, force=kind == "warm",
                           progress=False, config=config, **extra)
        return {"report_s": round(t["report"], 2), "report_at_63305_s": round(t["report"] * BRODEN_IMAGES / sizes.images, 1)}

    if where is None:
        check.step(f"{sizes.classifier} report + site", lambda: vgg_report("plain"),
                   note="no --label-cache in this build: one report, no cold/warm rows")
        check.rows.append({"step": f"{sizes.classifier} report, label cache warm", "status": "skipped", "seconds": None,
                           "numbers": {}, "note": "this build has no --label-cache (another branch of issue 22)"})
    else:
        check.step(f"{sizes.classifier} report + site, label cache cold", lambda: vgg_report("cold"))
        check.step(f"{sizes.classifier} report + site, label cache warm", lambda: vgg_report("warm"),
                   note="--force: the dissection again, the labels from the cache")

    def sweep() -> dict:
        loaded, layer = ctx["vgg"]
        data = open_labeled_data(ctx["root"], class_names(loaded, ctx["root"]), sizes.image_size, loaded.mean,
                                 loaded.std)
        t0 = time.perf_counter()
        runners = split_runners(loaded.module, layer, data, AblationConfig(device=str(device), num_workers=args.workers), device)
        C = runners[0].num_units
        eye = torch.ones(C + 1, C)
        eye[torch.arange(1, C + 1), torch.arange(C)] = 0.0
        if sizes.sweep_units is not None:
            eye = eye[:sizes.sweep_units + 1]
        for runner in runners:
            runner.run(eye)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        images = sum(len(r) for r in runners)
        full = seconds * (C + 1) / len(eye)     # (--small: scaled to every unit)
        return {"units": C, "ablations": len(eye), "images": images, "sweep_s": round(seconds, 2),
                "sweep_at_36500_s": round(full * PLACES_VAL_IMAGES / images, 1),
                "chunk_splits_on_oom": sum(r.parts.splits for r in runners)}
    check.step("single-unit sweep", sweep)

    def generator() -> dict:
        interventions = GeneratorExperimentConfig(device=str(device), samples=sizes.gen_samples,
                                                  insert_samples=sizes.gen_insert_samples,
                                                  **({"curve_samples": 1, "strip_samples": 2, "random_draws": 2,
                                                      "layers": ("layer3",), "top_n": (1,), "units": 1, "region": 4} if args.small else {}))
        t: dict = {}
        with timed("report", t):
            dissect.report(model=sizes.generator, weights="none", segmenter="toy", data_size=sizes.generated,
                           **({"layers": ["layer3"]} if args.small else {}),
                           interventions=interventions, out=work / "gen-site", cache_dir=work / "gen-cache",
                           progress=False, config=DissectConfig(device=str(device)))
        r = json.loads(next((work / "gen-site").glob("*/results.json")).read_text())
        gen = r.get("generator") or {}
        layers = gen.get("layers", [])
        return {"model": sizes.generator, "probe_images": sizes.generated, "report_s": round(t["report"], 2),
                "ablations": sum(len(layer["ablation"]) for layer in layers),
                "insertions": sum(len(layer["insertion"]) for layer in layers)}
    check.step("generator dissection + interventions", generator,
               note="random weights, labels by the toy segmenter")

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "python": platform.python_version(), "small": args.small,
        "seconds": round(time.perf_counter() - check.t0, 1), "rows": check.rows,
        "goals": goals(check.rows) if device.type == "cuda" and not args.small else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"(written to {args.out})")
    sys.exit(0 if all(r["status"] != "failed" for r in check.rows) else 1)


def goals(rows: list[dict]) -> dict:
    """Issue 22's GPU goals against this run's numbers (None where a step did not run)."""
    by = {r["step"]: r["numbers"] for r in rows}
    vgg = by.get("vgg16 dissection", {})
    sweep = by.get("single-unit sweep", {})
    got = {"dissection / floor": vgg.get("ratio"),
           "vgg16 conv5_3 dissection at 63,305 images (s)": vgg.get("dissection_at_63305_s"),
           "single-unit sweep at 36,500 images (s)": sweep.get("sweep_at_36500_s"),
           "default report (s)": by.get("default report", {}).get("seconds")}
    return {k: {"goal": GOALS[k], "measured": v, "met": None if v is None else v <= GOALS[k]} for k, v in got.items()}


def table(report: dict) -> str:
    """The rows as one plain-text table."""
    head = (f"gpu_check on {report['gpu'] or report['device']} (torch {report['torch']}, "
            f"{'small' if report['small'] else 'full'} sizes), {report['seconds']}s, {report['date']}")
    lines = [head, f"{'step':40s} {'status':8s} {'seconds':>8s}  numbers / note"]
    for r in report["rows"]:
        nums = ", ".join(f"{k}={v}" for k, v in r["numbers"].items())
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"{r['step']:40s} {r['status']:8s} {secs:>8s}  {nums}{' | ' if nums and r['note'] else ''}{r['note']}")
    if report["goals"]:
        lines.append("goals (issue 22, one current GPU):")
        for k, g in report["goals"].items():
            lines.append(f"  {k:48s} goal <= {g['goal']:<6g} measured {g['measured']}  "
                         f"{'met' if g['met'] else 'NOT met' if g['met'] is False else '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
