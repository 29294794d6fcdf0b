"""The models the field uses, by name (issue 25): ``timm:NAME``, ``hf:ORG/NAME`` (or a
``save_pretrained`` folder) and ``openclip:ARCH/PRETRAINED``, each dissected end to end on the
small toy world with random weights and tiny configs, offline. Preprocessing and class names
come from each library's metadata; the offline check lists the hub files; bad names, remote
code and a missing extra are one line, exit 2, before any work."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from dissect import report  # noqa: E402
from dissect.cli import main  # noqa: E402
from dissect.errors import DissectError  # noqa: E402
from dissect.experiments.ablation import AblationConfig  # noqa: E402
from dissect.experiments.dissection import DissectConfig  # noqa: E402
from dissect.models import load_model, resolve_layer  # noqa: E402
from dissect.requirements import report_files  # noqa: E402
from dissect.pipeline import ReportOptions  # noqa: E402
from dissect.stats.intervals import IntervalOptions  # noqa: E402

FAST = DissectConfig(top_k=3, batch_size=50, num_workers=0, intervals=IntervalOptions(replicates=0))
LABELS = ["red square", "blue circle", "green triangle"]


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory):
    """A tiny transformers ViT classifier saved as safetensors with its image processor."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    config = transformers.ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3,
                                    id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    transformers.ViTForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    transformers.ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def _report(tmp_path, toyworld_small, model, **options):
    out = tmp_path / "site"
    report(model=model, data=str(toyworld_small), data_size=40, input_size=64, out=out,
           cache_dir=tmp_path / "cache", config=FAST, progress=False, reproducible=True,
           ablation=AblationConfig(num_workers=0) if options.pop("ablation", False) else False, **options)
    slug = next(p for p in out.iterdir() if (p / "results.json").is_file())
    return json.loads((slug / "results.json").read_text()), slug


def test_timm_cnn_by_name_end_to_end(tmp_path, toyworld_small):
    loaded = load_model("timm:test_resnet", weights="none", input_size=64)
    # timm's metadata: pretrained_cfg's mean/std, ImageNet-1k's class descriptions
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.preprocess["crop_pct"] == 0.95
    assert len(loaded.class_names) == 1000 and loaded.class_names[0] == "tench, Tinca tinca"
    assert loaded.aliases["feat4"] == "layer4" and loaded.default_layers == ["layer4"]
    assert resolve_layer(loaded, "feat2") == ("layer2", "feat2")
    res, slug = _report(tmp_path, toyworld_small, "timm:test_resnet", weights="none", layers=["feat2"],
                        ablation=False)
    assert res["model"]["name"] == "timm:test_resnet" and res["model"]["weights"] == "none"
    assert res["model"]["preprocess"]["source"].startswith("timm pretrained_cfg")
    assert [(la["name"], la["alias"]) for la in res["layers"]] == [("layer2", "feat2")]
    assert all(len(la["units"]) == la["num_units"] > 0 for la in res["layers"])
    assert (slug / "index.html").is_file()


def test_timm_vit_by_name_end_to_end(tmp_path, toyworld_small):
    res, _ = _report(tmp_path, toyworld_small, "timm:test_vit", weights="none")
    layer, = res["layers"]
    # the last block of feature_info, its 4x4 patch tokens read as a map (the class token kept aside)
    assert (layer["name"], layer["alias"]) == ("blocks.5", "feat5")
    assert layer["activation_shape"] == [64, 4, 4]
    assert res["model"]["input_size"] == 64 and res["model"]["default_reason"].startswith("the last of timm's")


def test_transformers_vit_by_folder_end_to_end(tmp_path, toyworld_small, tiny_vit_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model(f"hf:{tiny_vit_dir}", input_size=64)
    # the image processor's mean/std and the config's id2label
    assert loaded.mean == (0.4, 0.5, 0.6) and loaded.std == (0.2, 0.25, 0.3)
    assert loaded.class_names == LABELS and loaded.weights_file_sha256
    res, _ = _report(tmp_path, toyworld_small, f"hf:{tiny_vit_dir}", layers=["vit.encoder.layer.1"]
                     if "vit.encoder.layer.1" in dict(loaded.module.named_modules()) else ["vit.layers.1"])
    layer, = res["layers"]
    assert layer["activation_shape"] == [32, 4, 4] and res["model"]["class_names"] == LABELS
    assert res["model"]["preprocess"]["source"].startswith("transformers image processor")


def test_openclip_tower_by_name_end_to_end(tmp_path, toyworld_small, tiny_clip_arch):
    res, _ = _report(tmp_path, toyworld_small, f"openclip:{tiny_clip_arch}", weights="none")
    layer, = res["layers"]
    assert res["model"]["preprocess"]["source"] == "open_clip preprocess_cfg"
    assert res["model"]["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert layer["activation_shape"][1:] == [4, 4] and res["model"]["class_names"] is None


# ------------------------------------------------------------------ offline, bad input


def test_offline_check_lists_the_hub_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for model, lines in (("timm:resnet50.a1_in1k", ["weights of timm:resnet50.a1_in1k: https://huggingface.co/"
                                                    "timm/resnet50.a1_in1k/resolve/main/model.safetensors"]),
                         ("hf:google/vit-base-patch16-224", ["config.json of hf:google/vit-base-patch16-224",
                                                            "preprocessor_config.json of", "model.safetensors of"])):
        opts = ReportOptions(model=model, data="toyworld", out=tmp_path / "site", cache_dir=tmp_path / "c",
                             ablation=False, progress=False)
        with pytest.raises(DissectError) as err:
            from dissect.download import ensure_files
            ensure_files(report_files(opts), progress=False)
        text = str(err.value)
        assert all(line in text for line in lines), text
        assert str(tmp_path / "hf" / "hub") in text and "[offline (HF_HUB_OFFLINE)]" in text
        assert len([ln for ln in text.splitlines()[1:]]) == len(lines)


def _remote_code_dir(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "my_secret_arch",
                                                    "auto_map": {"AutoModel": "modeling_secret.SecretModel"}}))
    (folder / "modeling_secret.py").write_text("raise SystemExit('remote code ran')\n")
    return folder


@pytest.mark.parametrize("case, needle", [
    ("unknown-timm", "unknown timm model 'resnet5O'; valid: resnet50, "),
    ("unknown-tag", "unknown pretrained tag of timm model resnet50 'resnet50.xyz'; valid: resnet50."),
    ("unknown-openclip", "unknown open_clip model 'ViT-B-166'; valid: ViT-B-16, "),
    ("remote-code", "needs remote code (its config.json asks for code from the hub (auto_map)); dissect never runs"),
    ("missing-extra", "model timm:resnet18 needs the timm package: pip install 'dissect[timm]'"),
])
def test_bad_input_is_one_line_exit_2_before_any_work(capsys, tmp_path, monkeypatch, case, needle):
    model = {"unknown-timm": "timm:resnet5O", "unknown-tag": "timm:resnet50.xyz",
             "unknown-openclip": "openclip:ViT-B-166/openai", "missing-extra": "timm:resnet18",
             "remote-code": f"hf:{_remote_code_dir(tmp_path)}" if case == "remote-code" else ""}[case]
    if case == "missing-extra":
        monkeypatch.setitem(sys.modules, "timm", None)   # as if it were not installed: import fails
    out = tmp_path / "site"
    code = main(["report", "--model", model, "--out", str(out), "--no-ablation", "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not out.exists()
