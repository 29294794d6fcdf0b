"""download() and unzip(): checksums, atomic placement, clear errors; no network needed."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from dissect.download import download, sha256_file, unzip
from dissect.errors import DissectError

PAYLOAD = b"weights " * 200_000  # 1.6 MB: more than one read chunk


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_sha256_file(source: Path) -> None:
    assert sha256_file(source) == hashlib.sha256(PAYLOAD).hexdigest()
    assert sha256_file(source, chunk_size=7) == hashlib.sha256(PAYLOAD).hexdigest()


def test_download_file_url_with_sha(source: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    assert download(source.as_uri(), dest, sha256=digest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["blob.bin"]


def test_download_wrong_sha_leaves_nothing(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DissectError, match="checksum mismatch"):
        download(source.as_uri(), dest, sha256="0" * 64, progress=False)
    assert _leftovers(dest.parent) == []


def test_download_hash_prefix(source: Path, tmp_path: Path) -> None:
    prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    dest = tmp_path / "out" / f"blob-{prefix}.bin"
    download(source.as_uri(), dest, hash_prefix=prefix.upper(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    bad = tmp_path / "out" / "blob-00000000.bin"
    with pytest.raises(DissectError, match="checksum mismatch"):
        download(source.as_uri(), bad, hash_prefix="00000000", progress=False)
    assert _leftovers(dest.parent) == [dest.name]


def test_download_failure_is_one_line_and_actionable(tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere" / "blob.bin").as_uri()
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DissectError) as info:
        download(missing, dest, progress=False, hint="pass --weights FILE")
    msg = str(info.value)
    assert msg.startswith(f"could not download {missing}") and msg.endswith("pass --weights FILE")
    assert "\n" not in msg
    assert _leftovers(dest.parent) == []
    with pytest.raises(DissectError, match="could not download"):
        download("nosuchscheme://x/y", dest, progress=False)


def test_download_does_not_replace_good_file_on_failure(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DissectError):
        download(source.as_uri(), dest, sha256="1" * 64, progress=False)
    assert dest.read_bytes() == b"old"


@pytest.fixture
def http_root(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_over_http_with_progress(http_root, tmp_path: Path) -> None:
    root, base = http_root
    (root / "blob.bin").write_bytes(PAYLOAD)
    dest = tmp_path / "dl" / "blob.bin"
    download(f"{base}/blob.bin", dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=True)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DissectError, match="HTTP 404"):
        download(f"{base}/missing.bin", tmp_path / "dl" / "missing.bin", progress=False)
    assert _leftovers(dest.parent) == ["blob.bin"]


# --------------------------------------------------------------------------- unzip


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_unzip(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"top/index.csv": b"a,b\n", "top/images/x.png": b"png", "top/empty/": b""})
    out = unzip(archive, tmp_path / "data" / "broden")
    assert (out / "top" / "index.csv").read_bytes() == b"a,b\n"
    assert (out / "top" / "images" / "x.png").read_bytes() == b"png"
    assert (out / "top" / "empty").is_dir()
    assert _leftovers(tmp_path / "data") == ["broden"]
    with pytest.raises(DissectError, match="already exists"):
        unzip(archive, out)


@pytest.mark.parametrize("evil", ["../escape.txt", "ok/../../escape.txt", "/tmp/dissect-escape.txt", "C:/escape.txt"])
def test_unzip_refuses_path_traversal(tmp_path: Path, evil: str) -> None:
    archive = _zip(tmp_path / "evil.zip", {"fine.txt": b"ok", evil: b"pwned"})
    dest = tmp_path / "data" / "out"
    with pytest.raises(DissectError, match="outside"):
        unzip(archive, dest)
    assert not dest.exists()
    assert _leftovers(tmp_path / "data") == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "escape.txt").exists()


def test_unzip_bad_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DissectError, match="not a valid zip"):
        unzip(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DissectError, match="not found"):
        unzip(tmp_path / "missing.zip", tmp_path / "out")
