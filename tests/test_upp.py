"""The unified perceptual parsing segmenter ``upp``: files in the published layout (built here
from random weights, with a small labels.json), loaded, checked against a direct build, its
label numbering checked with hand-set heads, its bad input, and a generator report labeled
by it end to end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torchvision

from dissect.cli import main
from dissect.errors import DissectError
from dissect.segmenters import load_segmenter
from dissect.segmenters import upp
from dissect.segmenters.upp import (UnifiedParsingSegmenter, UPerNet, UppEncoder, num_classes,
                                    read_labels)
from upp_support import LABELS, write_upp_files


@pytest.fixture(scope="module")
def upp_dir(tmp_path_factory):
    return write_upp_files(tmp_path_factory.mktemp("upp-resnet50-upernet"))


@pytest.fixture(scope="module")
def seg(upp_dir):
    s = load_segmenter("upp", str(upp_dir), progress=False)
    s.sizes = (32,)  # small for the tests; the registered default is the reference's 256
    return s


def test_published_files_load_into_the_architecture(upp_dir, seg):
    assert isinstance(seg, UnifiedParsingSegmenter) and seg.name == "upp"
    assert upp.SEG_SIZES == (256,)  # what the registered segmenter uses (the reference's)
    for module, fname in ((seg.encoder, "encoder_epoch_40.pth"), (seg.decoder, "decoder_epoch_40.pth")):
        saved = torch.load(upp_dir / fname, weights_only=True)
        own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
        assert set(own) == set(saved)
        assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert seg.provenance()["weights_sha256"] and seg.provenance()["sizes"] == [32]


def test_output_equals_a_direct_build_at_a_quarter_size(upp_dir, seg):
    with torch.device("meta"):
        enc, dec = UppEncoder(), UPerNet(num_classes(LABELS))
    enc, dec = enc.to_empty(device="cpu").eval(), dec.to_empty(device="cpu").eval()
    for module, fname in ((enc, "encoder_epoch_40.pth"), (dec, "decoder_epoch_40.pth")):
        missing, unexpected = module.load_state_dict(torch.load(upp_dir / fname, weights_only=True), strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x = seg.prepare(images)
    with torch.no_grad():
        maps = enc(x)
        assert [tuple(m.shape[1:]) for m in maps] == [(256, 8, 8), (512, 4, 4), (1024, 2, 2), (2048, 1, 1)]
        logits = dec(maps, scene=True)
        mine = seg.decoder(seg.encoder(x), scene=True)
    assert logits["object"].shape == (1, 7, 8, 8)       # a quarter of the input size
    assert logits["part"].shape == (1, 4 + 2 + 2 + 3, 8, 8)
    assert logits["material"].shape == (1, 4, 8, 8) and logits["scene"].shape == (1, 3)
    for k in logits:
        assert torch.isfinite(logits[k]).all() and logits[k].std() > 0
        torch.testing.assert_close(mine[k], logits[k])


def test_input_is_bgr_0_255_minus_the_mean(seg):
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    x = seg.prepare(red)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-102.9801, -115.9465, 255 - 122.7717]))


def test_labels_numbering_and_categories(seg):
    names = [n for n, _ in seg.concepts]
    assert names[:6] == ["wall", "sky", "building", "person", "door", "tree"]   # objects: 1..6
    assert names[6:9] == ["wood", "sky-m", "hair"]                              # materials: 7..9
    # parts of sky, building, person only (the reference's default), first seen first
    assert seg.concepts[9:12] == [("cloud", "part"), ("window", "part"), ("head", "part")]
    assert seg.concepts[12:14] == [("leg", "part"), ("hair-p", "part")]
    assert names[14:] == [f"{c}-c" for c in ("black", "blue", "brown", "green", "grey", "orange",
                                             "pink", "purple", "red", "white", "yellow")]
    assert seg.layers == ["object", "part", "material", "color"]
    assert len(set(names)) == len(names)


@pytest.fixture(scope="module")
def forced(upp_dir):
    """A second copy, whose heads the tests set by hand."""
    s = load_segmenter("upp", str(upp_dir), progress=False)
    s.sizes = (32,)
    return s


def _force(seg, head: str, channel: int) -> None:
    conv = getattr(seg.decoder, f"{head}_head")[1]
    conv.weight.data.zero_()
    conv.bias.data.fill_(-10.0)
    conv.bias.data[channel] = 10.0


@pytest.mark.parametrize("owner,part_channels,want_part", [
    ("person", {8: "hair"}, "hair-p"),       # slices by object number: sky 0-1, building 2-4, person 5-8
    ("building", {4: "door"}, "door"),        # building's "door" is the object door
    ("sky", {1: "cloud"}, "cloud"),
    ("tree", {10: "trunk"}, None),            # tree (9-10) is not a part owner: no part labels
    ("wall", {8: "hair"}, None),              # parts only where the object has them
])
def test_hand_set_heads_give_the_reference_labels(forced, owner, part_channels, want_part):
    s = forced
    _force(s, "object", LABELS["object"].index(owner))
    _force(s, "material", LABELS["material"].index("hair"))
    conv = s.decoder.part_head[1]
    conv.weight.data.zero_()
    conv.bias.data.fill_(0.0)
    for ch in part_channels:
        conv.bias.data[ch] = 10.0
    out = s.segment(torch.rand(1, 3, 12, 20))
    assert out.shape == (1, 4, 12, 20) and out.dtype == torch.int64
    assert (out[:, 0] == s.number(owner)).all()
    assert (out[:, 2] == s.number("hair")).all() and s.category_of("hair") == "material"
    assert (out[:, 1] == (s.number(want_part) if want_part else 0)).all()
    colors = {s.number(f"{c}-c") for c in ("black", "blue", "brown", "green", "grey", "orange",
                                           "pink", "purple", "red", "white", "yellow")}
    assert set(out[:, 3].unique().tolist()) <= colors


def test_segment_labels_lie_in_their_layers(seg, monkeypatch):
    images = torch.rand(3, 3, 20, 28, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(upp, "SEGMENT_CHUNK", 2)
    out = seg.segment(images)
    assert out.shape == (3, 4, 20, 28)
    assert torch.equal(out, torch.cat([seg.segment(im[None]) for im in images]))  # chunks change nothing
    for li, cat in enumerate(seg.layers):
        allowed = {0} | {i + 1 for i, (_, c) in enumerate(seg.concepts) if c == cat}
        if cat == "part":
            allowed.add(seg.number("door"))
        assert set(out[:, li].unique().tolist()) <= allowed
    owners = torch.isin(out[:, 0], torch.tensor([seg.number(o) for o in ("sky", "building", "person")]))
    assert (out[:, 1][~owners] == 0).all()


def test_multiscale_vote_sums_the_sizes(upp_dir, seg):
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    both = UnifiedParsingSegmenter(seg.encoder, seg.decoder, LABELS, sizes=(32, 48))
    one = UnifiedParsingSegmenter(seg.encoder, seg.decoder, LABELS, sizes=(32,))
    other = UnifiedParsingSegmenter(seg.encoder, seg.decoder, LABELS, sizes=(48,))
    p, p1, p2 = both.probabilities(images), one.probabilities(images), other.probabilities(images)
    for k in ("object", "part", "material"):
        torch.testing.assert_close(p[k], p1[k] + p2[k])
    torch.testing.assert_close(p1["object"].sum(1), torch.ones(1, 16, 16))


def test_bad_labels_and_checkpoints_are_one_line(upp_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("encoder_epoch_40.pth", "decoder_epoch_40.pth"):
        (bad / name).symlink_to(upp_dir / name)
    (bad / "labels.json").write_text(json.dumps({k: v for k, v in LABELS.items() if k != "part"}))
    with pytest.raises(DissectError, match="'part' must be a non-empty list"):
        load_segmenter("upp", str(bad), progress=False)
    (bad / "labels.json").write_text(json.dumps({**LABELS, "object_part": {"car": ["-"]}}))
    with pytest.raises(DissectError, match="'car', which is not in 'object'"):
        read_labels(bad / "labels.json")
    # more objects than the checkpoint's head has: a shape mismatch, named
    (bad / "labels.json").write_text(json.dumps({**LABELS, "object": LABELS["object"] + ["car"]}))
    with pytest.raises(DissectError, match=r"shape mismatch.*object_head\.1\.weight"):
        load_segmenter("upp", str(bad), progress=False)
    # the encoder's file where the decoder's belongs
    (bad / "labels.json").write_text(json.dumps(LABELS))
    (bad / "decoder_epoch_40.pth").unlink()
    (bad / "decoder_epoch_40.pth").symlink_to(upp_dir / "encoder_epoch_40.pth")
    with pytest.raises(DissectError, match="decoder_epoch_40.pth holds encoder, not the UPerNet decoder") as e:
        load_segmenter("upp", str(bad), progress=False)
    assert "\n" not in str(e.value)
    # torchvision's ResNet-50 where the deep-stem encoder belongs
    (bad / "decoder_epoch_40.pth").unlink()
    (bad / "decoder_epoch_40.pth").symlink_to(upp_dir / "decoder_epoch_40.pth")
    (bad / "encoder_epoch_40.pth").unlink()
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), bad / "encoder_epoch_40.pth")
    with pytest.raises(DissectError, match="holds a ResNet with a 7x7 stem"):
        load_segmenter("upp", str(bad), progress=False)
    (bad / "encoder_epoch_40.pth").unlink()
    with pytest.raises(DissectError, match="lacks encoder_epoch_40.pth"):
        load_segmenter("upp", str(bad), progress=False)


def test_default_weights_offline_name_each_missing_file(tmp_path, monkeypatch, upp_dir, seg):
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(upp, "UPP_URL", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(DissectError) as e:
        load_segmenter("upp", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cache" / "segmenters" / "upp-resnet50-upernet") in msg
    for name in ("encoder_epoch_40.pth", "decoder_epoch_40.pth", "labels.json"):
        assert f"{name} from {upp.UPP_URL}{name}" in msg
    assert not any((tmp_path / "cache").rglob("*.pth"))  # nothing half-written
    with pytest.raises(DissectError, match="cannot download labels.json from") as e:  # random weights
        load_segmenter("upp", "none", progress=False)                                  # need the labels
    assert "encoder_epoch_40.pth" not in str(e.value)
    # a mirror that has them: downloaded into the cache (atomically, by dissect.download)
    monkeypatch.setattr(upp, "UPP_URL", upp_dir.as_uri() + "/")
    s = load_segmenter("upp", progress=False)
    assert (tmp_path / "cache" / "segmenters" / "upp-resnet50-upernet" / "decoder_epoch_40.pth").is_file()
    assert s.weights_sha256 == seg.weights_sha256


def test_unknown_segmenter_lists_the_nearest_names(tmp_path, capsys):
    assert main(["report", "--model", "toygan", "--segmenter", "uppp", "--out", str(tmp_path / "site"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "unknown segmenter 'uppp'; valid: upp," in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "site").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_generator_report_labeled_by_upp(upp_dir, tmp_path, capsys):
    out = tmp_path / "site"
    rc = main(["report", "--model", "toygan", "--segmenter", "upp", "--segmenter-weights", str(upp_dir),
               "--data-size", "4", "--batch-size", "4", "--no-interventions", "--quiet",
               "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "toygan" / "results.json").read_text())
    assert results["probe"]["segmenter"]["name"] == "upp"
    assert results["probe"]["segmenter"]["sizes"] == [256]
    assert results["probe"]["num_images"] == 4
    label_csv = next((tmp_path / "cache" / "generated").glob("*/label.csv")).read_text()
    assert "sky-m" in label_csv and "hair-p" in label_csv
    shutil.rmtree(tmp_path / "cache")
