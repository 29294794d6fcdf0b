"""What the program says agrees with what the user must do: offline errors name the flag of
the file they are about, checksums are shown in full where one is known, unknown names read
as one sentence, and `dissect models` shows sizes in one unit."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from PIL import Image

from dissect import cli
from dissect.download import RemoteFile
from dissect.errors import DissectError, unknown_choice
from dissect.models.catalog import model_rows, parameter_count
from dissect.models.registry import get_model_spec
from dissect.models.weights import checkpoint_dir, hub_file


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch) -> Path:
    """Nothing cached (an empty cache and torch hub folder), and no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DISSECT_OFFLINE", "1")
    return tmp_path


def _report_err(capsys, *args: str) -> list[str]:
    assert cli.main(["report", *args, "--quiet"]) == 2
    return capsys.readouterr().err.strip().splitlines()


def test_offline_segmenter_and_ablation_files_name_their_own_flags(offline, capsys):
    """The upp segmenter's files are given with --segmenter-weights DIR and a published
    ablation set with --ablation-data DIR: neither line, nor the header, offers the model's
    --weights or the probe set's --data."""
    photos = offline / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (20, 120, 40)).save(photos / "a.png")
    err = _report_err(capsys, "--model", "toy", "--data", str(photos), "--segmenter", "upp",
                      "--ablation-data", "places_val", "--out", str(offline / "site"))
    head, lines = err[0], err[1:]
    assert head.startswith("dissect: error: 4 file(s) this run needs are missing")
    assert head.endswith("(or pass --segmenter-weights DIR, --ablation-data DIR):")
    assert len(lines) == 4
    for line in lines[:3]:
        assert line.strip().startswith("segmenter upp:") and "or pass --segmenter-weights DIR" in line
    assert "data set places_val" in lines[3] and "pass the folder as --ablation-data DIR" in lines[3]
    for line in err:
        assert not re.search(r"--weights\b|--data\b", line), line


def test_offline_torchvision_segmenter_names_segmenter_weights(offline, capsys):
    err = _report_err(capsys, "--model", "toygan", "--segmenter", "deeplabv3_resnet50",
                      "--out", str(offline / "site"))
    assert err[0].endswith("(or pass --segmenter-weights FILE):") and len(err) == 2
    line = err[1]
    assert line.strip().startswith("weights of segmenter deeplabv3_resnet50 (torchvision weights ")
    assert re.search(r"or pass --segmenter-weights FILE \(a copy of deeplabv3_resnet50_coco-[0-9a-f]+\.pth\)", line)
    assert not re.search(r"--weights\b", line) and "random weights" not in line
    # the segmenter itself, loaded by hand offline, says the same
    from dissect.segmenters import load_segmenter
    with pytest.raises(DissectError) as e:
        load_segmenter("deeplabv3_resnet50", progress=False)
    assert "--segmenter-weights FILE" in str(e.value) and not re.search(r"--weights\b", str(e.value))


def test_offline_model_weights_still_name_weights(offline, capsys):
    err = _report_err(capsys, "--model", "resnet18", "--data", "toyworld", "--no-ablation",
                      "--out", str(offline / "site"))
    assert err[0].endswith("(or pass --weights FILE):") and len(err) == 2
    assert "or pass --weights FILE (a copy of resnet18-f37072fd.pth), or --weights none" in err[1]


