"""Fault injection (issue 15): fuzzed probe folders, kills at random points, concurrent runs.

* **Fuzzed probe folders** (default part, in-process): a small Broden folder mutated many
  ways (corrupt and hostile CSVs, PNGs, JPEGs and paths, links out of the folder). Every
  one must end in a result or one :class:`DissectError` line (the CLI's exit 2), never
  another exception; an audit hook records every file opened, and nothing under the canary
  folder beside the probe set may be opened, nor its path or content appear in a site.
* **Kills** (slow): ``dissect report`` subprocesses killed (SIGKILL, or SIGTERM) at random
  moments over a previous site; the previous site must then be whole (old or new, byte for
  byte), and a rerun must give exactly the uninterrupted run's bytes, with no temporary
  file or folder left beside the site or in the cache.
* **Concurrent runs** (slow): several reports at once sharing one cache and one ``--out``.

Counts are printed at the end of each test (``faults: ...``) so they can be quoted.
``DISSECT_FAULT_TRIALS`` sets the number of kill trials (default 6).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dissect.atomic import is_temp_name
from dissect.cli import main
from dissect.data.broden import BrodenDataset, BrodenIndex, make_loader
from dissect.data.toyworld_probe import write_toyworld
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from tiny_model import Tiny

REPO = Path(__file__).resolve().parents[1]
CANARY_TEXT = "CANARY-7f3a-do-not-read"

# ------------------------------------------------------------------ who opens what
_OPENED: list[str] | None = None


def _audit(event, args):
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class opened_files:
    """Record the path of every file opened inside the block (``sys.addaudithook``)."""

    def __enter__(self):
        global _OPENED
        _OPENED = []
        self.paths = _OPENED
        return self

    def __exit__(self, *exc):
        global _OPENED
        _OPENED = None


def _say(capsys, line):
    with capsys.disabled():
        print(f"\nfaults: {line}")




# ------------------------------------------------------------------ fuzzed probe folders
@pytest.fixture(scope="module")
def base_probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    probe = write_toyworld(root / "probe", n=6, seed=5, image_size=64, progress=False)
    canary = root / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_text(CANARY_TEXT)
    Image.fromarray(np.full((64, 64, 3), 77, np.uint8)).save(canary / "secret.png")
    Image.fromarray(np.full((64, 64, 3), 99, np.uint8)).save(canary / "secret.jpg")
    (canary / "index.csv").write_text("image,split,ih,iw,sh,sw\n")
    return probe, canary


def _rows(probe: Path) -> list[list[str]]:
    return [line.split(",") for line in (probe / "index.csv").read_text().splitlines()]


def _write_rows(probe: Path, rows) -> None:
    (probe / "index.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")


def _label_png(path: Path, labels) -> None:
    labels = np.asarray(labels, dtype=np.int64)
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, (labels // 256) % 256
    Image.fromarray(rgb).save(path)


def _mutations(canary: Path, rng: random.Random):
    """(name, mutate(probe)) pairs: every kind of damage a careless or hostile user can bring."""
    secret = canary / "secret.png"
    muts = []

    def add(name):
        def deco(f):
            muts.append((name, f))
            return f
        return deco

    # --- paths in index.csv
    for col in (0, 7):   # the image column, a pixel-label column (object)
        for bad in ("../../canary/secret.png", str(secret), "..\\..\\canary\\secret.png", "C:/x/secret.png",
                    "images/../../canary/secret.png", "", "/", ".", "toy-00000.png/../../../canary/secret.png"):
            @add(f"path col{col} {bad!r}")
            def _(p, col=col, bad=bad):
                rows = _rows(p)
                if col >= len(rows[1]):
                    return
                rows[1][col] = bad
                _write_rows(p, rows)

    # --- links out of the folder
    @add("image symlink out")
    def _(p):
        f = p / "images" / "toy-00000.png"
        f.unlink()
        f.symlink_to(secret)

    @add("label png symlink out")
    def _(p):
        f = next((p / "images").glob("toy-00001_object.png"))
        f.unlink()
        f.symlink_to(secret)

    @add("images folder symlink out")
    def _(p):
        shutil.rmtree(p / "images")
        (p / "images").symlink_to(canary)

    @add("index.csv symlink out")
    def _(p):
        (p / "index.csv").unlink()
        (p / "index.csv").symlink_to(canary / "index.csv")

    @add("subfolder symlink out")
    def _(p):
        (p / "images" / "sub").symlink_to(canary)
        rows = _rows(p)
        rows[1][0] = "sub/secret.jpg"
        _write_rows(p, rows)

    # --- damaged CSVs
    for table in ("index.csv", "label.csv", "category.csv", "c_object.csv", "c_color.csv"):
        for kind in ("empty", "header-only", "truncate", "nonutf8", "nul", "flip", "quote", "longline",
                     "dupheader", "dropcol"):
            @add(f"{table} {kind}")
            def _(p, table=table, kind=kind):
                f = p / table
                data = f.read_bytes()
                if kind == "empty":
                    data = b""
                elif kind == "header-only":
                    data = data.split(b"\n")[0] + b"\n"
                elif kind == "truncate":
                    data = data[: rng.randrange(1, max(2, len(data)))]
                elif kind == "nonutf8":
                    i = rng.randrange(len(data))
                    data = data[:i] + b"\xff\xfe" + data[i:]
                elif kind == "nul":
                    i = rng.randrange(len(data))
                    data = data[:i] + b"\x00" + data[i:]
                elif kind == "flip":
                    b = bytearray(data)
                    for _ in range(4):
                        b[rng.randrange(len(b))] = rng.randrange(32, 127)
                    data = bytes(b)
                elif kind == "quote":
                    data = data.replace(b",", b',"', 1)
                elif kind == "longline":
                    data = data + b"x" * 200_000 + b"\n"
                elif kind == "dupheader":
                    head, _, rest = data.partition(b"\n")
                    data = head + b"," + head.split(b",")[0] + b"\n" + rest
                elif kind == "dropcol":
                    lines = data.split(b"\n")
                    data = b"\n".join(b",".join(line.split(b",")[1:]) for line in lines)
                f.write_bytes(data)

    # --- numbers in the tables
    for col, value in ((2, "abc"), (2, "-4"), (2, "0"), (2, "1e9"), (4, ""), (5, "99999999999999999999"),
                       (10, "99999"), (10, "-5"), (10, "40000"), (10, "5;;5;x"), (1, "\u202etest")):
        @add(f"index cell {col}={value!r}")
        def _(p, col=col, value=value):
            rows = _rows(p)
            if col < len(rows[1]):
                rows[1][col] = value
                _write_rows(p, rows)

    # --- label PNGs
    for what in ("undefined", "big", "garbage", "truncated", "mode-I16", "palette", "1x1", "bomb", "directory",
                 "empty", "rgba"):
        @add(f"label png {what}")
        def _(p, what=what):
            f = p / "images" / "toy-00002_object.png"
            if what == "undefined":
                _label_png(f, np.full((8, 8), 999))
            elif what == "big":
                _label_png(f, np.full((8, 8), 40000))
            elif what == "garbage":
                f.write_bytes(bytes(rng.randrange(256) for _ in range(300)))
            elif what == "truncated":
                f.write_bytes(f.read_bytes()[:40])
            elif what == "mode-I16":
                Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(f)
            elif what == "palette":
                Image.fromarray(np.zeros((8, 8), np.uint8)).convert("P").save(f)
            elif what == "1x1":
                _label_png(f, [[1]])
            elif what == "bomb":   # a header that claims 100000 x 100000 pixels
                import struct
                import zlib
                ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
                chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
                f.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
            elif what == "directory":
                f.unlink()
                f.mkdir()
            elif what == "empty":
                f.write_bytes(b"")
            elif what == "rgba":
                Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(f)

    # --- images
    for what in ("garbage", "truncated", "empty", "cmyk", "gray", "huge-claim", "all", "directory", "missing"):
        @add(f"image {what}")
        def _(p, what=what):
            f = p / "images" / "toy-00003.png"
            if what == "garbage":
                f.write_bytes(b"\xff\xd8\xff" + bytes(rng.randrange(256) for _ in range(200)))
            elif what == "truncated":
                f.write_bytes(f.read_bytes()[:100])
            elif what == "empty":
                f.write_bytes(b"")
            elif what == "cmyk":
                Image.new("CMYK", (64, 64), (10, 20, 30, 40)).save(f.with_suffix(".jpg"))
                os.replace(f.with_suffix(".jpg"), f)
            elif what == "gray":
                Image.new("L", (64, 64), 120).save(f)
            elif what == "huge-claim":
                data = bytearray(f.read_bytes())
                data[16:24] = (100000).to_bytes(4, "big") * 2
                f.write_bytes(bytes(data))
            elif what == "all":   # every image unreadable
                for g in (p / "images").glob("toy-?????.png"):
                    g.write_bytes(b"not an image")
            elif what == "directory":
                f.unlink()
                f.mkdir()
            elif what == "missing":
                f.unlink()
    return muts


def _dissect_folder(probe: Path) -> None:
    """What a report does with a probe folder, in process: index, loader, both passes, summary."""
    ds = BrodenDataset(BrodenIndex(probe), input_size=64)
    for _ in make_loader(ds, batch_size=4, num_workers=0):
        pass
    config = DissectConfig(top_k=2, batch_size=4, num_workers=0, device="cpu")
    stats = dissect_layers(Tiny(), ["conv"], ds, config, progress=False)
    summary = summarize_layer(stats["conv"], ds, config)
    json.dumps(summary, allow_nan=False)


def test_fuzzed_probe_folders_end_in_a_result_or_one_line(tmp_path, base_probe, capsys):
    probe0, canary = base_probe
    rng = random.Random(15)
    outcomes = {"ok": 0, "error": 0}
    failures = []
    muts = _mutations(canary, rng)
    for i, (name, mutate) in enumerate(muts):
        probe = tmp_path / f"p{i}"
        shutil.copytree(probe0, probe, symlinks=True)
        mutate(probe)
        with opened_files() as seen:
            try:
                with _quiet():
                    _dissect_folder(probe)
                outcomes["ok"] += 1
            except DissectError as e:
                outcomes["error"] += 1
                if "\n" in str(e) or not str(e):
                    failures.append(f"{name}: a message of {len(str(e).splitlines())} lines: {e!r}")
            except Exception as e:   # anything else is a traceback for the user
                failures.append(f"{name}: {type(e).__name__}: {e}")
        outside = [p for p in seen.paths if os.path.realpath(p).startswith(str(canary.resolve()))]
        if outside:
            failures.append(f"{name}: opened {outside}")
        shutil.rmtree(probe)
    _say(capsys, f"{len(muts)} fuzzed probe folders: {outcomes['ok']} dissected, {outcomes['error']} one-line "
                 f"errors, {len(failures)} failures; no file of the canary folder opened")
    assert not failures, "\n".join(failures)


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def tiny():
    return Tiny()


def test_fuzzed_folders_through_the_cli_publish_nothing_outside(tmp_path, base_probe, capsys):
    """A sample of the hostile folders through ``dissect report``: exit 0 or 2, and no path or
    content of the canary folder in the site."""
    probe0, canary = base_probe
    rng = random.Random(7)
    pick = ("image symlink out", "label png symlink out", "images folder symlink out", "subfolder symlink out",
            "index.csv symlink out", "path col0 '../../canary/secret.png'", "label png big", "image all")
    hostile = [m for m in _mutations(canary, rng) if m[0] in pick]
    codes = []
    for i, (name, mutate) in enumerate(hostile[:8]):
        probe = tmp_path / f"p{i}"
        shutil.copytree(probe0, probe, symlinks=True)
        mutate(probe)
        out = tmp_path / f"site{i}"
        with opened_files() as seen, _quiet():
            code = main(["report", "--model", "test_faults:tiny", "--layer", "conv", "--data", str(probe),
                         "--input-size", "64", "--no-ablation", "--workers", "0", "--quiet", "--top-k", "2",
                         "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--reproducible"])
        err = capsys.readouterr().err.strip().splitlines()
        codes.append(code)
        assert code in (0, 2), (name, code, err)
        assert code == 0 or (len(err) == 1 and err[0].startswith("dissect: error: ")), (name, err)
        assert not [p for p in seen.paths if os.path.realpath(p).startswith(str(canary.resolve()))], name
        if out.exists():
            for f in out.rglob("*"):
                if f.is_file() and f.suffix in (".html", ".json", ".csv"):
                    text = f.read_text(encoding="utf-8")
                    assert str(canary) not in text and "canary" not in text and CANARY_TEXT not in text, (name, f)
    assert 0 in codes and 2 in codes
    _say(capsys, f"{len(codes)} hostile folders through the CLI: exit codes {sorted(codes)}; "
                 "nothing of the canary folder opened or published")


# ------------------------------------------------------------------ kills and concurrent runs
def _cmd(probe: Path | str, out: Path, cache: Path, top_k: int = 3, *more: str) -> list[str]:
    return [sys.executable, "-m", "dissect", "report", "--model", "toy", "--layer", "conv4_2",
            "--data", str(probe), *more, "--no-ablation", "--workers", "0", "--batch-size", "8", "--quiet",
            "--reproducible", "--top-k", str(top_k), "--out", str(out), "--cache-dir", str(cache)]


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temps(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        if folder.exists():
            found += [str(p) for p in folder.rglob("*") if is_temp_name(p.name)]
    return found


def _run(cmd) -> None:
    subprocess.run(cmd, env=_env(), check=True)


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory):
    """The probe folder; the paths every run uses (they are in the results' command line);
    the uninterrupted run's site bytes and warm cache; a previous site (another --top-k)."""
    root = tmp_path_factory.mktemp("kills")
    probe = write_toyworld(root / "probe", n=16, seed=3, image_size=64, progress=False)
    out, cache = root / "w" / "site", root / "w" / "cache"
    t0 = time.time()
    _run(_cmd(probe, out, cache))
    seconds = time.time() - t0
    reference = _tree(out)
    shutil.move(cache, root / "warm-cache")
    shutil.rmtree(out)
    _run(_cmd(probe, out, cache, 2))
    previous = _tree(out)
    shutil.move(out, root / "prev-site")
    shutil.rmtree(root / "w")
    return dict(probe=probe, out=out, cache=cache, seconds=seconds, reference=reference,
                warm_cache=root / "warm-cache", prev_site=root / "prev-site", previous=previous)


@pytest.mark.slow
def test_kills_at_random_points_then_rerun_gives_the_same_bytes(kill_setup, capsys):
    k = kill_setup
    probe, out, cache, reference, previous = k["probe"], k["out"], k["cache"], k["reference"], k["previous"]
    work = out.parent
    trials = int(os.environ.get("DISSECT_FAULT_TRIALS", "6"))
    rng = random.Random(int(os.environ.get("DISSECT_FAULT_SEED", "15")))
    killed = finished = terms = 0
    states = {"old": 0, "new": 0}
    for t in range(trials):
        shutil.copytree(k["prev_site"], out)       # a previous site that must survive
        if t % 2:                                  # half the trials start from a warm cache
            shutil.copytree(k["warm_cache"], cache)
        sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
        proc = subprocess.Popen(_cmd(probe, out, cache), env=_env(), stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, k["seconds"] * (0.6 if t % 2 else 1.1)))
        if proc.poll() is None:
            proc.send_signal(sig)
            killed += 1
            terms += sig == signal.SIGTERM
        code = proc.wait()
        err = proc.stderr.read().decode()
        assert "Traceback" not in err, err
        finished += code == 0
        # the site is whole: the previous one or the new one, byte for byte
        now = _tree(out)
        assert now in (previous, reference), f"trial {t}: a half-written site after {sig.name}"
        states["old" if now == previous else "new"] += 1
        if sig == signal.SIGTERM and code != 0:     # a terminated run cleans up after itself
            assert not _temps(work), _temps(work)
        _run(_cmd(probe, out, cache))
        assert _tree(out) == reference, f"trial {t}: rerun differs from the uninterrupted run"
        assert not _temps(work), _temps(work)
        shutil.rmtree(work)
    _say(capsys, f"{trials} kill trials ({killed} killed: {killed - terms} SIGKILL, {terms} SIGTERM; "
                 f"{finished} finished first); site after the kill: {states['old']} previous, "
                 f"{states['new']} new, 0 half-written; every rerun byte-identical to the uninterrupted run")


