"""The papers' own networks from files in their published formats (random weights).

The Places365 classifiers (VGG-16, Caffe AlexNet, Torch7 ResNet-152) and the Progressive
GAN generators are checked against layouts and references written here independently of
dissect's builders: the published key names and shapes (torchvision's VGG-16 and
ResNet-152 with their keys renamed as the published files name them; AlexNet's shapes from
its Caffe definition), the same outputs as a direct build (torchvision's networks, or a
functional forward written out below), and a dissection end to end, offline.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dissect.cli import main
from dissect.errors import DissectError
from dissect.models import get_model_spec, load_model, output_range, to_unit
from dissect.models.lookalike import closest_models
from dissect.models.weights import resolve_weights
from dissect.models.zoo.places365 import CATEGORIES_FILE


def run_cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 tensors for ``layout`` at scales that keep a deep network's activations
    finite: He-scaled weights, batch norms near identity, small biases."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or key.endswith("bias") or key.endswith(".b"):
            t = 0.05 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # a batch norm's scale
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        out[key] = t
    return out


def layout_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}


def meta(build):
    with torch.device("meta"):
        return build()


# ----------------------------------------------------------------------------- published layouts

VGG_BLOCKS = (2, 2, 3, 3, 3)


def vgg_published_names() -> dict[str, str]:
    """torchvision VGG-16 key -> the published file's key (features.conv1_1, classifier.fc6)."""
    names, i = {}, 0
    for b, n in enumerate(VGG_BLOCKS, start=1):
        for c in range(1, n + 1):
            names[f"features.{i}"] = f"features.conv{b}_{c}"
            i += 2
        i += 1
    names.update({"classifier.0": "classifier.fc6", "classifier.3": "classifier.fc7", "classifier.6": "classifier.fc8a"})
    return names


def rename(state: dict, names: dict[str, str]) -> dict:
    out = {}
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")
        out[f"{names[prefix]}.{leaf}"] = v
    return out


def resnet_published_key(key: str) -> str:
    """torchvision ResNet-152 key -> the Torch7 conversion's indexed key."""
    leaf_map = {"conv1": "0.0.0", "bn1": "0.0.1", "conv2": "0.0.3", "bn2": "0.0.4", "conv3": "0.0.6",
                "bn3": "0.0.7", "downsample.0": "0.1.0", "downsample.1": "0.1.1"}
    m = re.match(r"^layer(\d)\.(\d+)\.(.+)\.(\w+)$", key)
    if m:
        return f"{3 + int(m.group(1))}.{m.group(2)}.{leaf_map[m.group(3)]}.{m.group(4)}"
    top = {"conv1": "0", "bn1": "1", "fc": "10.1"}
    prefix, _, leaf = key.rpartition(".")
    return f"{top[prefix]}.{leaf}"


ALEXNET_LAYOUT = {  # Caffe's AlexNet for Places365: conv2, conv4, conv5 in two groups
    "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
    "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),
    "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),
    "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
    "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
    "fc6.weight": (4096, 9216), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (365, 4096), "fc8.bias": (365,),
}


def published_layout(name: str) -> dict[str, tuple[int, ...]]:
    if name == "vgg16-places365":
        tv = layout_of(meta(lambda: torchvision.models.vgg16(num_classes=365)))
        return {rename({k: None}, vgg_published_names()).popitem()[0]: s for k, s in tv.items()}
    if name == "resnet152-places365":
        tv = layout_of(meta(lambda: torchvision.models.resnet152(num_classes=365)))
        return {resnet_published_key(k): s for k, s in tv.items()}
    return dict(ALEXNET_LAYOUT)


PLACES = ("vgg16-places365", "alexnet-places365", "resnet152-places365")


@pytest.mark.parametrize("name", PLACES)
def test_places365_builds_the_published_layout(name):
    spec = get_model_spec(name)
    assert layout_of(meta(lambda: spec.builder(365))) == published_layout(name)
    assert spec.num_classes == 365 and spec.ablation_data == "places_val"
    assert spec.default_weights == "url:https://dissect.csail.mit.edu/models/" + {
        "vgg16-places365": "vgg16_places365-0bafbc55.pth", "alexnet-places365": "alexnet_places365-92864cf6.pth",
        "resnet152-places365": "resnet152_places365-f928166e5c.pth"}[name]
    assert (spec.input_size, spec.default_data) == ((227, "broden1_227") if "alexnet" in name else (224, "broden1_224"))
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


