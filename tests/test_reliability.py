"""--out checked up front, full disks and read-only folders, leftovers, symbolic links,
damaged cache entries, folders confined after symlinks (issue 15)."""

import errno
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from dissect import report
from dissect.atomic import clean_leftovers, fresh_dir, is_temp_name, temp_path
from dissect.cli import main
from dissect.data.labeled import labeled_from_folder
from dissect.errors import DissectError
from dissect.experiments.dissection import DissectConfig
from tiny_model import Tiny




def tiny():
    return Tiny()


def _report(tmp_path, data, out, **kw):
    return report(Tiny(), layers=["conv"], data=str(data), data_size=16, input_size=64, ablation=False,
                  cache_dir=tmp_path / "cache", out=out, reproducible=True, progress=False,
                  config=DissectConfig(top_k=2, batch_size=8, num_workers=0), **kw)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(capsys, *args):
    code = main(["report", "--model", "toy", "--weights", "none", "--quiet", *args])
    return code, capsys.readouterr().err.strip().splitlines()


# ------------------------------------------------------------------ --out, before any work
def test_out_under_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, err = _cli(capsys, "--out", str(tmp_path / "f" / "site"))
    assert code == 2 and len(err) == 1 and "is a file, so no folder can be made under it" in err[0], err


def test_out_dot_and_the_current_folder(capsys, tmp_path, monkeypatch):
    here = tmp_path / "work"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", str(here)):
        code, err = _cli(capsys, "--out", out)
        assert code == 2 and len(err) == 1 and "is the current folder" in err[0], err
    assert list(here.iterdir()) == []


def test_out_not_writable(capsys, tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    code, err = _cli(capsys, "--out", str(tmp_path / "site"))
    assert code == 2 and len(err) == 1 and f"cannot write in {tmp_path}" in err[0], err


def test_out_on_a_full_disk_is_refused_up_front(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 5 * 2 ** 20, 5 * 2 ** 20))
    code, err = _cli(capsys, "--out", str(tmp_path / "site"))
    assert code == 2 and len(err) == 1 and "only 5 MB free" in err[0], err


# ------------------------------------------------------------------ full disk, read-only, mid-run
@pytest.mark.parametrize("code, where", [(errno.ENOSPC, "dissect.site.build._write"),
                                          (errno.EROFS, "dissect.site.build.fresh_dir")])
def test_disk_full_or_read_only_while_writing_keeps_the_previous_site(tmp_path, toyworld_small, monkeypatch,
                                                                     code, where):
    out = tmp_path / "site"
    _report(tmp_path, toyworld_small, out)
    before = _files(out)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code), str(out.parent / "somewhere"))

    monkeypatch.setattr(where, fail)
    with pytest.raises(DissectError) as err:
        _report(tmp_path, toyworld_small, out, notes=None)
    msg = str(err.value)
    assert "\n" not in msg and os.strerror(code) in msg and "unit image" not in msg, msg
    assert "previous site, if any, is unchanged" in msg
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "site"]   # no leftover beside it


