"""The model registry: building, weights loading (safely), hashing, layer names. CPU, offline."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision
from torch import nn

from dissect.download import sha256_file
from dissect.errors import DissectError
from dissect.feature_maps import infer_layout
from dissect.models import (
    TOY_ALIASES,
    ModelSpec,
    ToyClassifier,
    add_model_spec,
    checkpoint_dir,
    from_module,
    get_layer,
    get_model_spec,
    layer_names,
    list_models,
    load_model,
    resolve_layer,
    state_dict_sha256,
)
from dissect.models.weights import WEIGHTS_DIR
from dissect.models.zoo.toy import DEFAULT_WIDTHS, TOYGAN_WIDTH

TOY_WEIGHTS = WEIGHTS_DIR / "toy_classifier.safetensors"


_REUSED = {"toy", "vgg16", "resnet18", "densenet161"}


@functools.lru_cache(maxsize=None)
def _random(name: str):
    """A randomly initialized registered model, built once per test session (read-only use)."""
    return load_model(name, weights="none")


def _output_of(loaded, path: str, x: torch.Tensor) -> torch.Tensor:
    captured = {}
    handle = loaded.module.get_submodule(path).register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        with torch.no_grad():
            loaded.module(x)
    finally:
        handle.remove()
    return captured["out"]


# --------------------------------------------------------------------------- every registered model


@pytest.mark.parametrize("name", [n for n in list_models() if n != "toy" and get_model_spec(n).kind == "classifier"] + ["toy"])
def test_registered_model_builds_and_layers_resolve(name: str) -> None:
    m = _random(name) if name in _REUSED else load_model(name, weights="none")
    assert m.weights == "none" and m.class_names is None and m.weights_file_sha256 is None
    assert not m.module.training
    modules = dict(m.module.named_modules())
    for alias, path in m.aliases.items():
        assert resolve_layer(m, alias) == (path, alias)
        assert path in modules and path != ""
    assert len(m.default_layers) == (3 if name == "toy" else 1)
    for default in m.default_layers:
        assert default in modules and resolve_layer(m, default) == (default, None)
    names = layer_names(m)
    assert names[: len(m.aliases)] == list(m.aliases)
    # the default layer is a convolutional feature map with spatial extent (checked at a
    # reduced size to keep the suite fast; vgg16 is checked at full size below)
    size = m.input_size if name.startswith("vit_") else min(m.input_size, 112)  # ViT: fixed size
    out = _output_of(m, m.default_layers[-1], torch.zeros(1, 3, size, size))
    out = infer_layout(out.shape).to_map(out)  # tokens and channels-last outputs as maps
    assert out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1
    # no in-place activations left to overwrite a captured output
    assert not any(getattr(mod, "inplace", False) is True for mod in m.module.modules())


def test_toygan_is_a_generator_with_spatial_default_layers() -> None:
    m = load_model("toygan", weights="none")
    assert m.kind == "generator" and m.z_dim == 128 and m.input_size == 64
    assert m.default_layers == ["layer2", "layer3"]
    out = _output_of(m, "layer3", torch.zeros(2, 128))
    assert out.shape == (2, 2 * TOYGAN_WIDTH, 16, 16)  # layer3 has twice the base width
    assert m.provenance()["z_dim"] == 128


def test_random_init_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = load_model("resnet18", weights="none")
    after = torch.rand(3)
    b = load_model("resnet18", weights="NONE")
    assert a.weights_sha256 == b.weights_sha256
    assert torch.equal(after, expected)


def test_vgg16_conv5_3() -> None:
    m = _random("vgg16")
    assert resolve_layer(m, "conv5_3") == ("features.29", "conv5_3")
    assert resolve_layer(m, "features.29") == ("features.29", None)
    assert isinstance(get_layer(m, "conv5_3"), nn.ReLU)
    assert m.default_layers == ["features.29"] and m.input_size == 224
    out = _output_of(m, "features.29", torch.randn(1, 3, 224, 224))
    assert tuple(out.shape) == (1, 512, 14, 14)


def test_paper_aliases() -> None:
    assert get_model_spec("alexnet").aliases["conv5"] == "features.11"
    assert get_model_spec("resnet50").aliases["res5c"] == "layer4"
    assert get_model_spec("googlenet").aliases["inception_4e"] == "inception4e"
    vgg19 = get_model_spec("vgg19")
    assert vgg19.aliases[vgg19.default_layer] == "features.35"
    assert get_model_spec("inception_v3").input_size == 299


def test_toy_classifier_shapes() -> None:
    assert TOY_ALIASES["conv1_1"] == "features.1" and TOY_ALIASES["conv4_2"] == "features.18"
    assert list(TOY_ALIASES) == [f"conv{b}_{c}" for b in range(1, 5) for c in (1, 2)]
    m = load_model("toy", weights="none")
    assert m.input_size == 64 and m.default_layers == ["features.8", "features.13", "features.18"]
    for alias, path in TOY_ALIASES.items():
        assert isinstance(get_layer(m, alias), nn.ReLU)
        conv = m.module.features[int(path.split(".")[1]) - 1]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
    x = torch.randn(2, 3, 64, 64)
    assert tuple(_output_of(m, "features.18", x).shape) == (2, DEFAULT_WIDTHS[-1], 8, 8)
    assert tuple(m.module(x).shape) == (2, 6)


# --------------------------------------------------------------------------- hashing and files


def test_state_dict_hash_stable_and_sensitive() -> None:
    model = ToyClassifier()
    h = state_dict_sha256(model)
    assert h == state_dict_sha256(model) == state_dict_sha256(dict(reversed(list(model.state_dict().items()))))
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] += 1e-3
    assert state_dict_sha256(model) != h
    # dtype is part of the hash
    half = {k: v.half() for k, v in model.state_dict().items()}
    assert state_dict_sha256(half) != state_dict_sha256(model)


def test_pth_and_safetensors_round_trip(tmp_path: Path) -> None:
    model = ToyClassifier()
    expected = state_dict_sha256(model)
    pth, st = tmp_path / "toy.pth", tmp_path / "toy.safetensors"
    torch.save(model.state_dict(), pth)
    safetensors.torch.save_file(model.state_dict(), str(st))
    a, b = load_model("toy", weights=str(pth)), load_model("toy", weights=str(st))
    assert a.weights_sha256 == b.weights_sha256 == expected
    assert a.weights == "file:toy.pth" and b.weights == "file:toy.safetensors"
    assert a.weights_file_sha256 == sha256_file(pth)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(a.module(x), model(x))


class _Payload:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    state = ToyClassifier().state_dict()
    torch.save({"state_dict": state, "payload": _Payload(marker)}, evil)
    with pytest.raises(DissectError, match="refusing to load") as info:
        load_model("toy", weights=str(evil))
    assert "\n" not in str(info.value)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_dataparallel_prefix_and_wrappers(tmp_path: Path) -> None:
    model = ToyClassifier()
    path = tmp_path / "dp.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert load_model("toy", weights=str(path)).weights_sha256 == state_dict_sha256(model)
    torch.save({"model": model.state_dict(), "optimizer": {}}, path)
    assert load_model("toy", weights=str(path)).weights_sha256 == state_dict_sha256(model)


def test_num_classes_from_file_and_sidecar_class_names(tmp_path: Path) -> None:
    model = ToyClassifier(num_classes=3)
    path = tmp_path / "three.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    m = load_model("toy", weights=str(path))
    assert m.module.classifier[3].out_features == 3 and m.class_names is None
    (tmp_path / "three.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    assert load_model("toy", weights=str(path)).class_names == ["a", "b", "c"]
    with pytest.raises(DissectError, match="do not fit"):
        load_model("toy", weights=str(path), num_classes=4)


def test_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(DissectError, match="not found"):
        load_model("toy", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(DissectError, match="unknown type"):
        load_model("toy", weights=str(tmp_path / "w.npz"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DissectError, match="safetensors"):
        load_model("toy", weights=str(tmp_path / "junk.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(DissectError, match="junk.pth"):
        load_model("toy", weights=str(tmp_path / "junk.pth"))
    wrong = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(DissectError, match=r"do not fit model toy: missing keys features\.0\.weight") as info:
        load_model("toy", weights=str(wrong))
    assert "unexpected keys conv1.weight" in str(info.value) and "more)" in str(info.value)


# --------------------------------------------------------------------------- names and errors


def test_unknown_model_lists_nearest_first() -> None:
    with pytest.raises(DissectError) as info:
        load_model("resnet15")
    msg = str(info.value)
    assert msg.startswith("unknown model 'resnet15'; valid: resnet1")
    assert "resnet152" in msg and "package.module:callable" in msg
    assert "vgg16" not in msg or msg.index("resnet152") < msg.index("vgg16")   # far names last, or cut


def test_unknown_layer_lists_nearest_first() -> None:
    m = _random("vgg16")
    with pytest.raises(DissectError) as info:
        resolve_layer(m, "conv5_4")
    msg = str(info.value)
    assert msg.startswith("unknown layer 'conv5_4'; valid: conv5_")
    assert "dissect layers vgg16" in msg
    with pytest.raises(DissectError):
        resolve_layer(m, "")


def test_list_models_and_duplicates() -> None:
    assert {"toy", "vgg16", "resnet18", "resnet50", "resnet152", "alexnet", "googlenet", "densenet161"} <= set(list_models())
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet152-places365", "resnet18", "resnet50"]
    assert list_models("VGG1?") == ["vgg16", "vgg19"]
    with pytest.raises(ValueError, match="already registered"):
        add_model_spec(ModelSpec(name="vgg16", builder=lambda n: nn.Identity()))


def test_toy_builtin_weights_missing_message(tmp_path: Path, monkeypatch) -> None:
    import dissect.models.weights as weights
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path)   # as if never trained
    with pytest.raises(DissectError, match="dissect train toy-classifier"):
        load_model("toy")


def test_toy_builtin_weights() -> None:
    if not TOY_WEIGHTS.exists():
        pytest.skip("toy weights not trained yet (dissect train toy-classifier)")
    m = load_model("toy")
    meta = json.loads(TOY_WEIGHTS.with_suffix(".json").read_text())
    assert m.weights == "builtin:toy_classifier" and m.class_names == meta["class_names"]
    assert m.weights_file_sha256 == sha256_file(TOY_WEIGHTS)
    assert m.module.classifier[3].out_features == len(meta["class_names"])


# --------------------------------------------------------------------------- user models


def _write_module(tmp_path: Path, monkeypatch, name: str) -> None:
    (tmp_path / f"{name}.py").write_text(
        "import torch.nn as nn\n"
        "def build(num_classes=2):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
        "def not_a_model():\n"
        "    return 42\n"
        "CONSTANT = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_module_callable(tmp_path: Path, monkeypatch) -> None:
    _write_module(tmp_path, monkeypatch, "user_net_a")
    m = load_model("user_net_a:build")
    assert m.name == "user_net_a:build" and m.spec is None and m.weights == "object"
    assert m.default_layers == ["1"] and m.aliases == {} and m.input_size == 224
    assert resolve_layer(m, "0") == ("0", None)
    assert load_model("user_net_a:build").weights_sha256 == m.weights_sha256  # seeded init
    assert load_model("user_net_a:build", num_classes=5).module[4].out_features == 5
    # weights from a file still apply
    other = torch.nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    torch.save(other.state_dict(), tmp_path / "user.pt")
    w = load_model("user_net_a:build", weights=str(tmp_path / "user.pt"))
    assert w.weights == "file:user.pt" and w.weights_sha256 == state_dict_sha256(other)


def test_module_callable_errors(tmp_path: Path, monkeypatch) -> None:
    _write_module(tmp_path, monkeypatch, "user_net_b")
    with pytest.raises(DissectError, match="not a torch.nn.Module"):
        load_model("user_net_b:not_a_model")
    with pytest.raises(DissectError, match="not a callable"):
        load_model("user_net_b:CONSTANT")
    with pytest.raises(DissectError, match=r"unknown callable 'biuld' in module user_net_b; valid: build"):
        load_model("user_net_b:biuld")
    with pytest.raises(DissectError, match="cannot import 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:build")
    assert "user_net_b" in sys.modules


def test_from_module() -> None:
    net = ToyClassifier(num_classes=4)
    m = from_module(net, name="mine", input_size=64, class_names=list("abcd"))
    # the last module to finish with a spatial output: `features` (its output is features.18's)
    assert m.default_layers == ["features"] and not net.training
    assert m.weights == "object" and m.weights_sha256 == state_dict_sha256(net)
    assert m.provenance()["num_classes"] == 4


# --------------------------------------------------------------------------- default weights download (offline)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert checkpoint_dir() == tmp_path / "torch_home" / "hub" / "checkpoints"
    return checkpoint_dir()


def _serve_as(tmp_path: Path, state: dict, stem: str) -> Path:
    """Save ``state`` as torchvision names files: ``stem-<sha256 prefix>.pth``."""
    folder = tmp_path / "mirror"
    folder.mkdir(exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    final = folder / f"{stem}-{sha256_file(tmp)[:8]}.pth"
    tmp.rename(final)
    return final


def test_default_weights_are_downloaded_checked_and_reused(tmp_path: Path, monkeypatch, hub: Path) -> None:
    ref = _random("resnet18")
    served = _serve_as(tmp_path, ref.module.state_dict(), "resnet18")
    enum = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1")
    monkeypatch.setattr(enum.value, "url", served.as_uri())

    m = load_model("resnet18", progress=False)
    assert m.weights == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert m.weights_sha256 == ref.weights_sha256
    assert m.weights_file_sha256 == sha256_file(served)
    assert m.class_names is not None and len(m.class_names) == 1000 and m.class_names[0] == "tench"
    cached = hub / served.name
    assert cached.is_file() and sorted(p.name for p in hub.iterdir()) == [served.name]

    cached.write_bytes(b"corrupt")  # a bad cached copy is fetched again
    assert load_model("resnet18", progress=False).weights_sha256 == ref.weights_sha256
    served.unlink()  # a good cached copy is reused without the network
    assert load_model("resnet18", progress=False).weights_sha256 == ref.weights_sha256


def test_default_weights_offline_and_bad_checksum(tmp_path: Path, monkeypatch, hub: Path) -> None:
    enum = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1")
    monkeypatch.setattr(enum.value, "url", (tmp_path / "offline" / "resnet18-f37072fd.pth").as_uri())
    with pytest.raises(DissectError, match=r"could not download .*--weights FILE.*--weights none"):
        load_model("resnet18", progress=False)

    wrong = tmp_path / "resnet18-00000000.pth"
    torch.save(_random("resnet18").module.state_dict(), wrong)
    monkeypatch.setattr(enum.value, "url", wrong.as_uri())
    with pytest.raises(DissectError, match="checksum mismatch"):
        load_model("resnet18", progress=False)
    assert not hub.exists() or list(hub.iterdir()) == []


def test_torchvision_weights_by_name_and_densenet_keys(tmp_path: Path, monkeypatch, hub: Path) -> None:
    # torchvision's densenet checkpoints use the old 'norm.1' key style; they must load
    ref = _random("densenet161")
    old = {}
    for k, v in ref.module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # saved before PyTorch 0.4.1, like torchvision's file
        for new, legacy in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if ".denselayer" in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{legacy}.")
        old[k] = v
    assert any(".norm.1." in k for k in old)
    served = _serve_as(tmp_path, old, "densenet161")
    enum = torchvision.models.get_weight("DenseNet161_Weights.IMAGENET1K_V1")
    monkeypatch.setattr(enum.value, "url", served.as_uri())
    m = load_model("densenet161", weights="torchvision:DenseNet161_Weights.IMAGENET1K_V1", progress=False)
    assert m.weights_sha256 == ref.weights_sha256
    with pytest.raises(DissectError, match="unknown torchvision weights"):
        load_model("densenet161", weights="torchvision:Nope_Weights.X")


def test_aux_heads_in_checkpoints_are_ignored(tmp_path: Path) -> None:
    # torchvision's googlenet checkpoint carries the (untrained) aux1/aux2 heads
    full = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pth"
    torch.save(full.state_dict(), path)
    m = load_model("googlenet", weights=str(path))
    assert m.class_names is not None and len(m.class_names) == 1000  # ImageNet-sized head
    assert m.weights_sha256 == state_dict_sha256({k: v for k, v in full.state_dict().items() if not k.startswith("aux")})
