"""Open a classifier's probe set by name: the toy world, Broden, any Broden-format folder, or
any folder of images (labeled by a segmenter).

:func:`open_probe_data` is what ``--data`` means: it makes (``toyworld``, cached), fetches
(``broden``) or labels (a folder of images, :mod:`dissect.data.segmented`, cached) the
folder, reads its index and returns the dataset that the dissection runs on, at the model's
input size and normalization. A generator's probe set is its own samples
(:func:`dissect.data.generated.open_generated_probe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dissect.data.broden import BrodenDataset, BrodenIndex
from dissect.data.catalog import fetch_data
from dissect.data.segmented import is_image_folder, open_segmented_probe
from dissect.data.toyworld_probe import write_toyworld
from dissect.errors import DissectError
from dissect.segmenters.base import Segmenter

TOYWORLD_DEFAULT_SIZE = {64: 2000}   # images in the default toy-world probe set, by image size
TOYWORLD_LARGE_DEFAULT = 400         # for larger images (e.g. 224 px for VGG-16)
BRODEN_NAMES = ("broden", "broden1_224", "broden1_227")


@dataclass
class ProbeData:
    """An opened probe set: its name in the report, its folder, and the dataset; for an image
    folder also the segmenter that labeled it and the images it could not read."""

    name: str
    path: Path
    dataset: BrodenDataset
    segmenter: Segmenter | None = None
    skipped: list[str] = field(default_factory=list)


def open_probe_data(data: str, input_size: int, mean: Sequence[float], std: Sequence[float],
                    cache_dir: Path, size: int | None = None, seed: int = 1,
                    split: str | None = None, progress: bool = True, segmenter: str | None = None,
                    segmenter_weights: str | None = None, batch_size: int = 16,
                    device="cpu") -> ProbeData:
    """``toyworld`` (generated at ``input_size`` and cached), ``broden`` / ``broden1_224`` /
    ``broden1_227`` (downloaded into the cache), the path of a Broden-format folder, or of a
    folder of images, labeled by ``segmenter`` (with ``segmenter_weights``, on ``device``).

    ``size``: the toy world's number of images, or the first ``size`` images of any other
    set; ``split``: only the images of that split.
    """
    labeled = None
    if data == "toyworld":
        n = size or TOYWORLD_DEFAULT_SIZE.get(input_size, TOYWORLD_LARGE_DEFAULT)
        path = cache_dir / "toyworld" / f"n{n}-seed{seed}-px{input_size}"
        write_toyworld(path, n=n, seed=seed, image_size=input_size, progress=progress)
        name = "toyworld"
    elif data in BRODEN_NAMES:
        path = fetch_data(data, cache_dir, progress=progress)
        name = path.name
    elif is_image_folder(Path(data).expanduser()):
        labeled = open_segmented_probe(data, input_size, cache_dir, segmenter, segmenter_weights, size,
                                       batch_size, device, progress)
        path, name = labeled.path, Path(data).expanduser().resolve().name
    else:
        path = Path(data).expanduser()
        name = path.resolve().name
    index = BrodenIndex(path)
    indices = None
    if split:
        indices = [i for i, r in enumerate(index.records) if r.split == split]
        if not indices:
            splits = sorted({r.split for r in index.records})
            raise DissectError(f"no images in split {split!r}; splits here: {', '.join(splits)}")
    if size and data != "toyworld":
        indices = (indices or list(range(len(index.records))))[:size]
    ds = BrodenDataset(index, input_size=input_size, mean=mean, std=std, indices=indices)
    if labeled is not None:
        return ProbeData(name, path, ds, labeled.segmenter, labeled.skipped)
    return ProbeData(name, path, ds)