def test_checksums_are_shown_in_full(tmp_path: Path, monkeypatch, capsys):
    """A published MD5 or SHA-256 is printed whole; where torch hub publishes only a prefix
    (in the file name) the line says so, and once a copy is in place it shows that copy's
    full SHA-256, so that a copy made by hand can be checked with sha256sum."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    md5 = RemoteFile("data set x", "http://h/x.zip", tmp_path / "x.zip", md5="be13c292eaef3300da03f8d0e48eab1c")
    assert "md5 be13c292eaef3300da03f8d0e48eab1c" in md5.missing_line()
    sha = RemoteFile("w", "http://h/w.pth", tmp_path / "w.pth", sha256="ab" * 32)
    assert f"sha256 {'ab' * 32}" in sha.missing_line()
    body = b"weights of a kind"
    digest = hashlib.sha256(body).hexdigest()
    rf = hub_file(f"http://h/net-{digest[:8]}.pth", "weights of net")
    assert re.search(rf"sha256 {digest[:8]}\.\.\. – only these 8 hex digits are published", rf.missing_line())
    checkpoint_dir().mkdir(parents=True)
    (checkpoint_dir() / f"net-{digest[:8]}.pth").write_bytes(body)
    assert rf.is_present() and rf.checksum() == f"sha256 {digest}"
    # `dissect fetch --list` of a present torchvision checkpoint: its full SHA-256
    from dissect.models.weights import torchvision_file
    tv = torchvision_file("ResNet18_Weights.IMAGENET1K_V1")
    tv.dest.write_bytes(b"not the real file")
    assert "f37072fd..." in tv.checksum()      # a copy that does not match shows no digest of its own
    assert cli.main(["fetch", "resnet18", "--list", "--data", "toyworld"]) == 0
    out = capsys.readouterr().out
    assert "sha256 f37072fd... – only these 8 hex digits are published" in out
    for line in out.splitlines():
        for h in re.findall(r"(?:sha256|md5) ([0-9a-f]+)", line):
            assert len(h) in (32, 64) or "only these 8 hex digits are published" in line, line


@pytest.mark.parametrize("call, message", [
    (lambda: unknown_choice("callable", "mak", ["make", "other"], where="in module mynet"),
     "unknown callable 'mak' in module mynet; valid: make, other"),
    (lambda: unknown_choice("segmenter", "toyy", ["toy", "upp"], hint="or give your own as package.module:callable"),
     "unknown segmenter 'toyy'; valid: toy, upp; or give your own as package.module:callable"),
])
def test_unknown_choice_reads_as_one_sentence(call, message):
    assert str(call()) == message


def test_every_unknown_name_reads_well(tmp_path, monkeypatch):
    """Each use of unknown_choice: the place the name was looked for comes right after the
    name, and nothing follows a full stop."""
    (tmp_path / "mynet.py").write_text("import torch\ndef make():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from dissect.models.loading import load_model
    from dissect.models.registry import get_model_spec as spec
    from dissect.segmenters import load_segmenter
    with pytest.raises(DissectError) as e:
        load_model("mynet:mak")
    assert str(e.value) == "unknown callable 'mak' in module mynet; valid: make"
    with pytest.raises(DissectError) as e:
        spec("resnet15")
    assert re.fullmatch(r"unknown model 'resnet15'; valid: [^.;]+ \(and \d+ more\); "
                        r"or give your own as package\.module:callable", str(e.value)), str(e.value)
    with pytest.raises(DissectError) as e:
        load_segmenter("toyy")
    assert re.fullmatch(r"unknown segmenter 'toyy'; valid: [^;]+; or give your own as package\.module:callable",
                        str(e.value))
    with pytest.raises(DissectError) as e:
        load_segmenter("toy").number("treee")
    assert str(e.value).startswith("unknown concept 'treee' of segmenter 'toy'; valid: tree")
    toy = load_model("toy", weights="none", progress=False)
    from dissect.models.loading import resolve_layer
    with pytest.raises(DissectError) as e:
        resolve_layer(toy, "conv9_9")
    assert re.fullmatch(r"unknown layer 'conv9_9'; valid: [^;]+; see `dissect layers toy`", str(e.value))
    for text in (str(e.value),):
        assert ". " not in text


def test_models_sizes_are_in_one_unit():
    """`dissect models` shows every size in bytes: a download whose size is not published is
    estimated from the architecture's parameters at 4 bytes each (float32), never shown as a
    bare parameter count beside the others' megabytes."""
    spec = get_model_spec("alexnet-places365")
    # Caffe AlexNet, conv2, conv4 and conv5 in two groups, 365 outputs: weights + biases
    by_hand = (96 * 3 * 11 * 11 + 96 + 256 * 48 * 5 * 5 + 256 + 384 * 256 * 3 * 3 + 384
               + 384 * 192 * 3 * 3 + 384 + 256 * 192 * 3 * 3 + 256
               + 4096 * 9216 + 4096 + 4096 * 4096 + 4096 + 365 * 4096 + 365)
    assert parameter_count(spec) == by_hand == 58_363_629
    rows = {r.split()[0]: r for r in model_rows()}
    row = rows["alexnet-places365"]
    assert "[≈233 MB (58,363,629 float32 parameters)," in row, row
    for name, r in rows.items():
        size = r.rsplit("[", 1)[1]
        assert re.match(r"(≈)?\d+(\.\d)? (MB|GB|kB)[ ,]", size), r
