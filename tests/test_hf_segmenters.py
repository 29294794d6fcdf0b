"""The Hugging Face ADE20K segmenters (optional extra ``dissect[hf]``) on tiny randomly
initialised models saved with ``save_pretrained``, against ``transformers``' own
post-processing; skipped when transformers is not installed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dissect.errors import DissectError
from dissect.segmenters import load_segmenter

transformers = pytest.importorskip("transformers")

CLASSES = ["wall", "building", "sky", "floor", "tree", "bed "]   # ADE20K's names, one with a space


def _labels():
    id2label = dict(enumerate(CLASSES))
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                                       num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16, **_labels())
    folder = tmp_path_factory.mktemp("segformer")
    transformers.SegformerForSemanticSegmentation(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "size": {"height": 64, "width": 64}}))
    return folder


@pytest.fixture(scope="module")
def mask2former_dir(tmp_path_factory):
    torch.manual_seed(0)
    swin = transformers.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32,
                                         hidden_dim=32, encoder_feedforward_dim=32, encoder_layers=1,
                                         decoder_layers=2, num_attention_heads=2, dim_feedforward=32,
                                         num_queries=6, **_labels())
    folder = tmp_path_factory.mktemp("mask2former")
    transformers.Mask2FormerForUniversalSegmentation(cfg).save_pretrained(folder)
    return folder   # no preprocessor_config.json: ImageNet mean/std at 512 px


def _reference(seg, images, processor):
    """What transformers' own pre- and post-processing make of the images."""
    x = F.interpolate(images, (seg.size, seg.size), mode="bilinear", align_corners=False)
    x = (x - seg.mean) / seg.std
    with torch.no_grad():
        out = seg.net(pixel_values=x)
    maps = processor.post_process_semantic_segmentation(out, target_sizes=[images.shape[2:]] * len(images))
    return torch.stack(maps) + 1


def test_segformer(segformer_dir):
    seg = load_segmenter("segformer-ade20k", str(segformer_dir), progress=False)
    assert seg.concepts[:6] == [(n.strip().replace(" ", "_"), "object") for n in CLASSES]
    assert seg.layers == ["object", "color"] and seg.size == 64
    torch.testing.assert_close(seg.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    out = seg.segment(images)
    assert out.shape == (2, 2, 40, 48)
    ref = _reference(seg, images, transformers.SegformerImageProcessor())
    assert torch.equal(out[:, 0], ref)
    assert out[:, 1].min() > len(CLASSES)
    assert seg.provenance()["weights_sha256"]


def test_mask2former(mask2former_dir):
    seg = load_segmenter("mask2former-ade20k", str(mask2former_dir), progress=False)
    assert seg.size == 512 and len(seg.concepts) == len(CLASSES) + 11
    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    out = seg.segment(images)
    ref = _reference(seg, images, transformers.Mask2FormerImageProcessor())
    assert torch.equal(out[:, 0], ref)
    assert set(out[:, 0].unique().tolist()) <= set(range(1, len(CLASSES) + 1))


def test_bad_hf_weights_are_one_line(segformer_dir, mask2former_dir, tmp_path):
    with pytest.raises(DissectError, match="holds a segformer model, not mask2former"):
        load_segmenter("mask2former-ade20k", str(segformer_dir), progress=False)
    with pytest.raises(DissectError, match="has no config.json"):
        load_segmenter("segformer-ade20k", str(tmp_path), progress=False)
