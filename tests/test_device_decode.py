"""Probe JPEGs decoded on the model's device (dissect/data/device_decode.py): chosen only for
a CUDA device; the batches equal the CPU loader's, through torchvision's decoder or through
the CPU fallback, unreadable files included. (No GPU here: the device's decoder is
torchvision's on the CPU, or refuses every file.)"""

import csv
import io
import shutil
import sys

import pytest
import torch
from PIL import Image

from dissect.data import broden, device_decode
from dissect.data.broden import BrodenDataset, make_loader
from dissect.data.device_decode import decode_on_device


@pytest.fixture(scope="module")
def jpeg_probe(toyworld_small, tmp_path_factory):
    """24 toy-world scenes as a Broden folder of JPEG images (one of them not a JPEG at all)."""
    root = tmp_path_factory.mktemp("jpegprobe")
    for name in ("label.csv", "category.csv", *(p.name for p in toyworld_small.glob("c_*.csv"))):
        shutil.copy(toyworld_small / name, root / name)
    (root / "images").mkdir()
    with open(toyworld_small / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:24]
    for k, row in enumerate(rows):
        jpg = row["image"].replace(".png", ".jpg")
        with Image.open(toyworld_small / "images" / row["image"]) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=90)
        (root / "images" / jpg).write_bytes(buf.getvalue() if k != 5 else b"\xff\xd8 not a jpeg")
        for cell in row.values():
            for name in (cell or "").split(";"):
                if name.endswith(".png") and name != row["image"]:
                    shutil.copy(toyworld_small / "images" / name, root / "images" / name)
        row["image"] = jpg
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return BrodenDataset(root, input_size=64)


def batches(dataset, **kw):
    out = []
    for b in make_loader(dataset, 8, 0, **kw):
        out.append(b)
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["bad"] == y["bad"] and x["bad_index"] == y["bad_index"]
        for key in ("index", "image", "pixel_labels", "image_labels"):
            assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key


def test_device_decode_only_for_cuda(monkeypatch):
    assert not decode_on_device(None) and not decode_on_device("cpu") and not decode_on_device(torch.device("cpu"))
    assert decode_on_device("cuda") and decode_on_device(torch.device("cuda", 1))   # (none needed to choose)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)    # torchvision without its decoders
    assert not decode_on_device("cuda")


def test_cpu_device_keeps_the_cpu_path(jpeg_probe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("device decoding chosen for a CPU model")
    monkeypatch.setattr(device_decode, "decode_jpegs", refuse)
    cpu = batches(jpeg_probe)
    assert_same_batches(batches(jpeg_probe, device="cpu"), cpu)
    assert sum(len(b["bad"]) for b in cpu) == 1                    # the file that is not a JPEG


@pytest.mark.parametrize("decoder", ["torchvision", "refuses"])
def test_device_path_equals_the_cpu_path(jpeg_probe, monkeypatch, decoder):
    """The device path (as if on CUDA: the same code, torchvision's decoder run on the CPU, or a
    decoder that refuses every file so that each image takes the CPU fallback) gives the
    CPU loader's batches bit for bit; the unreadable file is skipped the same way."""
    cpu = batches(jpeg_probe)
    monkeypatch.setattr(broden, "decode_on_device", lambda device: True)
    real = device_decode.decode_jpegs
    calls = []

    def decode(data, device):
        calls.append(len(data))
        return real(data, device) if decoder == "torchvision" else [None] * len(data)
    monkeypatch.setattr(device_decode, "decode_jpegs", decode)
    assert_same_batches(batches(jpeg_probe, device="cpu"), cpu)
    assert sum(calls) == 24 and max(calls) == 8                   # batched: one call per batch


def test_one_bad_file_costs_only_itself(jpeg_probe):
    files = [jpeg_probe.index.file(jpeg_probe.index.records[k].image) for k in (4, 5, 6)]
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    out = device_decode.decode_jpegs(data, "cpu")
    assert out[1] is None and out[0].shape == out[2].shape == (3, 64, 64) and out[0].dtype == torch.uint8