def test_disk_full_in_the_cache_is_one_line_exit_2(capsys, tmp_path, toyworld_small, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "stats" / "x.pt"))

    monkeypatch.setattr(torch, "save", full)
    code = main(["report", "--model", "test_reliability:tiny", "--layer", "conv", "--data", str(toyworld_small),
                 "--data-size", "16", "--input-size", "64", "--no-ablation", "--workers", "0", "--quiet",
                 "--out", str(tmp_path / "site"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert not (tmp_path / "site").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if is_temp_name(p.name)]


# ------------------------------------------------------------------ leftovers, symlinks
def test_leftovers_of_killed_runs_are_removed_and_never_published(tmp_path, toyworld_small):
    out = tmp_path / "site"
    _report(tmp_path, toyworld_small, out)
    (tmp_path / ".site.building-999999-0badc0de").mkdir()          # killed while building
    (tmp_path / ".site.building-0badc0de" / "junk").mkdir(parents=True)   # older name, no pid
    (tmp_path / ".site.old-999999-00000000").mkdir()                # killed while cleaning up
    (out / ".site.building-1-feedbeef").mkdir()                     # inside: the old `--out .` bug
    (out / ".site.building-1-feedbeef" / "secret.txt").write_text("x")
    strips = next((tmp_path / "cache" / "runs").iterdir()) / "units" / "conv"
    stale = strips / ".unit-0000.tmp-999999-abcdef01.jpg"           # killed while writing a strip
    stale.write_bytes(b"half")
    live = strips / f".unit-0001.tmp-{os.getpid()}-abcdef01.jpg"   # a live run's: kept
    live.write_bytes(b"half")
    _report(tmp_path, toyworld_small, out, zip_path=tmp_path / "site.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "site", "site.zip"]
    assert not stale.exists() and live.exists()
    names = zipfile.ZipFile(tmp_path / "site.zip").namelist()
    assert names and not [n for n in names if "building" in n or "secret" in n or ".tmp-" in n]
    assert not (out / ".site.building-1-feedbeef").exists()


def test_symlinked_out_keeps_its_link(tmp_path, toyworld_small):
    target = tmp_path / "real-site"
    target.mkdir()
    link = tmp_path / "site"
    link.symlink_to(target)
    for _ in range(2):   # a new site, then an update
        index = _report(tmp_path, toyworld_small, link)
        assert link.is_symlink() and os.readlink(link) == str(target)
        assert (target / "index.html").is_file() and index == link / "index.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "real-site", "site"]


def test_temporary_names():
    assert is_temp_name(".site.building-123-abcd0123") and is_temp_name(".x.old-abcd")
    assert is_temp_name(temp_path(__import__("pathlib").Path("/a/unit-0001.jpg")).name)
    assert not is_temp_name("site") and not is_temp_name(".nojekyll") and not is_temp_name(".dissect-site")


def test_clean_leftovers_keeps_live_runs(tmp_path):
    mine = fresh_dir(tmp_path, "x", "building")
    dead = tmp_path / ".x.building-999999-deadbeef"
    dead.mkdir()
    other = tmp_path / ".y.tmp-999999-deadbeef"
    other.mkdir()
    assert clean_leftovers(tmp_path, "x") == [dead.name]
    assert mine.exists() and other.exists()
    assert sorted(clean_leftovers(tmp_path, "x", locked=True)) == [mine.name]


# ------------------------------------------------------------------ damaged cache entries
@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickle"])
def test_damaged_cache_entries_are_recomputed(tmp_path, toyworld_small, damage):
    _report(tmp_path, toyworld_small, tmp_path / "s1")
    entries = sorted((tmp_path / "cache" / "stats").glob("stats-*.pt"))
    assert entries
    for e in entries:
        data = e.read_bytes()
        if damage == "truncate":
            e.write_bytes(data[: len(data) // 2])
        elif damage == "garbage":
            e.write_bytes(b"\x00garbage" * 10)
        else:   # a pickle that weights_only refuses (UnpicklingError)
            import pickle
            e.write_bytes(pickle.dumps(zipfile.ZipFile))
    _report(tmp_path, toyworld_small, tmp_path / "s2")
    assert _files(tmp_path / "s1") == _files(tmp_path / "s2")


# ------------------------------------------------------------------ ablation folders confined
def test_ablation_folder_reads_nothing_through_links_out(tmp_path):
    outside = tmp_path / "outside"
    (outside / "cls").mkdir(parents=True)
    img = np.full((8, 8, 3), 90, np.uint8)
    Image.fromarray(img).save(outside / "secret.png")
    Image.fromarray(img).save(outside / "cls" / "secret2.png")
    root = tmp_path / "abl"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(img).save(root / c / f"{i}.png")
    (root / "cat" / "evil.png").symlink_to(outside / "secret.png")
    (root / "dog" / "sub").symlink_to(outside / "cls")
    (root / "bird").symlink_to(outside / "cls")            # a whole class folder outside
    ok = root / "cat" / "inside.png"
    ok.symlink_to(root / "dog" / "0.png")                  # a link that stays inside is fine
    data = labeled_from_folder(root, ["cat", "dog", "bird"], 8, (0.5,) * 3, (0.5,) * 3)
    files = [str(f) for split in (data.rank, data.eval) for f in split.dataset.files]
    assert len(files) == 5 and str(ok) in files
    assert not [f for f in files if "evil" in f or "secret" in f or "/sub/" in f or "bird" in f]
    assert "bird" not in json.dumps(data.info())


def test_a_table_linked_out_of_the_probe_folder_is_refused(tmp_path, toyworld_small):
    data = tmp_path / "probe"
    shutil.copytree(toyworld_small, data)
    (tmp_path / "label.csv").write_bytes((data / "label.csv").read_bytes())
    (data / "label.csv").unlink()
    (data / "label.csv").symlink_to(tmp_path / "label.csv")
    with pytest.raises(DissectError, match="symbolic link out of"):
        _report(tmp_path, data, tmp_path / "site")