def test_places365_class_names_are_the_365_scenes():
    names = get_model_spec("vgg16-places365").class_names
    assert len(names) == 365 == len(set(names))
    assert (names[0], names[24], names[364]) == ("airfield", "athletic_field/outdoor", "zen_garden")
    assert all(get_model_spec(n).class_names == names for n in PLACES)
    # the list ships as package data: `pip install .` must carry it
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dissect.models.zoo"]
    assert any(fnmatch.fnmatch(CATEGORIES_FILE.name, p) for p in patterns)


def test_papers_layer_names_are_aliases():
    """The papers' names lead to the ReLU after the layer (Caffe's in-place blob)."""
    for name, alias, path in [("alexnet-places365", "conv5", "relu5"), ("vgg16-places365", "conv5_3", "features.relu5_3"),
                              ("resnet152-places365", "layer4", "7"), ("resnet152-places365", "res5c", "7")]:
        spec = get_model_spec(name)
        assert spec.aliases[alias] == path
        modules = dict(meta(lambda: spec.builder(365)).named_modules())
        assert path in modules and spec.head in modules
    assert [get_model_spec(n).default_layer for n in PLACES] == ["conv5_3", "conv5", "layer4"]


# ----------------------------------------------------------------------------- the files, loaded


@pytest.fixture(scope="module")
def places_files(tmp_path_factory):
    """Lazily written: name -> a .pth with random weights, a plain state dict as published
    (the ResNet's without num_batches_tracked, as saved by the PyTorch of its conversion)."""
    root = tmp_path_factory.mktemp("places365")
    made = {}

    def get(name):
        if name not in made:
            made[name] = root / f"{name}.pth"
            torch.save(random_state(published_layout(name), seed=len(made)), made[name])
        return made[name]

    return get


def caffe_alexnet_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """AlexNet as Caffe defines it, written with torch.nn.functional."""
    def lrn(t):  # Caffe LRN, across channels: local_size 5, alpha 1e-4, beta 0.75, k 1
        return F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=1.0)
    x = lrn(F.max_pool2d(F.relu(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], stride=4)), 3, 2))
    x = lrn(F.max_pool2d(F.relu(F.conv2d(x, sd["conv2.weight"], sd["conv2.bias"], padding=2, groups=2)), 3, 2))
    x = F.relu(F.conv2d(x, sd["conv3.weight"], sd["conv3.bias"], padding=1))
    x = F.relu(F.conv2d(x, sd["conv4.weight"], sd["conv4.bias"], padding=1, groups=2))
    x = F.max_pool2d(F.relu(F.conv2d(x, sd["conv5.weight"], sd["conv5.bias"], padding=1, groups=2)), 3, 2)
    x = F.relu(F.linear(x.flatten(1), sd["fc6.weight"], sd["fc6.bias"]))
    x = F.relu(F.linear(x, sd["fc7.weight"], sd["fc7.bias"]))
    return F.linear(x, sd["fc8.weight"], sd["fc8.bias"])


def direct_build(name: str, sd: dict) -> torch.nn.Module | None:
    """torchvision's network with the published weights renamed back to its keys."""
    if name == "vgg16-places365":
        net = torchvision.models.vgg16(num_classes=365)
        back = {v: k for k, v in vgg_published_names().items()}
        net.load_state_dict(rename(sd, back))
    else:
        net = torchvision.models.resnet152(num_classes=365)
        tv = net.state_dict()
        net.load_state_dict({k: sd.get(resnet_published_key(k), tv[k]) for k in tv})
    return net.eval()


def check_loads_like_direct_build(name, path, size):
    loaded = load_model(name, weights=str(path))
    assert loaded.weights == f"file:{path.name}" and loaded.class_names[0] == "airfield"
    assert len(loaded.class_names) == 365
    sd = torch.load(path, weights_only=True)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = loaded.module(x)
        ref = caffe_alexnet_forward(sd, x) if name == "alexnet-places365" else direct_build(name, sd)(x)
    assert ours.shape == (2, 365)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    return loaded