@pytest.mark.slow
def test_concurrent_runs_share_a_cache_and_an_out(kill_setup, capsys):
    k = kill_setup
    probe, out, cache, reference = k["probe"], k["out"], k["cache"], k["reference"]
    runs = 4
    procs = [subprocess.Popen(_cmd(probe, out, cache), env=_env(), stderr=subprocess.PIPE) for _ in range(runs)]
    # and two more on their own --out, same cache, one toy world generated by both at once
    own = [out.parent / f"own{i}" for i in range(2)]
    gen = [subprocess.Popen(_cmd("toyworld", o, cache, 3, "--data-size", "12"), env=_env(),
                            stderr=subprocess.PIPE) for o in own]
    codes = [p.wait() for p in procs + gen]
    errs = [p.stderr.read().decode() for p in procs + gen]
    assert codes == [0] * (runs + 2), errs
    assert _tree(out) == reference
    a, b = _tree(own[0]), _tree(own[1])
    assert a.keys() == b.keys() and a["toy/index.html"].replace(b"own0", b"own1") == b["toy/index.html"]
    assert not _temps(out.parent), _temps(out.parent)
    shutil.rmtree(out.parent)
    _say(capsys, f"{runs} concurrent runs on one --out and cache, 2 more generating one toy world at once: "
                 "all exit 0, the site equals the single run's bytes, no temporary file left")
