"""A generator's probe set: its outputs for a fixed sequence of latents, labeled by a segmenter.

GAN dissection probes a generator with random latents ``z`` (a fixed seed); the segmenter
labels the generated images. :func:`write_generated_probe` writes exactly that as a
Broden-format directory (``BRODEN.md``): the images, one label layer per segmenter category,
the usual tables, plus ``latents.npy`` (``[N, z_dim]`` float32) holding each image's ``z``.
Every tool that reads Broden reads it (and a user can open it); the dissection runs the
generator on the latents (:class:`~dissect.data.broden.BrodenDataset` with
``model_input="latent"``) and the labels describe the images it produced.

Latent ``i`` is :func:`dissect.models.latents.sample_z` ``(seed, i)``: any prefix of the set is
the same whatever its size or batch size. The images are quantized to 8 bits before they are
segmented, so the labels describe exactly the pixels that are saved and shown. Written to a
temporary directory and moved into place; reused when the generator's weights, the
segmenter, the seed and the size all match (``generated.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DissectError
from ..cache import cache_key
from ..models.latents import output_range, quantize, sample_z, to_unit
from ..segmenters.base import Segmenter
from ..segmenters.registry import load_segmenter, segmenter_key
from ..slugs import slugify
from .broden import GENERATED_MANIFEST, BrodenDataset, BrodenIndex
from .broden_writer import SegmentedImagesWriter, write_dir_atomically

MANIFEST = GENERATED_MANIFEST
VERSION = 1
DEFAULT_SIZE = 1000     # latents in a generator's default probe set


def probe_manifest(loaded, segmenter, n: int, seed: int, z_dim: int) -> dict:
    """What identifies a generated probe set (``generated.json``): reused when all of it matches."""
    return {"generator": "dissect.data.generated", "version": VERSION,
            "model": loaded.name, "weights_sha256": loaded.weights_sha256,
            "segmenter": segmenter.name, "segmenter_key": segmenter_key(segmenter),
            "n": int(n), "seed": int(seed), "z_dim": int(z_dim)}


def default_segmenter_name(loaded) -> str:
    """The segmenter that labels a generator's outputs unless one is named (see
    :func:`segmenter_for`)."""
    return segmenter_for(loaded.spec, loaded.input_size)


def segmenter_for(spec, output_size: int) -> str:
    """The segmenter of a generator with registration ``spec`` (or None) and outputs of
    ``output_size`` px: the spec's own ``segmenter``, else the toy segmenter for 64 px
    outputs, else torchvision's DeepLabV3."""
    if spec is not None and spec.segmenter:
        return spec.segmenter
    return "toy" if output_size == 64 else "deeplabv3_resnet50"


@dataclass
class GeneratedProbe:
    """A generator's opened probe set: its folder, the dataset (latents in, labels of the
    images they make) and the segmenter that labeled it."""

    path: Path
    dataset: BrodenDataset
    segmenter: Segmenter


def open_generated_probe(loaded, cache_dir: Path, segmenter: str | None = None, n: int | None = None,
                         seed: int = 1, batch_size: int = 64, device: torch.device | str = "cpu",
                         progress: bool = True, segmenter_weights: str | None = None) -> GeneratedProbe:
    """The probe set of generator ``loaded``: ``n`` samples (default :data:`DEFAULT_SIZE`) of
    latents ``seed`` labeled by ``segmenter`` (default :func:`default_segmenter_name`; its
    weights ``segmenter_weights``, default its own),
    written once under ``cache_dir/generated/`` (keyed by the weights, the segmenter, ``n``
    and ``seed``) and reused after."""
    seg = load_segmenter(segmenter or default_segmenter_name(loaded), segmenter_weights, progress=progress)
    n = n or DEFAULT_SIZE
    key = cache_key(loaded.weights_sha256, segmenter_key(seg), n, seed)
    folder = cache_dir / "generated" / f"{slugify(loaded.name, 'model')}-{key}"
    path = write_generated_probe(loaded, seg, folder, n, seed, batch_size=batch_size, device=device,
                                 progress=progress)
    dataset = BrodenDataset(BrodenIndex(path), input_size=loaded.input_size, model_input="latent")
    return GeneratedProbe(path, dataset, seg)


def write_generated_probe(loaded, segmenter, out_dir: str | os.PathLike, n: int, seed: int = 1,
                          batch_size: int = 64, device: torch.device | str = "cpu",
                          val_fraction: float = 0.2, progress: bool = True) -> Path:
    """Generate ``n`` images from latents ``sample_z(seed, 0..n-1)``, label them with
    ``segmenter`` and write them as a Broden directory at ``out_dir``."""
    out = Path(out_dir)
    z_dim = int(getattr(loaded, "z_dim", None) or 0)
    if z_dim < 1:
        raise DissectError(f"model {loaded.name} has no latent size; pass --z-dim N")
    if n < 1:
        raise DissectError(f"the generator's probe set needs at least 1 sample, got {n}")
    want = probe_manifest(loaded, segmenter, n, seed, z_dim)
    try:
        if json.loads((out / MANIFEST).read_text()) == want and (out / "index.csv").is_file():
            return out
    except (OSError, ValueError):
        pass
    return write_dir_atomically(
        out, lambda tmp: _write(tmp, loaded, segmenter, n, seed, z_dim, batch_size, device,
                                val_fraction, progress), MANIFEST, want)


def _write(root: Path, loaded, segmenter, n, seed, z_dim, batch_size, device, val_fraction,
           progress) -> None:
    gen = loaded.module.to(device).eval()
    segmenter.to(device)
    latents = np.lib.format.open_memmap(root / "latents.npy", mode="w+", dtype=np.float32,
                                        shape=(n, z_dim))
    writer = SegmentedImagesWriter(root, segmenter.concepts, segmenter.layers)
    n_val = int(round(n * val_fraction))
    value_range = None
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="generate + segment", unit="batch",
                          disable=not progress, leave=False):
            z = sample_z(min(batch_size, n - start), seed, z_dim, start)
            latents[start:start + len(z)] = z.numpy()
            raw = gen(z.to(device))
            if value_range is None:
                value_range = output_range(raw, f"generator {loaded.name}",
                                           getattr(loaded, "declared_range", None))
            x = quantize(to_unit(raw.float(), value_range))
            lab = segmenter.segment(x).cpu().numpy()
            u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for b in range(len(z)):
                i = start + b
                writer.add(f"gen-{i:05d}", u8[b], lab[b], "val" if i >= n - n_val else "train")
    latents.flush()
    del latents
    writer.finish()