def dissect_offline(capsys, tmp_path, name, path, input_size, n, layer_units):
    code, err = run_cli(capsys, "report", "--model", name, "--weights", str(path), "--data", "toyworld",
                        "--data-size", str(n), "--input-size", str(input_size), "--top-k", "2",
                        "--batch-size", "2", "--no-ablation", "--out", str(tmp_path / "site"),
                        "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert code == 0, err
    res = json.loads((tmp_path / "site" / name / "results.json").read_text())
    layer = res["layers"][0]
    assert (layer["name"], layer["alias"], layer["num_units"]) == layer_units
    assert res["model"]["weights"] == f"file:{path.name}" and len(res["model"]["class_names"]) == 365
    assert (tmp_path / "site" / name / "index.html").is_file()


@pytest.mark.slow
def test_alexnet_places365_file_loads_and_dissects(places_files, capsys, tmp_path):
    path = places_files("alexnet-places365")
    check_loads_like_direct_build("alexnet-places365", path, 227)
    # the toy world is drawn at even sizes; the adaptive pool before fc6 lets AlexNet run at 128 px
    dissect_offline(capsys, tmp_path, "alexnet-places365", path, 128, 4, ("relu5", "conv5", 256))


@pytest.mark.slow
def test_vgg16_places365_file_loads_and_dissects(places_files, capsys, tmp_path):
    path = places_files("vgg16-places365")
    check_loads_like_direct_build("vgg16-places365", path, 64)  # torchvision's VGG pools to 7x7
    dissect_offline(capsys, tmp_path, "vgg16-places365", path, 64, 4, ("features.relu5_3", "conv5_3", 512))


@pytest.mark.slow
def test_resnet152_places365_file_loads_and_dissects(places_files, capsys, tmp_path):
    path = places_files("resnet152-places365")  # smaller than 224 px: the pool is adaptive
    check_loads_like_direct_build("resnet152-places365", path, 112)
    dissect_offline(capsys, tmp_path, "resnet152-places365", path, 112, 4, ("7", "layer4", 2048))


# ----------------------------------------------------------------------------- Progressive GAN

SMALL_SIZES = (32, 32, 32, 16, 16, 8)  # z, then channels at 4, 8, 16, 32, 64 px: a 64 px generator


def progan_layout(sizes, old_style=False) -> dict[str, tuple[int, ...]]:
    """The published key layout: a 4x4 conv from z, then two 3x3 convs per resolution, each
    with its wscale bias, and a 1x1 conv to RGB (older files: features.N and output)."""
    convs = [(sizes[1], sizes[0], 4)] + [(sizes[1], sizes[1], 3)]
    for cin, cout in zip(sizes[1:-1], sizes[2:]):
        convs += [(cout, cin, 3), (cout, cout, 3)]
    out, res = {}, 4 * 2 ** (len(sizes) - 2)
    for i, (cout, cin, k) in enumerate(convs):
        block = f"features.{i}" if old_style else f"layer{i + 1}"
        out[f"{block}.conv.weight"] = (cout, cin, k, k)
        out[f"{block}.wscale.b"] = (cout,)
    head = "output" if old_style else f"output_{res}x{res}"
    out[f"{head}.conv.weight"], out[f"{head}.wscale.b"] = (3, sizes[-1], 1, 1), (3,)
    return out


def progan_forward(sd: dict, z: torch.Tensor, blocks: int, head: str) -> torch.Tensor:
    """Karras et al.'s generator written out: pixel norm, (upsample,) conv scaled by
    sqrt(2 / fan_in) plus bias, leaky ReLU 0.2; the RGB conv scaled by sqrt(1 / fan_in)."""
    def pixnorm(t):
        return t / torch.sqrt(t.pow(2).mean(1, keepdim=True) + 1e-8)
    x = z[:, :, None, None]
    for i in range(blocks):
        w, b = sd[f"layer{i + 1}.conv.weight"], sd[f"layer{i + 1}.wscale.b"]
        x = pixnorm(x)
        if i >= 2 and i % 2 == 0:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, w, padding=3 if i == 0 else 1) * math.sqrt(2 / w[0].numel()) + b[:, None, None]
        x = F.leaky_relu(x, 0.2)
    w, b = sd[f"{head}.conv.weight"], sd[f"{head}.wscale.b"]
    return F.conv2d(pixnorm(x), w) * math.sqrt(1 / w[0].numel()) + b[:, None, None]


