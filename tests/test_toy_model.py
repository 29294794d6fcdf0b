"""The shipped toy classifier: its accuracy, and the 2017 paper's sanity check that a trained
network has many more object/part detectors than the same architecture with random weights."""

import json

import torch

from dissect.data.broden import BrodenDataset, collate
from dissect.data.toyworld import SCENE_CLASSES
from dissect.experiments.dissection import DissectConfig, dissect_layers, summarize_layer
from dissect.models import load_model, resolve_layer
from dissect.models.weights import WEIGHTS_DIR


def test_training_record():
    record = json.loads((WEIGHTS_DIR / "toy_classifier.json").read_text())
    assert record["class_names"] == list(SCENE_CLASSES)
    assert record["heldout_accuracy"] >= 0.90
    assert record["command"].startswith("dissect train toy-classifier")


def test_heldout_accuracy_on_fresh_scenes(toyworld_small):
    """Scenes the classifier never saw (the probe set's seeds) are classified >= 90%."""
    m = load_model("toy", progress=False)
    ds = BrodenDataset(toyworld_small, input_size=64, mean=m.mean, std=m.std)
    scene = {lab.number: lab.display for lab in ds.index.labels.values() if lab.category == "scene"}
    batch = collate([ds[i] for i in range(len(ds))])
    truth = torch.tensor([SCENE_CLASSES.index(scene[int(r[r > 0][0])]) for r in batch["image_labels"]])
    with torch.no_grad():
        pred = m.module(batch["image"]).argmax(1)
    assert (pred == truth).float().mean().item() >= 0.90


def count_object_part_detectors(weights, ds):
    m = load_model("toy", weights=weights, progress=False)
    path, _ = resolve_layer(m, "conv4_2")
    config = DissectConfig(num_workers=0, top_k=1)
    stats = dissect_layers(m.module, [path], ds, config, progress=False)[path]
    units = summarize_layer(stats, ds, config)["units"]
    return sum(u["detector"] and u["category"] in ("object", "part") for u in units)


def test_trained_has_many_more_detectors_than_random(toyworld_small):
    ds = BrodenDataset(toyworld_small, input_size=64)
    trained = count_object_part_detectors(None, ds)
    random = count_object_part_detectors("none", ds)
    assert trained >= 5
    assert trained >= 3 * random, (trained, random)
