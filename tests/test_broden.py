"""The Broden reader against a hand-written fixture in the published layout."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from dissect.data.broden import (BrodenDataset, BrodenIndex, collate, decode_label_png, display_name,
                                 fetch_broden, make_loader)
from dissect.errors import DissectError
from dissect.stats import IoUTally


def write_png_labels(path, labels):
    """Encode label numbers as R + 256 * G, as Broden does."""
    labels = np.asarray(labels, dtype=np.int64)
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels % 256
    rgb[..., 1] = labels // 256
    Image.fromarray(rgb).save(path)


@pytest.fixture
def broden(tmp_path):
    root = tmp_path / "broden_mini"
    (root / "images" / "ade20k").mkdir(parents=True)
    # label 300 needs the G channel: 300 = 44 + 256 * 1
    (root / "index.csv").write_text(
        "image,split,ih,iw,sh,sw,color,object,part,material,scene,texture\n"
        "ade20k/a.jpg,train,4,4,2,2,ade20k/a_color.png,ade20k/a_object.png,"
        "ade20k/a_part_1.png;ade20k/a_part_2.png,,5,\n"
        "ade20k/b.jpg,val,4,4,2,2,,ade20k/b_object.png,,,,7;8\n")
    (root / "label.csv").write_text(
        "number,name,category,frequency,coverage,syns\n"
        "0,-,,0,0,\n"
        "1,red-c,color(2),2,0.5,\n"
        "2,tree,object(2);part(1),2,0.4,\n"
        "3,door,part(1),1,0.1,\n"
        "4,wheel,part(1),1,0.1,\n"
        "5,street-s,scene(1),1,1.0,\n"
        "7,striped,texture(1),1,1.0,\n"
        "8,dotted,texture(1),1,1.0,\n"
        "300,car,object(1),1,0.25,automobile;auto\n")
    (root / "category.csv").write_text(
        "name,first,last,count,frequency\n"
        "color,1,1,1,1\nobject,2,300,2,2\npart,2,4,3,1\nmaterial,0,0,0,0\n"
        "scene,5,5,1,1\ntexture,7,8,2,1\n")
    (root / "c_color.csv").write_text("code,number,name,frequency,coverage\n1,1,red-c,1,0.5\n")
    (root / "c_object.csv").write_text(
        "code,number,name,frequency,coverage\n1,2,tree,2,0.4\n2,300,car,1,0.25\n")
    # tree also occurs as a part, with less coverage: its primary category stays object
    (root / "c_part.csv").write_text(
        "code,number,name,frequency,coverage\n1,2,tree,1,0.05\n2,3,door,1,0.1\n3,4,wheel,1,0.1\n")
    (root / "c_material.csv").write_text("code,number,name,frequency,coverage\n")
    (root / "c_scene.csv").write_text("code,number,name,frequency,coverage\n1,5,street-s,1,1.0\n")
    (root / "c_texture.csv").write_text(
        "code,number,name,frequency,coverage\n1,7,striped,1,1.0\n2,8,dotted,1,1.0\n")
    img = root / "images" / "ade20k"
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(img / "a.jpg")
    Image.fromarray(np.full((4, 4, 3), 20, np.uint8)).save(img / "b.jpg")
    write_png_labels(img / "a_color.png", [[1, 1], [0, 1]])
    write_png_labels(img / "a_object.png", [[2, 300], [2, 0]])
    write_png_labels(img / "a_part_1.png", [[3, 0], [0, 0]])
    write_png_labels(img / "a_part_2.png", [[0, 4], [0, 0]])
    write_png_labels(img / "b_object.png", [[0, 0], [2, 2]])
    return root


def test_index_tables(broden):
    idx = BrodenIndex(broden)
    assert idx.categories == ["color", "object", "part", "material", "scene", "texture"]
    assert idx.num_labels == 301
    assert {n: (lab.display, lab.category) for n, lab in idx.labels.items()} == {
        1: ("red", "color"), 2: ("tree", "object"), 3: ("door", "part"), 4: ("wheel", "part"),
        5: ("street", "scene"), 7: ("striped", "texture"), 8: ("dotted", "texture"),
        300: ("car", "object")}
    a, b = idx.records
    assert (a.image, a.split, a.ih, a.iw, a.sh, a.sw) == ("ade20k/a.jpg", "train", 4, 4, 2, 2)
    assert a.pixel_files == ["ade20k/a_color.png", "ade20k/a_object.png",
                             "ade20k/a_part_1.png", "ade20k/a_part_2.png"]
    assert a.image_labels == [5]
    assert b.pixel_files == ["ade20k/b_object.png"] and b.image_labels == [7, 8]
    assert len(idx.sha256()) == 64


def test_decode_r_plus_256g(broden):
    lab = decode_label_png(broden / "images" / "ade20k" / "a_object.png")
    assert lab.tolist() == [[2, 300], [2, 0]]


def test_items_and_collate(broden):
    ds = BrodenDataset(broden, input_size=4)
    a, b = ds[0], ds[1]
    assert a["pixel_labels"].tolist() == [[[1, 1], [0, 1]], [[2, 300], [2, 0]],
                                          [[3, 0], [0, 0]], [[0, 4], [0, 0]]]
    assert a["image_labels"].tolist() == [5]
    assert b["pixel_labels"].tolist() == [[[0, 0], [2, 2]]]
    assert b["image_labels"].tolist() == [7, 8]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(a["image"], ((torch.full((3, 4, 4), 200 / 255)) - mean) / std)
    batch = collate([a, b])
    assert batch["pixel_labels"].shape == (2, 4, 2, 2)
    assert batch["pixel_labels"][1, 1:].eq(0).all()
    assert batch["image_labels"].tolist() == [[5, 0], [7, 8]]


def test_iou_on_fixture_by_hand(broden):
    """A unit on exactly the top-left pixel of each image, counted by hand."""
    ds = BrodenDataset(broden, input_size=4)
    batch = collate([ds[0], ds[1]])
    idx = ds.index
    assert not idx.segmenter_labeled   # human-annotated Broden: NetDissect's category rule
    masks = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    masks[:, 0, 0, 0] = True
    t = IoUTally(1, idx.num_labels, idx.primary_category_tensor(), len(idx.categories))
    t.add(masks, batch["pixel_labels"], batch["image_labels"])
    iou = t.iou()[0]
    # tree (object): both images annotated in object; unit pixels 2; tree pixels 2 + 2;
    # intersection 1 (image a top-left) -> 1 / (2 + 4 - 1)
    assert iou[2].item() == pytest.approx(1 / 5)
    # door (part): only image a is annotated in part; unit 1, door 1, inter 1 -> 1
    assert iou[3].item() == pytest.approx(1.0)
    # street (scene, whole image a): unit 1 in a, label 4 pixels, inter 1 -> 1/4
    assert iou[5].item() == pytest.approx(1 / 4)
    # striped (texture, whole image b): only b annotated in texture -> 1/4
    assert iou[7].item() == pytest.approx(1 / 4)
    # red (color, image a only): unit 1, red 3 pixels, inter 1 -> 1/3
    assert iou[1].item() == pytest.approx(1 / 3)


def test_corrupt_image_is_skipped(broden):
    (broden / "images" / "ade20k" / "b.jpg").write_bytes(b"not a jpeg")
    ds = BrodenDataset(broden, input_size=4)
    item = ds[1]
    assert item["ok"] is False and "b.jpg" in item["path"]
    batch = collate([ds[0], item])
    assert batch["index"].tolist() == [0] and batch["bad"][0][0] == "ade20k/b.jpg"


def test_missing_or_foreign_dir(tmp_path):
    with pytest.raises(DissectError, match="does not exist"):
        BrodenIndex(tmp_path / "nope")
    with pytest.raises(DissectError, match="index.csv"):
        BrodenIndex(tmp_path)


def test_display_name():
    assert display_name("red-c") == "red" and display_name("kitchen-s") == "kitchen"
    assert display_name("tree") == "tree"


def test_fetch_broden_from_local_zip(broden, tmp_path):
    """The download path, fed a local copy of the archive in the published layout."""
    import hashlib
    import shutil
    shutil.move(str(broden), str(tmp_path / "broden1_224"))
    archive = shutil.make_archive(str(tmp_path / "upload" / "broden1_224"), "zip", tmp_path, "broden1_224")
    sha = hashlib.sha256(open(archive, "rb").read()).hexdigest()
    dest = tmp_path / "cache"
    got = fetch_broden(dest, "broden1_224", url=f"file://{archive}", sha256=sha, progress=False)
    assert got == dest / "broden1_224" and len(BrodenIndex(got).records) == 2
    assert fetch_broden(dest, "broden1_224", url="file:///nonexistent.zip") == got  # reused
    with pytest.raises(DissectError):
        fetch_broden(tmp_path / "other", "broden1_224", url=f"file://{archive}", sha256="0" * 64,
                     progress=False)


# ------------------------------------------------------------------ confinement (issue 15)
@pytest.mark.parametrize("bad", ["../../outside/secret.jpg", "/etc/passwd", "ade20k/../../x.jpg",
                                 "C:/Windows/x.jpg", "..\\outside.jpg"])
@pytest.mark.parametrize("column", ["image", "label"])
def test_files_outside_the_probe_folder_are_refused(broden, bad, column):
    """index.csv may only name files inside images/: one line naming the row, before any work."""
    index = broden / "index.csv"
    rows = index.read_text().splitlines()
    rows[2] = rows[2].replace("ade20k/b.jpg" if column == "image" else "ade20k/b_object.png", bad)
    index.write_text("\n".join(rows) + "\n")
    with pytest.raises(DissectError) as err:
        BrodenIndex(broden)
    msg = str(err.value)
    assert "row 3" in msg and repr(bad) in msg and "outside" in msg and "\n" not in msg


def test_a_symlink_out_of_the_probe_folder_is_never_read(broden, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.full((4, 4, 3), 99, np.uint8)).save(outside / "secret.jpg")
    link = broden / "images" / "ade20k" / "b.jpg"
    link.unlink()
    link.symlink_to(outside / "secret.jpg")
    ds = BrodenDataset(broden, input_size=4)
    item = ds[1]
    assert item["ok"] is False and "outside the probe folder" in item["error"]
    assert str(outside) not in item["error"] and item["path"] == "ade20k/b.jpg"
    with pytest.raises(OSError):
        ds.load_rgb(1)
    assert ds[0]["ok"] is True   # the other image is read as before


# ------------------------------------------------------------------ damaged tables (issue 15)
def _edit(path, old, new):
    text = path.read_bytes()
    assert old in text
    path.write_bytes(text.replace(old, new, 1))


@pytest.mark.parametrize("file, old, new, expect", [
    ("index.csv", b"ade20k/b.jpg,val,4,4,2,2", b"ade20k/b.jpg,val,abc,4,2,2", "row 3: ih must be a whole number, not 'abc'"),
    ("index.csv", b"image,split,ih,iw,sh,sw", b"image,split,ih,iw,sz,sw", "lacks the column(s) sh"),
    ("index.csv", b",,,,7;8", b",,,,999;8", "row 3: label 999 in column texture is not defined"),
    ("index.csv", b",,,,7;8", b",,,,40000;8", "row 3: label 40000 in column texture is not defined"),
    ("index.csv", b"ade20k/b.jpg", b"ade20k/b\xff.jpg", "is not UTF-8 text"),
    ("label.csv", b"3,door,part(1),1,0.1", b"x3,door,part(1),1,0.1", "label.csv row 5: number must be a whole number"),
    ("label.csv", b"number,name", b"numero,name", "lacks the column(s) number"),
    ("c_object.csv", b"1,2,tree,2,0.4", b"1,2,tree,2,lots", "c_object.csv row 2: coverage must be a number"),
    ("category.csv", b"name,first", b"nom,first", "category.csv lacks the column(s) name"),
])
def test_damaged_tables_are_one_line_errors(broden, file, old, new, expect):
    _edit(broden / file, old, new)
    with pytest.raises(DissectError) as err:
        BrodenIndex(broden)
    assert expect in str(err.value) and "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------ label numbers inside PNGs (issue 15)
@pytest.mark.parametrize("number", [999, 40000, 65535])
def test_undefined_pixel_label_numbers_are_one_line_errors(broden, number):
    """A label PNG holding a number label.csv does not define (999), or one of 32768 and more
    that an int16 cast would wrap negative, stops the run naming the PNG, with or without
    loader workers; it is never tallied as another label."""
    write_png_labels(broden / "images" / "ade20k" / "b_object.png", [[0, number], [2, 2]])
    ds = BrodenDataset(broden, input_size=4)
    assert ds[0]["ok"] is True
    item = ds[1]
    assert item["ok"] is False and "b_object.png" in item["fatal"] and str(number) in item["fatal"]
    for workers in (0, 1):
        with pytest.raises(DissectError) as err:
            for _ in make_loader(ds, batch_size=2, num_workers=workers):
                pass
        msg = str(err.value)
        assert "\n" not in msg and "b_object.png" in msg and f"number(s) {number}" in msg, msg


def test_large_defined_label_numbers_are_tallied_exactly(broden):
    """Label 40000 (R=64, G=156), defined in label.csv, is read and tallied as 40000 through
    the whole dissection (no int16 wrap), and a defined label without a category is no error."""
    from dissect.experiments.dissection import DissectConfig, dissect_layers

    with open(broden / "label.csv", "a") as f:
        f.write("40000,bigthing,object(1),1,0.25,\n777,uncategorized,,0,0,\n")
    with open(broden / "c_object.csv", "a") as f:
        f.write("3,40000,bigthing,1,0.25\n")
    write_png_labels(broden / "images" / "ade20k" / "b_object.png", [[40000, 40000], [777, 2]])
    idx = BrodenIndex(broden)
    assert idx.num_labels == 40001 and 40000 in idx.labels and 777 not in idx.labels
    assert decode_label_png(broden / "images" / "ade20k" / "b_object.png").tolist() == [[40000, 40000], [777, 2]]

    class Dark(torch.nn.Module):   # one unit: the image's darkness, b.jpg (20) above a.jpg (200)
        def forward(self, x):
            return -x[:, :1, ::2, ::2]

    ds = BrodenDataset(idx, input_size=4)
    stats = dissect_layers(torch.nn.Sequential(Dark()), ["0"], ds,
                           DissectConfig(quantile=0.25, top_k=1, num_workers=0, batch_size=2),
                           progress=False)["0"]
    # the dark image b is the unit's top image; its label pixels are counted as 40000
    assert stats.tally["label_pixels"][40000].item() == 2
    assert stats.tally["label_pixels"][777].item() == 1
    assert (stats.tally["label_pixels"] < 0).sum() == 0


def test_content_fingerprint_catches_what_size_and_time_miss(broden):
    """An edit that keeps a file's size and restores its modification time escapes the
    default (stat) fingerprint, never the content one (--hash-files)."""
    idx = BrodenIndex(broden)
    stat_before, content_before = idx.files_fingerprint(), idx.files_fingerprint(content=True)
    assert stat_before != content_before   # the two identities never collide
    png = broden / "images" / "ade20k" / "a_object.png"
    st = png.stat()
    write_png_labels(png, [[2, 300], [2, 2]])     # one pixel changed: same size here
    assert png.stat().st_size == st.st_size
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert idx.files_fingerprint() == stat_before
    assert idx.files_fingerprint(content=True) != content_before
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    assert idx.files_fingerprint() != stat_before
