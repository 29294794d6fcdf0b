"""Probe JPEGs decoded on the GPU: the loader hands over the files' bytes, the main process
decodes a batch at once with nvjpeg (``torchvision.io.decode_jpeg(..., device='cuda')``).

On a GPU the forward pass of a probe image costs less than decoding it on the CPU, so the
dissection of a CUDA model decodes its probe JPEGs on the device (:func:`decode_on_device`
says when: only for a CUDA device, with torchvision's decoder there). Only images that need no
resizing go this way (their size in ``index.csv`` is the model's input size, as Broden's
224 px images for a 224 px model); every other image, a file that is not a JPEG, and any
image that nvjpeg cannot decode or decodes to another size are decoded on the CPU exactly
as before (PIL, :meth:`dissect.data.broden.BrodenDataset.image_tensor`); an image that
cannot be decoded there either is skipped as unreadable, as before.

The normalisation is the CPU path's, in the same order and in float32 (divide by 255,
subtract the mean, divide by the standard deviation), so the inputs equal the CPU's
wherever nvjpeg's pixels equal libjpeg's; nvjpeg's inverse DCT and chroma upsampling may
differ from libjpeg's by a rounding on some pixels (``benchmarks/gpu_check`` reports how many
unit labels change).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe")


def decode_on_device(device: torch.device | str | None) -> bool:
    """Whether the probe JPEGs of a model on ``device`` are decoded there: only on a CUDA
    device, and only when torchvision's ``decode_jpeg`` is there to do it."""
    if device is None or torch.device(device).type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:   # torchvision missing or built without its image extension
        return False
    return True


def is_jpeg_name(name: str) -> bool:
    return name.lower().endswith(JPEG_SUFFIXES)


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | None]:
    """RGB ``uint8 [3, H, W]`` images on ``device`` of the JPEG files' bytes ``data`` (1-D
    uint8 CPU tensors), in one batched call; None for each image the decoder refuses (the
    whole batch is then decoded one by one, so one bad file costs only itself)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    if not data:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torchvision 0.29+ says its decoders move to TorchCodec
        try:
            return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            pass
        out: list[torch.Tensor | None] = []
        for d in data:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except (RuntimeError, ValueError):
                out.append(None)
        return out


def finish_images(batch: dict, dataset, device: torch.device) -> dict:
    """Turn a batch whose images came as JPEG bytes (``encoded``: per item the bytes, or None
    for an item decoded by the loader, whose tensor is in ``decoded``) into the usual batch:
    ``image`` ``[B, 3, S, S]`` normalised, on ``device``. Images nvjpeg cannot use are decoded
    on the CPU (the loader's own :meth:`load_rgb`); an image unreadable there too is moved to ``bad``
    (and ``bad_index``), and the batch's other fields lose its row."""
    from PIL import Image
    encoded, decoded = batch.pop("encoded"), batch.pop("decoded")
    size = dataset.input_size
    todo = [k for k, e in enumerate(encoded) if e is not None]
    on_device = decode_jpegs([encoded[k] for k in todo], device)
    mean, std = dataset.mean.to(device), dataset.std.to(device)
    images: list[torch.Tensor | None] = list(decoded)
    for k, x in zip(todo, on_device):
        if x is not None and tuple(x.shape) == (3, size, size):
            images[k] = x.float().div_(255.0).sub_(mean).div_(std)     # as image_tensor does
            continue
        pos = int(batch["index"][k])
        try:   # the CPU path: the loader's own decoding, in this process
            images[k] = dataset.image_tensor(dataset.load_rgb(pos))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:   # skipped, as the loader would
            images[k] = None
            batch["bad"].append((dataset.index.records[dataset.indices[pos]].image, f"{type(e).__name__}: {e}"))
            batch["bad_index"].append(pos)
    keep = [k for k, x in enumerate(images) if x is not None]
    if len(keep) < len(images):
        for field in ("index", "pixel_labels", "image_labels"):
            if field in batch:
                batch[field] = batch[field][keep]
    if keep:
        batch["image"] = torch.stack([images[k].to(device, non_blocking=True) for k in keep])
    return batch
