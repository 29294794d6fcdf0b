"""Dissect your own generator, and label its outputs with your own segmenter.

    python examples/custom_generator.py            # writes site-custom-gan/

The same as the command line::

    dissect report --model examples.custom_generator:make_generator --kind generator --z-dim 128 \
        --segmenter examples.custom_generator:make_segmenter --ablate-concept bright \
        --insert-concept bright --out site-custom-gan/

Here the generator is the toy GAN's architecture with the shipped weights (swap in yours:
any ``nn.Module`` mapping ``[N, z_dim]`` latents to ``[N, 3, H, W]`` images in [-1, 1] or
[0, 1]), and the segmenter a trivial one that labels bright and dark pixels, to show the
interface (``concepts``, ``layers``, ``segment``).
"""

from __future__ import annotations

import torch


def make_generator() -> torch.nn.Module:
    from dissect.models import load_model
    return load_model("toygan").module


class BrightDark:
    """Labels each pixel 'bright' or 'dark' by its mean intensity."""

    concepts = [("bright", "object"), ("dark", "object")]
    layers = ["object"]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        bright = images.mean(1, keepdim=True) > 0.5
        return torch.where(bright, 1, 2).long()


def make_segmenter() -> BrightDark:
    return BrightDark()


if __name__ == "__main__":
    from dissect.experiments.generator import GeneratorExperimentConfig
    from dissect.models import from_module
    from dissect import report

    loaded = from_module(make_generator(), name="my-gan", kind="generator", z_dim=128)
    report(model=loaded, segmenter="examples.custom_generator:make_segmenter", data_size=300,
           interventions=GeneratorExperimentConfig(ablate=("bright",), insert=("bright",), samples=64),
           out="site-custom-gan")