@pytest.fixture(scope="module")
def progan_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("progan")
    state = random_state(progan_layout(SMALL_SIZES))
    state = {k: (v * 1.5 if k.endswith(".b") else v) for k, v in state.items()}
    new, old = root / "proggan_small.pth", root / "proggan_small_old.pth"
    torch.save(state, new)
    renamed = {}
    for k, v in state.items():
        m = re.match(r"^layer(\d+)\.(.*)$", k)
        renamed[f"features.{int(m.group(1)) - 1}.{m.group(2)}" if m else "output." + k.split(".", 1)[1]] = v
    assert set(renamed) == set(progan_layout(SMALL_SIZES, old_style=True))
    torch.save(renamed, old)
    return {"new": new, "old": old, "state": state}


def test_progan_registered_as_the_papers():
    names = ["bedroom", "church", "conferenceroom", "diningroom", "kitchen", "livingroom", "restaurant"]
    files = ["proggan_bedroom-d8a89ff1.pth", "proggan_churchoutdoor-7e701dd5.pth", "proggan_conferenceroom-21e85882.pth",
             "proggan_diningroom-3aa0ab80.pth", "proggan_kitchen-67f1e16c.pth", "proggan_livingroom-5ef336dd.pth",
             "proggan_restaurant-b8578299.pth"]
    for name, file in zip(names, files):
        spec = get_model_spec(f"progan-{name}")
        assert spec.default_weights == f"url:https://dissect.csail.mit.edu/models/{file}"
        assert (spec.kind, spec.z_dim, spec.input_size, spec.default_layer) == ("generator", 512, 256, "layer4")
        assert (spec.segmenter, spec.declared_range) == ("upp", "tanh")
    full = get_model_spec("progan-church").builder(0)
    assert layout_of(full) == progan_layout((512, 512, 512, 512, 256, 128, 64, 32))
    assert dict(full.named_modules())["layer4"] is full.layer4 and "output_256x256" in dict(full.named_children())


@pytest.mark.parametrize("style", ["new", "old"])
def test_progan_file_loads_in_both_key_styles(progan_files, style):
    loaded = load_model("progan-kitchen", weights=str(progan_files[style]))
    assert (loaded.kind, loaded.z_dim, loaded.input_size) == ("generator", 32, 64)
    assert loaded.default_layers == ["layer4"] and loaded.declared_range == "tanh"
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = loaded.module(z)
    ref = progan_forward(progan_files["state"], z, 10, "output_64x64")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.shape == (4, 3, 64, 64)
    # ProGAN's output is unclamped: these weights overshoot [-1, 1], and the declared range
    # is taken as is and clamped, where an undeclared one is refused
    assert out.min() < -1.01 or out.max() > 1.01
    assert output_range(out, declared="tanh") == "tanh"
    with pytest.raises(DissectError, match=r"images must be in \[-1, 1\]"):
        output_range(out)
    unit = to_unit(out, "tanh")
    assert unit.min() >= 0 and unit.max() <= 1 and (unit[out > 1] == 1).all() and (unit[out < -1] == 0).all()
    torch.testing.assert_close(unit, ((out + 1) / 2).clamp(0, 1))


