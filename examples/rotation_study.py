"""The rotation experiment on the toy classifier, over several rotation seeds and layers.

    python examples/rotation_study.py                       # conv3_2 and conv4_2, seeds 0-2, 1000 images
    python examples/rotation_study.py --layers conv4_2 --seeds 0,1,2,3,4 --live

For each layer it prints the unrotated layer and the layer under a full random rotation
(``t = 1``) per seed: detector units, unique detectors, the mean IoU of each live unit's best
concept, and the concepts detected. ``--live`` also rotates only the live units (those that
vary on the probe set), leaving the dead ones as they are. ``docs/compare.md`` quotes its
numbers. The same rotation as ``dissect report --rotate`` (:mod:`dissect.experiments.rotation`).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch


def dissect_rotated(loaded, layer: str, dataset, config, rotation: torch.Tensor | None) -> dict:
    """Counts of ``layer`` dissected under ``rotation`` (None: as it is)."""
    import contextlib

    from dissect.experiments.comparison import layer_counts, mean_live_iou
    from dissect.experiments.dissection import dissect_layers, summarize_layer
    from dissect.experiments.rotation import rotate_layer

    net = copy.deepcopy(loaded.module)
    with rotate_layer(net, layer, rotation) if rotation is not None else contextlib.nullcontext():
        stats = dissect_layers(net, [layer], dataset, config, progress=False)[layer]
    summary = summarize_layer(stats, dataset, config)
    counts = layer_counts(summary, list(dataset.index.categories))
    return {"detectors": counts["detectors"], "unique": counts["unique"],
            "mean_iou": mean_live_iou(summary) or 0.0, "num_units": counts["num_units"],
            "concepts": sorted({u["label"] for u in summary["units"] if u["detector"] and u["label"]}),
            "dead": [i for i, u in enumerate(summary["units"]) if u.get("dead")]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="toy-world probe images (default 1000)")
    p.add_argument("--layers", default="conv3_2,conv4_2")
    p.add_argument("--seeds", default="0,1,2", help="rotation seeds")
    p.add_argument("--live", action="store_true", help="also rotate only the live units")
    p.add_argument("--work", type=Path, default=None, help="folder for the probe set (default: a temp folder)")
    args = p.parse_args()
    from dissect.data.broden import BrodenDataset
    from dissect.data.toyworld_probe import write_toyworld
    from dissect.experiments.dissection import DissectConfig
    from dissect.experiments.rotation import random_rotation, rotation_path
    from dissect.models.loading import load_model, resolve_layer

    loaded = load_model("toy", progress=False)
    work = args.work or Path(tempfile.mkdtemp(prefix="dissect-rotation-"))
    root = write_toyworld(work / f"toyworld-n{args.n}-px64", n=args.n, seed=1, image_size=64, progress=False)
    dataset = BrodenDataset(root, input_size=64, mean=loaded.mean, std=loaded.std)
    config = DissectConfig(device="cpu")
    print(f"toy classifier on {args.n} toy-world images; full rotations (t = 1)")
    print(f"{'layer':8} {'rotation':18} {'detectors':>9} {'unique':>6} {'mean IoU':>8}  concepts")

    def row(alias: str, what: str, r: dict) -> None:
        print(f"{alias:8} {what:18} {r['detectors']:9d} {r['unique']:6d} {r['mean_iou']:8.4f}  {', '.join(r['concepts'])}")

    for alias in args.layers.split(","):
        layer = resolve_layer(loaded, alias)[0]
        plain = dissect_rotated(loaded, layer, dataset, config, None)
        row(alias, f"none ({len(plain['dead'])} dead)", plain)
        n_units = plain["num_units"]
        live = [i for i in range(n_units) if i not in plain["dead"]]
        for seed in (int(s) for s in args.seeds.split(",")):
            full = rotation_path(random_rotation(n_units, seed), [1.0])[0]
            row(alias, f"all, seed {seed}", dissect_rotated(loaded, layer, dataset, config, full))
            if args.live:
                part = torch.eye(n_units)
                part[np.ix_(live, live)] = rotation_path(random_rotation(len(live), seed), [1.0])[0]
                row(alias, f"live, seed {seed}", dissect_rotated(loaded, layer, dataset, config, part))


if __name__ == "__main__":
    main()
