"""Downloads end to end against a local HTTP server serving files in the published formats.

A tiny Broden zip with the real layout (one top folder ``broden1_224/`` holding index.csv,
the tables and images/), a ``places_val``-style zip (one folder per class), and a weights
file named by torch hub's convention (``name-<sha256 prefix>.pth``): each is downloaded,
checked and unpacked; a cut connection is resumed with a Range request; a truncated
checkpoint is re-fetched; a corrupt zip is refused and deleted; and without a network a
report fails before any work, in seconds, with one line per missing file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import dissect
from dissect import cli
from dissect.data import catalog
from dissect.data.toyworld_probe import write_toyworld
from dissect.download import RemoteFile, download, ensure_files, fetch_file, partial_path
from dissect.errors import DissectError
from dissect.experiments.ablation import AblationConfig
from dissect.models import weights as weights_mod
from dissect.models.registry import ModelSpec
from dissect.models.weights import checkpoint_dir, resolve_weights

UNREACHABLE = "http://127.0.0.1:9"   # the discard port: nothing listens, the connection is refused


class _Server:
    """Serves ``files`` (name -> bytes) with HTTP Range support; ``cut[name] = n`` sends
    only the first n bytes of the next full response (with the full Content-Length) and
    closes the connection, as a broken download does."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = outer.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng:
                    outer.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                cut = outer.cut.pop(self.path.lstrip("/"), None)
                self.wfile.write(body[:cut] if cut is not None else body)
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    with _Server() as s:
        yield s


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return checkpoint_dir()


def _zip_folder(folder: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{top}/", b"")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


@pytest.fixture(scope="module")
def broden_zip(tmp_path_factory) -> bytes:
    """Eight 64 px scenes in Broden's format, zipped as the published archive is."""
    root = write_toyworld(tmp_path_factory.mktemp("bz") / "set", n=8, seed=3, image_size=64, progress=False)
    return _zip_folder(root, "broden1_224")


def _places_zip(tmp_path: Path, classes: list[str], per_class: int = 4) -> bytes:
    root = tmp_path / "pv"
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (80, 60), (40 * k % 256, 17 * i % 256, 90)).save(root / name / f"{i:04d}.jpg")
    return _zip_folder(root, "places_val")


def _publish(monkeypatch, name: str, url: str, data: bytes | None) -> None:
    """Point the published data set ``name`` at ``url`` with the MD5 of ``data``."""
    d = catalog.PUBLISHED_DATA[name]
    md5 = hashlib.md5(data).hexdigest() if data is not None else d.md5
    monkeypatch.setitem(catalog.PUBLISHED_DATA, name,
                        catalog.PublishedData(name, url, d.folder, md5=md5, expect=d.expect))


# --------------------------------------------------------------------------- downloads


