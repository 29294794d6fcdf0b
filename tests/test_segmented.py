"""Any image folder as a probe set, labeled by a segmenter (``--data DIR --segmenter NAME``):
mixed sizes and formats, an unreadable file skipped and counted, nothing outside the folder
read, cached, Broden folders unchanged, and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dissect.cli import main
from dissect.data.broden import BrodenIndex
from dissect.data.labeled import FolderImages
from dissect.data.probe import open_probe_data
from dissect.data.segmented import image_files, is_image_folder, open_segmented_probe
from dissect.errors import SkippedImageWarning
from dissect.models.latents import quantize
from dissect.segmenters import load_segmenter

SIZES = [(80, 60, "jpg", "RGB"), (64, 64, "png", "RGB"), (50, 120, "png", "L"), (200, 90, "jpeg", "RGB"),
         (33, 47, "png", "RGBA"), (100, 100, "JPG", "RGB"), (70, 90, "bmp", "RGB")]


def _scene(w: int, h: int, seed: int) -> np.ndarray:
    """Sky over grass, with noise: something the toy segmenter labels."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = (90, 160, 235)
    a[h // 2:] = (40, 150, 50)
    return np.clip(a + rng.integers(-10, 10, a.shape), 0, 255).astype(np.uint8)


@pytest.fixture()
def image_dir(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, (w, h, ext, mode) in enumerate(SIZES):
        folder = root if i % 2 == 0 else (root / "sub" if i % 3 else root / "sub" / "deeper")
        Image.fromarray(_scene(w, h, i)).convert(mode).save(folder / f"im{i}.{ext}")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"never read")
    outside = tmp_path / "outside.png"
    Image.fromarray(_scene(64, 64, 99)).save(outside)
    (root / "link-out.png").symlink_to(outside)        # resolves outside the folder: never read
    (root / "link-in.png").symlink_to(root / "im0.jpg")  # inside: read like any file
    return root


def test_image_files_stay_inside_the_folder(image_dir):
    names = [p.relative_to(image_dir).as_posix() for p in image_files(image_dir)]
    assert "link-out.png" not in names and ".hidden.png" not in names and "notes.txt" not in names
    assert "broken.jpg" in names and "link-in.png" in names and "sub/deeper/im3.jpeg" in names
    assert len(names) == len(SIZES) + 2
    assert is_image_folder(image_dir) and not is_image_folder(image_dir / "im0.jpg")


def test_labels_are_the_segmenters_of_the_prepared_images(image_dir, tmp_path):
    probe = open_segmented_probe(image_dir, 64, tmp_path / "cache", "toy", batch_size=3, progress=False)
    assert probe.skipped == ["broken.jpg"]
    manifest = json.loads((probe.path / "segmented.json").read_text())
    index = BrodenIndex(probe.path)
    assert index.segmenter_labeled  # every image annotated in every category: the plain IoU
    assert len(index.records) == len(SIZES) + 1 == len(manifest["images"])  # + link-in
    seg = load_segmenter("toy")
    files = image_files(image_dir)
    for rec in index.records[:3]:
        src = image_dir / manifest["images"][rec.image]
        x = FolderImages([src], 64, (0, 0, 0), (1, 1, 1))[0]["image"][None]
        want = seg.segment(quantize(x))[0].numpy()
        saved = np.asarray(Image.open(index.file(rec.image)).convert("RGB"))
        assert saved.shape == (64, 64, 3)
        assert np.array_equal(saved, (quantize(x)[0] * 255).round().byte().permute(1, 2, 0).numpy())
        for li, cat in enumerate(seg.layers):
            lab_png = np.asarray(Image.open(probe.path / "images" / rec.image.replace(".png", f"_{cat}.png")),
                                 dtype=np.int64)
            assert np.array_equal(lab_png[..., 0] + 256 * lab_png[..., 1], want[li])
        assert src in files
    # cached: the same folder and segmenter reuse it; a changed folder labels again
    again = open_segmented_probe(image_dir, 64, tmp_path / "cache", "toy", progress=False)
    assert again.path == probe.path and again.skipped == ["broken.jpg"]
    assert (probe.path / "segmented.json").stat().st_mtime_ns == \
        (again.path / "segmented.json").stat().st_mtime_ns
    Image.fromarray(_scene(64, 64, 5)).save(image_dir / "new.png")
    assert open_segmented_probe(image_dir, 64, tmp_path / "cache", "toy", progress=False).path != probe.path


def test_report_on_an_image_folder_end_to_end(image_dir, tmp_path, capsys):
    out = tmp_path / "site"
    rc = main(["report", "--model", "toy", "--data", str(image_dir), "--segmenter", "toy",
               "--layer", "conv4_2", "--no-ablation", "--quiet", "--reproducible", "--workers", "0",
               "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "toy" / "results.json").read_text())
    assert results["params"]["union"].startswith("every image, every category")  # the plain IoU
    probe = results["probe"]
    assert probe["num_skipped"] == 1 and probe["skipped"] == ["broken.jpg"]
    assert probe["num_images"] == len(SIZES) + 1
    assert probe["segmenter"]["name"] == "toy" and probe["name"] == "photos"
    page = (out / "toy" / "index.html").read_text()
    assert "Unreadable probe images skipped" in page and "broken.jpg" in page
    assert "toy (layers: object, part, color)" in page


def test_broden_folders_are_still_broden(toyworld_small, tmp_path):
    assert not is_image_folder(toyworld_small)
    probe = open_probe_data(str(toyworld_small), 64, (0.5,) * 3, (0.25,) * 3, tmp_path / "c", size=5,
                            progress=False)
    assert probe.segmenter is None and probe.path == toyworld_small and len(probe.dataset) == 5
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("setup, args, needle", [
    ("empty", [], "no images in"),
    ("unreadable", [], "none of the 2 images"),
    ("images", ["--segmenter", "toyy"], "unknown segmenter 'toyy'; valid: toy,"),
])
def test_bad_image_folders_are_one_line(tmp_path, capsys, setup, args, needle):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    if setup == "unreadable":
        (folder / "a.png").write_bytes(b"garbage")
        (folder / "b.jpg").write_bytes(b"")
    if setup == "images":
        Image.fromarray(_scene(64, 64, 1)).save(folder / "a.png")
    rc = main(["report", "--model", "toy", "--data", str(folder), "--quiet", *args,
               "--out", str(tmp_path / "site"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "site").exists()
    assert not list((tmp_path / "cache").glob("segmented/*"))  # nothing half-written


def test_the_users_file_names_and_skipped_images_reach_console_results_and_pages(image_dir, tmp_path, capsys):
    """An image folder's probe images keep their own names (relative to the folder) in
    results.json (``top_images[].source``) and on the unit pages; its unreadable image is
    warned about on the console in one line, once, and counted."""
    out = tmp_path / "site"
    rc = main(["report", "--model", "toy", "--data", str(image_dir), "--segmenter", "toy",
               "--layer", "conv4_2", "--no-ablation", "--quiet", "--reproducible", "--workers", "0",
               "--top-k", "4", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "skipped unreadable image" in line]
    assert len(warned) == 1 and warned[0].startswith(f"dissect: warning: skipped unreadable image "
                                                     f"{image_dir.resolve() / 'broken.jpg'}: ")
    results = json.loads((out / "toy" / "results.json").read_text())
    assert results["probe"]["num_skipped"] == 1
    probe_dir = next((tmp_path / "cache" / "segmented").iterdir())
    sources = json.loads((probe_dir / "segmented.json").read_text())["images"]
    names = {p.relative_to(image_dir).as_posix() for p in image_files(image_dir)} - {"broken.jpg"}
    layer = results["layers"][0]
    seen = set()
    for u in layer["units"]:
        for t in u["top_images"]:
            assert t["image"].startswith("img-") and t["source"] == sources[t["image"]] and t["source"] in names
            seen.add(t["source"])
    assert len(seen) >= 4
    u = layer["units"][0]
    page = (out / "toy" / layer["slug"] / "unit-0000.html").read_text()
    alt = page.split('alt="', 1)[1].split('"', 1)[0]
    for t in u["top_images"]:
        assert t["source"] in alt and f"<code>{t['source']}</code>" in page
    assert "img-0" in page   # the probe file beside it


def test_a_reused_labeled_folder_still_warns_with_a_manifest_of_old(image_dir, tmp_path):
    probe = open_segmented_probe(image_dir, 64, tmp_path / "cache", "toy", progress=False)
    path = probe.path / "segmented.json"
    manifest = json.loads(path.read_text())
    assert "UnidentifiedImageError" in manifest["skipped_reasons"]["broken.jpg"]
    del manifest["skipped_reasons"]   # as written before reasons were kept
    path.write_text(json.dumps(manifest))
    with pytest.warns(SkippedImageWarning, match=r"broken\.jpg: unreadable$"):
        again = open_segmented_probe(image_dir, 64, tmp_path / "cache", "toy", progress=False)
    assert again.path == probe.path and again.skipped == ["broken.jpg"]
    index = BrodenIndex(again.path)
    assert sorted(index.source(r.image) for r in index.records) == sorted(manifest["images"].values())
