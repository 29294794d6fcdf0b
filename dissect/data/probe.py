"""Open a classifier's probe set by name: the toy world, Broden, or any Broden-format folder.

:func:`open_probe_data` is what ``--data`` means: it makes (``toyworld``, cached) or fetches
(``broden``) the folder, reads its index and returns the dataset that the dissection runs
on, at the model's input size and normalization. A generator's probe set is its own samples
(:func:`dissect.data.generated.open_generated_probe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dissect.data.broden import BrodenDataset, BrodenIndex
from dissect.data.catalog import fetch_data
from dissect.data.toyworld_probe import write_toyworld
from dissect.errors import DissectError

TOYWORLD_DEFAULT_SIZE = {64: 2000}   # images in the default toy-world probe set, by image size
TOYWORLD_LARGE_DEFAULT = 400         # for larger images (e.g. 224 px for VGG-16)
BRODEN_NAMES = ("broden", "broden1_224", "broden1_227")


@dataclass
class ProbeData:
    """An opened probe set: its name in the report, its folder, and the dataset."""

    name: str
    path: Path
    dataset: BrodenDataset


def open_probe_data(data: str, input_size: int, mean: Sequence[float], std: Sequence[float],
                    cache_dir: Path, size: int | None = None, seed: int = 1,
                    split: str | None = None, progress: bool = True) -> ProbeData:
    """``toyworld`` (generated at ``input_size`` and cached), ``broden`` / ``broden1_224`` /
    ``broden1_227`` (downloaded into the cache) or the path of a Broden-format folder.

    ``size``: the toy world's number of images, or the first ``size`` images of any other
    set; ``split``: only the images of that split.
    """
    if data == "toyworld":
        n = size or TOYWORLD_DEFAULT_SIZE.get(input_size, TOYWORLD_LARGE_DEFAULT)
        path = cache_dir / "toyworld" / f"n{n}-seed{seed}-px{input_size}"
        write_toyworld(path, n=n, seed=seed, image_size=input_size, progress=progress)
        name = "toyworld"
    elif data in BRODEN_NAMES:
        path = fetch_data(data, cache_dir, progress=progress)
        name = path.name
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
    return ProbeData(name, path, ds)