def test_resume_after_a_cut_connection(server, tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    server.files["big.bin"] = payload
    server.cut["big.bin"] = 1 << 20
    dest = tmp_path / "big.bin"
    sha = hashlib.sha256(payload).hexdigest()
    with pytest.raises(DissectError, match="connection closed after 1048576 of 3145728 bytes"):
        download(f"{server.url}/big.bin", dest, sha256=sha, progress=False)
    assert not dest.exists() and partial_path(dest).stat().st_size == 1 << 20
    download(f"{server.url}/big.bin", dest, sha256=sha, progress=True)
    assert server.ranges == ["bytes=1048576-"]              # resumed, not started over
    assert dest.read_bytes() == payload and not partial_path(dest).exists()


def test_a_server_without_range_starts_over(tmp_path: Path) -> None:
    payload = b"abc" * 1000
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    dest = tmp_path / "out" / "src.bin"
    dest.parent.mkdir()
    partial_path(dest).write_bytes(b"garbage that a resume would keep")
    download(src.as_uri(), dest, md5=hashlib.md5(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload


def test_mirror_is_tried_when_the_first_place_fails(server, tmp_path: Path) -> None:
    server.files["x.bin"] = b"x" * 100
    dest = download(f"{UNREACHABLE}/x.bin", tmp_path / "x.bin", mirrors=(f"{server.url}/x.bin",), progress=False)
    assert dest.read_bytes() == b"x" * 100


def _weights_file(tmp_path: Path) -> tuple[str, bytes, dict]:
    torch.manual_seed(0)
    state = torch.nn.Linear(4, 3).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return f"tiny_places365-{hashlib.sha256(data).hexdigest()[:8]}.pth", data, state


def test_url_weights_downloaded_checked_truncated_refetched(server, hub: Path, tmp_path: Path) -> None:
    name, data, state = _weights_file(tmp_path)
    server.files[name] = data
    spec = ModelSpec(name="tiny-places", builder=lambda n: torch.nn.Linear(4, n), default_weights=f"url:{server.url}/{name}",
                     class_names=("a", "b", "c"), num_classes=3)
    src = resolve_weights(spec, spec.name, None, progress=False)
    assert src.label == f"url:{name}" and src.class_names == ["a", "b", "c"]
    assert torch.equal(src.state["weight"], state["weight"])
    assert (hub / name).read_bytes() == data and src.file_sha256 == hashlib.sha256(data).hexdigest()
    # a truncated copy in the cache is refused and fetched again
    (hub / name).write_bytes(data[: len(data) // 2])
    src = resolve_weights(spec, spec.name, None, progress=False)
    assert (hub / name).read_bytes() == data and torch.equal(src.state["bias"], state["bias"])
    # a file whose SHA-256 does not start with the hex of its name is refused, nothing kept
    bad = "other_places365-0000beef.pth"
    server.files[bad] = data
    with pytest.raises(DissectError, match="checksum mismatch"):
        resolve_weights(dataclasses.replace(spec, default_weights=f"url:{server.url}/{bad}"), spec.name, None, False)
    assert not (hub / bad).exists() and not partial_path(hub / bad).exists()


def test_broden_zip_downloaded_unpacked_and_corrupt_zip_refused(server, broden_zip, tmp_path: Path, monkeypatch) -> None:
    server.files["broden1_224.zip"] = broden_zip
    _publish(monkeypatch, "broden1_224", f"{server.url}/broden1_224.zip", broden_zip)
    cache = tmp_path / "cache"
    folder = catalog.fetch_data("broden", cache, progress=False)
    assert folder == cache / "broden" / "broden1_224" and (folder / "index.csv").is_file()
    assert len(list((folder / "images").iterdir())) > 0
    assert catalog.fetch_data("broden1_224", cache, progress=False) == folder   # reused, not fetched again
    # a corrupt archive (with a matching checksum: a bad copy published) is refused and deleted
    junk = b"PK\x03\x04 this is not really a zip" * 10
    server.files["broden1_227.zip"] = junk
    _publish(monkeypatch, "broden1_227", f"{server.url}/broden1_227.zip", junk)
    with pytest.raises(DissectError, match="not a valid zip file.*deleted"):
        catalog.fetch_data("broden1_227", cache, progress=False)
    leftovers = sorted(p.name for p in (cache / "broden").iterdir())
    assert leftovers == ["broden1_224", "broden1_224.zip"]
    # a zip with the wrong MD5 is refused
    _publish(monkeypatch, "broden1_227", f"{server.url}/broden1_224.zip", None)
    monkeypatch.setitem(catalog.PUBLISHED_DATA, "broden1_227", catalog.PublishedData(
        "broden1_227", f"{server.url}/broden1_224.zip", "broden", md5="0" * 32, expect="index.csv"))
    with pytest.raises(DissectError, match="expected md5 0000"):
        catalog.fetch_data("broden1_227", cache, progress=False)
    assert sorted(p.name for p in (cache / "broden").iterdir()) == leftovers


def test_zip_slip_is_refused_on_fetch(server, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("places_val/a/0.jpg", b"x")
        zf.writestr("../../evil.txt", b"owned")
    server.files["evil.zip"] = buf.getvalue()
    rf = RemoteFile("data set evil", f"{server.url}/evil.zip", tmp_path / "c" / "evil.zip",
                    unpack_to=tmp_path / "c" / "evil", inner="places_val")
    with pytest.raises(DissectError, match="outside"):
        fetch_file(rf, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "c" / "evil").exists()


# --------------------------------------------------------------------------- reports


def test_report_defaults_to_broden_and_skips_ablation_without_data(server, broden_zip, tmp_path: Path, monkeypatch) -> None:
    server.files["broden1_224.zip"] = broden_zip
    _publish(monkeypatch, "broden1_224", f"{server.url}/broden1_224.zip", broden_zip)
    out = tmp_path / "site"
    dissect.report(model="resnet18", weights="none", input_size=64, layers=["layer2"], out=out,
                   cache_dir=tmp_path / "cache", progress=False, reproducible=True)
    results = json.loads((out / "resnet18" / "results.json").read_text())
    assert results["probe"]["name"] == "broden1_224" and results["probe"]["num_images"] == 8
    # published: what is missing, in no front end's terms (the console says which option to pass)
    assert "no class-labeled images for this model's classes" in results["ablation"]["error"]
    assert "no class-labeled images" in (out / "resnet18" / "index.html").read_text()
    assert "--ablation-data" not in results["ablation"]["error"]
    assert "--ablation-data" not in (out / "resnet18" / "index.html").read_text()


@pytest.mark.slow
def test_places_val_is_fetched_and_used_for_the_ablation(server, tmp_path: Path, monkeypatch) -> None:
    scenes = ["forest", "village", "street", "beach", "lake", "field"]
    data = _places_zip(tmp_path, scenes)
    server.files["places_val.zip"] = data
    _publish(monkeypatch, "places_val", f"{server.url}/places_val.zip", data)
    out = tmp_path / "site"
    dissect.report(model="toy", data="toyworld", data_size=16, ablation_data="places_val", out=out,
                   cache_dir=tmp_path / "cache", progress=False, reproducible=True, layers=["conv4_2"],
                   ablation=AblationConfig(attack=False, top_n=(1, 2, "all")))
    abl = json.loads((out / "toy" / "results.json").read_text())["ablation"]
    assert abl["error"] is None and abl["data"]["path"].endswith(os.path.join("places", "places_val"))
    assert (tmp_path / "cache" / "places" / "places_val" / "forest" / "0000.jpg").is_file()


def test_offline_report_fails_before_any_work_with_one_line_per_file(tmp_path: Path, monkeypatch, capsys, hub) -> None:
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    _publish(monkeypatch, "broden1_224", f"{UNREACHABLE}/broden1_224.zip", None)
    real = weights_mod.torchvision_file
    monkeypatch.setattr(weights_mod, "torchvision_file", lambda enum: dataclasses.replace(
        real(enum), url=f"{UNREACHABLE}/{real(enum).dest.name}"))
    out = tmp_path / "site"
    t0 = time.time()
    assert cli.main(["report", "--model", "resnet18", "--out", str(out), "--quiet"]) == 2
    seconds = time.time() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert seconds < 10, seconds
    assert err[0].startswith("dissect: error: 2 file(s) this run needs are missing")
    assert "--weights FILE" in err[0] and "--data FOLDER" in err[0]
    weights_line, data_line = err[1:]
    assert f"{UNREACHABLE}/resnet18-f37072fd.pth" in weights_line and "sha256 f37072fd..." in weights_line
    assert f"save it as {hub / 'resnet18-f37072fd.pth'}" in weights_line and "cannot reach 127.0.0.1" in weights_line
    assert "md5 be13c292eaef3300da03f8d0e48eab1c" in data_line
    assert str(tmp_path / "cache" / "broden" / "broden1_224.zip") in data_line
    assert not out.exists() and not (tmp_path / "cache" / "broden").exists()
    # DISSECT_OFFLINE never touches the network and says so
    monkeypatch.setenv("DISSECT_OFFLINE", "1")
    assert cli.main(["report", "--model", "resnet18", "--out", str(out), "--quiet"]) == 2
    assert "offline (DISSECT_OFFLINE)" in capsys.readouterr().err


def test_fetch_on_the_login_node_then_report_offline(server, broden_zip, tmp_path: Path, monkeypatch, capsys, hub) -> None:
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    server.files["broden1_224.zip"] = broden_zip
    _publish(monkeypatch, "broden1_224", f"{server.url}/broden1_224.zip", broden_zip)
    assert cli.main(["fetch", "resnet18", "--weights", "none", "--list"]) == 0
    assert capsys.readouterr().out.startswith("missing  data set broden1_224")
    assert cli.main(["fetch", "resnet18", "--weights", "none", "--quiet"]) == 0
    assert "1 file(s) in place" in capsys.readouterr().out
    monkeypatch.setenv("DISSECT_OFFLINE", "1")     # the compute node
    assert cli.main(["fetch", "resnet18", "--weights", "none", "--list"]) == 0
    assert capsys.readouterr().out.startswith("present  data set broden1_224")
    ensure_files(catalog.data_files("broden1_224", tmp_path / "cache"), progress=False)  # no error: present
    assert cli.main(["report", "--model", "resnet18", "--weights", "none", "--input-size", "64", "--layer", "layer1",
                     "--out", str(tmp_path / "site"), "--quiet", "--no-ablation"]) == 0
    assert (tmp_path / "site" / "resnet18" / "results.json").is_file()
    # an unknown segmenter is a one-line error that lists the nearest names
    assert cli.main(["fetch", "toygan", "--segmenter", "deeplab_resnet50"]) == 2
    assert "deeplabv3_resnet50" in capsys.readouterr().err


def test_models_listing_says_source_size_and_cache(server, hub: Path, capsys, monkeypatch) -> None:
    from dissect.models import catalog as model_catalog
    assert cli.main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "torchvision:VGG16_Weights.IMAGENET1K_V1  [553 MB, not cached]" in rows["vgg16"]
    assert "[1.2 MB, built in]" in rows["toy"]
    (hub / "resnet18-f37072fd.pth").parent.mkdir(parents=True, exist_ok=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"x")
    assert model_catalog.weights_status("resnet18") == ("torchvision:ResNet18_Weights.IMAGENET1K_V1", "47 MB", "cached")
    spec = ModelSpec(name="tiny-places", builder=lambda n: torch.nn.Linear(1000, n), num_classes=365,
                     default_weights=f"url:{server.url}/tiny_places365-0bafbc55.pth")
    monkeypatch.setattr(model_catalog, "get_model_spec", lambda name: spec)
    assert model_catalog.weights_status("tiny-places") == (spec.default_weights, "≈1.5 MB (365,365 float32 parameters)",
                                                           "not cached")   # 4 bytes a parameter, in the unit of the others


def test_archives_with_another_top_folder_or_none_unpack_to_the_classes(tmp_path: Path) -> None:
    from dissect.download import unpack_archive
    for i, prefix in enumerate(["val/", "", "places_val/"]):
        archive = tmp_path / f"a{i}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(f"{prefix}beach/0.jpg", b"1")
            zf.writestr(f"{prefix}forest/0.jpg", b"2")
        out = unpack_archive(archive, tmp_path / f"out{i}", inner="places_val")
        assert sorted(p.name for p in out.iterdir()) == ["beach", "forest"]
        assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_zip_put_in_place_by_hand_is_unpacked_offline(broden_zip, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DISSECT_OFFLINE", "1")
    _publish(monkeypatch, "broden1_224", f"{UNREACHABLE}/broden1_224.zip", broden_zip)
    rf = catalog.data_file("broden1_224", tmp_path)
    rf.dest.parent.mkdir(parents=True)
    rf.dest.write_bytes(broden_zip)          # copied from the login node to where the message said
    (folder,) = ensure_files([rf], progress=False)
    assert (folder / "index.csv").is_file()