def test_progan_dissects_end_to_end_offline(progan_files, capsys, tmp_path):
    code, err = run_cli(capsys, "report", "--model", "progan-church", "--weights", str(progan_files["new"]),
                        "--segmenter", "toy", "--data-size", "24", "--no-interventions", "--top-k", "2",
                        "--out", str(tmp_path / "site"), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert code == 0, err
    res = json.loads((tmp_path / "site" / "progan-church" / "results.json").read_text())
    assert res["model"]["kind"] == "generator" and res["model"]["z_dim"] == 32
    assert res["model"]["input_size"] == 64
    assert (res["layers"][0]["name"], res["layers"][0]["num_units"]) == ("layer4", 32)
    assert res["params"]["quantile"] == 0.01


@pytest.mark.slow
def test_progan_interventions_use_the_papers_concepts(progan_files, tmp_path):
    """progan-church's own experiments (trees removed, doors inserted) run on its clamped
    output, here labeled by the toy segmenter (which knows both concepts)."""
    from dissect import report
    from dissect.experiments.dissection import DissectConfig
    from dissect.experiments.generator import GeneratorExperimentConfig

    report(model="progan-church", weights=str(progan_files["new"]), segmenter="toy", data_size=24,
           out=tmp_path / "site", cache_dir=tmp_path / "cache", config=DissectConfig(top_k=2), progress=False,
           interventions=GeneratorExperimentConfig(samples=8, insert_samples=2, curve_samples=1, top_n=(1, 4),
                                                   units=4, random_draws=1, strip_samples=2, region=4))
    res = json.loads((tmp_path / "site" / "progan-church" / "results.json").read_text())
    layer = res["generator"]["layers"][0]
    assert layer["layer"] == "layer4"
    assert [a["concept"] for a in layer["ablation"]] == ["tree"] and [i["concept"] for i in layer["insertion"]] == ["door"]
    assert layer["insertion"][0]["positions"] == 4  # 4x4 regions of the 8x8 map


# ----------------------------------------------------------------------------- bad input


def test_wrong_architecture_names_the_lookalike(progan_files, capsys, tmp_path):
    code, err = run_cli(capsys, "report", "--model", "toygan", "--weights", str(progan_files["old"]),
                        "--out", str(tmp_path / "site"), "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "do not fit model toygan" in lines[0], err
    assert "missing keys layer1.0.weight" in lines[0] and "unexpected keys features.0.conv.weight" in lines[0]
    assert "look like the weights of model progan-bedroom (or 6 more of the same layout)" in lines[0]
    assert not (tmp_path / "site").exists()


def test_lookalike_finds_the_family_of_published_layouts():
    tv_vgg = meta(lambda: torchvision.models.vgg16()).state_dict()
    assert closest_models(tv_vgg, exclude="vgg16-places365") == ["vgg16"]
    places = {k: torch.empty(s, device="meta") for k, s in published_layout("resnet152-places365").items()}
    assert closest_models(places, exclude="resnet152") == ["resnet152-places365"]
    assert closest_models({"w": torch.zeros(3)}) == []
    # weights that fit the model they were given to (another number of classes, say) name
    # no other; a near layout (VGG-19 shares most of VGG-16's first layers) is no lookalike
    ten = meta(lambda: torchvision.models.vgg16(num_classes=10)).state_dict()
    assert closest_models(ten, exclude="vgg16") == [] and "vgg19" not in closest_models(ten)


def test_unknown_weights_scheme_is_one_clear_line():
    spec = get_model_spec("vgg16-places365")
    with pytest.raises(DissectError, match=r"does not know the weights source 'nosuch:'.*--weights FILE"):
        resolve_weights(spec, spec.name, "nosuch:vgg16_places365-0bafbc55.pth", progress=False)


def test_a_held_generator_may_declare_its_range():
    """from_module: a generator that overshoots [-1, 1] is refused unless it declares its range
    (then it is clamped); a range that does not exist is refused."""
    from dissect.models import from_module

    class Overshoot(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale
            self.up = torch.nn.ConvTranspose2d(4, 3, 8)

        def forward(self, z):
            return self.scale * torch.tanh(100 * self.up(z[:, :, None, None]))

    with pytest.raises(DissectError, match="images must be in"):
        from_module(Overshoot(1.2), name="over", kind="generator", z_dim=4)
    loaded = from_module(Overshoot(1.2), name="over", kind="generator", z_dim=4, declared_range="tanh")
    assert (loaded.declared_range, loaded.input_size) == ("tanh", 8)
    with pytest.raises(DissectError, match="declares the output range 'bytes'"):
        from_module(Overshoot(1.2), name="over", kind="generator", z_dim=4, declared_range="bytes")
