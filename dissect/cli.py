"""The ``dissect`` command line.

``dissect report``           dissect a model and write (or update) the report site
``dissect data toyworld``    write a toy-world probe set in Broden format
``dissect data broden``      download and unpack Broden
``dissect fetch MODEL``      download everything a report on MODEL needs (for offline runs)
``dissect models``           list registered models: weights source, size, cached or not
``dissect layers MODEL``     a model's layers in execution order: shapes, units, calls, the default
``dissect train toy-classifier``  retrain the shipped toy classifier (``--snapshots``: its training snapshots)
``dissect train toy-finetune``    fine-tune it on a changed task (the shipped fine-tuned weights)

User errors print one line, ``dissect: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

from .version import __version__
from .errors import DissectError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _int_list(text: str | None, flag: str) -> list[int] | None:
    """``"0,47,94"`` -> ``[0, 47, 94]`` (None stays None); non-negative integers only."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DissectError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise DissectError(f"{flag} takes comma-separated whole numbers >= 0, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from .data import label_cache
    from .experiments.dissection import DissectConfig
    from .labelers import clip as clip_labels
    from .formulas import search as formulas
    from .stats import intervals
    from .bases import options as basis_options
    d = DissectConfig()
    p = argparse.ArgumentParser(prog="dissect", description="Network dissection: what each "
                                "unit of a vision network detects, as a browsable static site.")
    p.add_argument("--version", action="version", version=f"dissect {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("report", help="dissect a model and write the report site",
                       description="Dissect a model's layers on a probe set and write a "
                       "self-contained static site (default: both toy models, the toy classifier `toy` "
                       "on toy-world scenes and the toy generator `toygan` on its own samples).")
    r.add_argument("--model", action="append", default=None, help="registered name (see `dissect "
                   "models`) or package.module:callable returning an nn.Module; repeatable, all "
                   "go into one site (default: both toy models, toy and toygan)")
    r.add_argument("--kind", choices=["classifier", "generator"], default=None,
                   help="what a package.module:callable model is (default classifier); a "
                   "generator maps latents [N, z_dim] to images in [-1, 1] or [0, 1]")
    r.add_argument("--z-dim", type=_positive_int, default=None, metavar="N",
                   help="latent size of a --kind generator model")
    r.add_argument("--segmenter", default=None, help="labels a generator's outputs, or the images "
                   "of a --data folder: upp, toy, color, deeplabv3_resnet50, ... or package.module:callable "
                   "(default: the model's own; toy for 64 px, else deeplabv3_resnet50 for generators "
                   "and upp for image folders)")
    r.add_argument("--segmenter-weights", default=None, metavar="PATH", help="the segmenter's weights: "
                   "a file, or for upp a folder holding encoder_epoch_40.pth, decoder_epoch_40.pth and "
                   "labels.json (default: its own, downloaded)")
    r.add_argument("--weights", action="append", default=None, help="weights: a .pth/.pt/.safetensors "
                   "state_dict file, or 'none' for random init (default: the model's own weights); "
                   "repeatable, or a quoted glob: several weights of one model, each a section of the "
                   "site, compared on the site's comparison page")
    r.add_argument("--class-names", default=None, metavar="FILE", help="the model's class names, in "
                   "output order: a text file with one name per line, or JSON (a list, or a dict of index "
                   "to name); checked against the model's number of outputs (default: the model's own)")
    r.add_argument("--snapshot-steps", default=None, metavar="STEP,STEP,...", help="the training step "
                   "of each --weights, in order (default: read from the file names when they differ "
                   "only in a number, e.g. ckpt-100.pth, ckpt-200.pth)")
    r.add_argument("--rotate", default=None, metavar="T,T,...", help="rotation experiment: dissect "
                   "the layer with its units rotated by R(t), from the identity (0) to a random "
                   "rotation (1), e.g. 0,0.25,0.5,0.75,1")
    r.add_argument("--rotate-layer", default=None, metavar="NAME",
                   help="layer of the rotation experiment (default: the deepest dissected layer)")
    r.add_argument("--rotate-seed", type=int, default=0, help="seed of the random rotation (default 0)")
    r.add_argument("--no-shipped-comparisons", action="store_true", help="the toy classifier: do not "
                   "add its shipped training snapshots and fine-tuned weights to the comparison page")
    r.add_argument("--layer", action="append", default=[], metavar="NAME",
                   help="layer to dissect (dotted named_modules() path or alias like conv5_3; NAME#K: "
                   "call K of a module that runs more than once); repeatable (default: the model's "
                   "last conv block; see `dissect layers MODEL`)")
    r.add_argument("--data", default=None, help="probe set: 'toyworld' (generated), "
                   "'broden1_224' or 'broden1_227' (downloaded; 'broden' is broden1_224), a "
                   "Broden-format folder, or a folder of images (labeled by --segmenter) (default: the "
                   "model's own; Broden for a real classifier, toyworld for the toys)")
    r.add_argument("--data-size", type=_positive_int, default=None, metavar="N",
                   help="number of probe images (toyworld: images generated, default 2000 at "
                   "64 px, 400 larger; other data: the first N)")
    r.add_argument("--data-seed", type=int, default=1, help="toy-world seed (default 1)")
    r.add_argument("--split", default=None, help="only images of this split (default: all)")
    r.add_argument("--input-size", type=_positive_int, default=None,
                   help="model input size in px (default: the model's own)")
    r.add_argument("--quantile", type=float, default=None,
                   help=f"top quantile q for the threshold T_k (default {d.quantile} for "
                   "classifiers, 0.01 for generators)")
    r.add_argument("--quantile-space", choices=["activation", "upsampled"], default=None,
                   help="take the quantile over the layer's maps (2017, the default for classifiers) "
                   "or the upsampled maps (2020, the default for generators)")
    r.add_argument("--iou-threshold", type=float, default=d.iou_threshold,
                   help=f"IoU above which a unit is a detector (default {d.iou_threshold})")
    r.add_argument("--top-k", type=_positive_int, default=d.top_k,
                   help=f"top images per unit (default {d.top_k})")
    r.add_argument("--batch-size", type=_positive_int, default=d.batch_size, metavar="N",
                   help=f"images per forward pass (default {d.batch_size}; on CUDA the dissection "
                        "takes more when the free memory holds more)")
    r.add_argument("--workers", type=int, default=None, help="image decoding processes")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    r.add_argument("--nonfinite", choices=["error", "invalid"], default=d.nonfinite,
                   help="activations that are NaN or infinite: 'error' stops the run naming the layer, "
                   "units and images (default); 'invalid' reports those units as invalid")
    r.add_argument("--precision", default=d.precision, choices=["auto", "fp32", "bf16", "fp16"],
                   help="the dissection's forward pass: auto (bf16 or fp16 autocast on CUDA, fp32 on "
                   "the CPU), fp32, bf16 or fp16; the statistics are always float32 or wider")
    r.add_argument("--cache-budget", type=int, default=d.activation_cache_mb, metavar="MB",
                   help="keep pass-1 activations in memory up to MB for pass 2 (default "
                   f"{d.activation_cache_mb}); past it, pass 2 runs the model again")
    intervals.add_arguments(r)
    clip_labels.add_arguments(r)
    basis_options.add_arguments(r)
    formulas.add_arguments(r)
    label_cache.add_arguments(r)
    r.add_argument("--out", default="site", help="site folder (default: site)")
    r.add_argument("--cache-dir", default=None, help="cache folder (default: $DISSECT_CACHE "
                   "or ~/.cache/dissect)")
    r.add_argument("--force", action="store_true", help="recompute, ignoring cached results")
    r.add_argument("--hash-files", action="store_true", help="identify the probe files in cache keys "
                   "by a SHA-256 of their content (default: by size and modification time)")
    r.add_argument("--reproducible", action="store_true",
                   help="omit the run date so identical inputs give byte-identical sites")
    r.add_argument("--notes", default=None, metavar="FILE.md",
                   help="Markdown notes shown on the model's overview page")
    r.add_argument("--zip", default=None, metavar="FILE.zip",
                   help="also write the whole site as one archive (e.g. for a paper's supplement)")
    r.add_argument("--thumb-height", type=_positive_int, default=48, metavar="PX",
                   help="height of the unit grid's thumbnails in px (default 48; smaller = smaller site)")
    r.add_argument("--jpeg-quality", type=_positive_int, default=85, metavar="Q",
                   help="JPEG quality 1-95 of re-encoded images and thumbnails (default 85)")
    r.add_argument("--no-ablation", action="store_true", help="skip the classifier ablation "
                   "(default: run it for classifiers whose labeled data matches their classes)")
    r.add_argument("--ablation-data", default=None, metavar="DIR", help="labeled images for the "
                   "ablation: DIR/<class>/*.jpg (or DIR/train/<class>/..., DIR/val/<class>/...) named "
                   "after the model's classes, or a Broden folder with scene labels (default: the probe set)")
    r.add_argument("--ablation-layer", action="append", default=[], metavar="NAME",
                   help="dissected layer to ablate (repeatable; 'all' for every one; default: the deepest)")
    r.add_argument("--ablation-top-n", default=None, metavar="N,N,...", help="sizes N of the top-N "
                   "curves (default 1,2,3,4,5,10,20,50,100,all)")
    r.add_argument("--attack-epsilon", default=None, metavar="EPS", help="PGD L-inf budget in "
                   "pixel units, e.g. 8/255 or 0.03 (default 16/255)")
    r.add_argument("--attack-steps", type=_positive_int, default=None, help="PGD steps (default 10)")
    r.add_argument("--attack-pairs", type=int, default=None, metavar="K", help="class pairs to "
                   "attack, the most confused first (default 4; 0: no attack)")
    r.add_argument("--no-interventions", action="store_true", help="skip a generator's "
                   "ablation and insertion experiments")
    r.add_argument("--ablate-concept", action="append", default=None, metavar="CONCEPT",
                   help="generators: concept whose top units are removed (repeatable; default: "
                   "the model's own, else the two best-matched objects)")
    r.add_argument("--insert-concept", action="append", default=None, metavar="CONCEPT",
                   help="generators: concept whose top units are switched on in a region "
                   "(repeatable; default: the model's own, else the two best-matched parts/objects)")
    r.add_argument("--intervene-layer", action="append", default=None, metavar="NAME",
                   help="generators: dissected layer to intervene on (repeatable; 'all'; default: "
                   "the model's own, else the first dissected layer)")
    r.add_argument("--gen-samples", type=_positive_int, default=None, metavar="N",
                   help="generators: latents per ablation (default 256)")
    r.add_argument("--gen-units", type=_positive_int, default=None, metavar="N",
                   help="generators: units switched off/on in the strips and context table (default 10)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    dp = sub.add_parser("data", help="make or fetch probe data sets")
    dsub = dp.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    t = dsub.add_parser("toyworld", help="write toy-world scenes in Broden format")
    t.add_argument("--out", required=True)
    t.add_argument("--size", type=_positive_int, default=2000, help="number of images")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--image-size", type=_positive_int, default=64)
    b = dsub.add_parser("broden", help="download and unpack Broden (about 1 GB)")
    b.add_argument("--out", required=True, help="folder to unpack into")
    b.add_argument("--variant", default="broden1_224", choices=["broden1_224", "broden1_227"])
    b.add_argument("--url", default=None, help="another URL (or file:// path) for the zip")
    b.add_argument("--sha256", default=None, help="expected SHA-256 of the zip")

    fp = sub.add_parser("fetch", help="download everything a report will need (weights, data, "
                        "segmenter), e.g. on a cluster's login node for offline compute nodes")
    fp.add_argument("model", nargs="*", help="registered model name(s) (default: the toy models)")
    fp.add_argument("--weights", default=None, help="a weights choice other than the model's own")
    fp.add_argument("--data", default=None, help="probe set name (default: the model's own)")
    fp.add_argument("--ablation-data", default=None, metavar="NAME", help="ablation set name, "
                    "e.g. places_val (default: the model's own)")
    fp.add_argument("--segmenter", default=None, help="a generator's segmenter (default: the model's own)")
    fp.add_argument("--cache-dir", default=None, help="cache folder (default: $DISSECT_CACHE "
                    "or ~/.cache/dissect); weights go to torch hub's checkpoints folder ($TORCH_HOME)")
    fp.add_argument("--list", action="store_true", help="only list the files, their URLs, "
                    "checksums and places, and whether each is there")
    fp.add_argument("--quiet", action="store_true", help="no progress bars")
    clip_labels.add_arguments(fp)

    sub.add_parser("models", help="list registered models: weights source, size, cached or not")
    lp = sub.add_parser("layers", help="list a model's layers: names, paper names, output shapes, "
                        "units and calls per forward pass, the default marked")
    lp.add_argument("model")
    lp.add_argument("--input-size", type=_positive_int, default=None, help="input size in px of the "
                    "dummy forward pass (default: the model's own; 224 for package.module:callable)")
    lp.add_argument("--kind", choices=["classifier", "generator"], default=None,
                    help="what a package.module:callable model is (default classifier)")
    lp.add_argument("--z-dim", type=_positive_int, default=None, metavar="N",
                    help="latent size of a --kind generator model")

    tp = sub.add_parser("train", help="train a shipped toy model from scratch")
    tsub = tp.add_subparsers(dest="what", required=True, metavar="MODEL")

    def train_parser(name: str, help: str, train_size: int) -> argparse.ArgumentParser:
        """A ``train`` subcommand with the options every toy training shares."""
        t = tsub.add_parser(name, help=help)
        t.add_argument("--out", default=None, help="folder for the weights (default: inside the package)")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--train-size", type=_positive_int, default=train_size)
        return t

    tc = train_parser("toy-classifier", "train the toy scene classifier", 6000)
    tc.add_argument("--epochs", type=_positive_int, default=14)
    tc.add_argument("--snapshots", default=None, metavar="STEP,STEP,...",
                    help="also save float16 snapshots after these optimizer steps (0: the random "
                    "init) and stop after the last one (the same run: same data order and schedule)")
    tf = train_parser("toy-finetune", "fine-tune the toy classifier on a changed task "
                      "(which of six objects a scene shows)", 3000)
    tf.add_argument("--epochs", type=_positive_int, default=2)
    ts = train_parser("toy-segmenter", "train the toy segmenter (objects and parts)", 8000)
    ts.add_argument("--steps", type=_positive_int, default=1500)
    tg = train_parser("toy-generator", "train the toy generator (a DCGAN; about 2 h "
                      "on 2 CPU cores, checkpointed: rerun with --resume after a stop)", 24000)
    tg.add_argument("--steps", type=_positive_int, default=22500)
    tg.add_argument("--batch-size", type=_positive_int, default=32)
    tg.add_argument("--resume", action="store_true",
                    help="continue from the checkpoint in --out (after a stop, or a finished run on to a larger --steps)")
    tg.add_argument("--variant", choices=["dcgan", "sngan"], default="sngan",
                    help="sngan (spectral-norm discriminator, hinge loss: the shipped weights) or "
                    "dcgan (BatchNorm discriminator, non-saturating loss)")
    tg.add_argument("--width", type=_positive_int, default=None,
                    help="generator base width: layer4 has this many units, layer3 2x, layer2 4x, "
                    "layer1 8x (default: the shipped generator's)")
    tg.add_argument("--disc-width", type=_positive_int, default=None,
                    help="discriminator base width (default: the shipped generator's)")
    tg.add_argument("--evaluate-only", action="store_true",
                    help="do not train: measure again how often the toy segmenter finds the "
                    "objects of the generator in --out, and update its record")
    return p


def _generator_config(args: argparse.Namespace):
    if args.no_interventions:
        return False
    from .experiments.generator import GeneratorExperimentConfig
    more = {}
    if args.ablate_concept:
        more["ablate"] = tuple(args.ablate_concept)
    if args.insert_concept:
        more["insert"] = tuple(args.insert_concept)
    if args.intervene_layer:
        more["layers"] = tuple(args.intervene_layer)
    if args.gen_samples:
        more["samples"] = args.gen_samples
    if args.gen_units:
        more["units"] = args.gen_units
    config = GeneratorExperimentConfig(device=args.device, batch_size=args.batch_size, **more)
    config.validate()
    return config


def _ablation_config(args: argparse.Namespace):
    """The ablation config from ``dissect report``'s flags (False with --no-ablation)."""
    if args.no_ablation:
        return False
    from .experiments.ablation import AblationConfig, parse_epsilon, parse_top_n
    more = {"layers": tuple(args.ablation_layer)}
    if args.ablation_top_n is not None:
        more["top_n"] = parse_top_n(args.ablation_top_n)
    if args.attack_epsilon is not None:
        more["attack_epsilon"] = parse_epsilon(args.attack_epsilon)
    if args.attack_steps is not None:
        more["attack_steps"] = args.attack_steps
    if args.attack_pairs is not None:
        more["attack_pairs"] = args.attack_pairs
    config = AblationConfig(device=args.device, num_workers=args.workers, **more)
    config.validate()
    return config


def run(args: argparse.Namespace, argv: list[str]) -> int:
    if args.command == "report":
        from .data.label_cache import LabelCacheOptions
        from .experiments.dissection import DissectConfig
        from .experiments.rotation import parse_rotations
        from .formulas.search import FormulaOptions
        from .stats.intervals import IntervalOptions
        from .labelers.clip import options_from_args
        from .bases.options import BasisOptions
        from .pipeline import DEFAULT_MODELS, ReportOptions, run_report
        config = DissectConfig(quantile=args.quantile or DissectConfig.quantile,
                               quantile_space=args.quantile_space or DissectConfig.quantile_space,
                               iou_threshold=args.iou_threshold, top_k=args.top_k,
                               batch_size=args.batch_size, num_workers=args.workers,
                               device=args.device, nonfinite=args.nonfinite, precision=args.precision,
                               activation_cache_mb=args.cache_budget,
                               intervals=IntervalOptions.from_args(args))
        run_report(ReportOptions(
            model=args.model or list(DEFAULT_MODELS), weights=args.weights, layers=args.layer,
            snapshot_steps=_int_list(args.snapshot_steps, "--snapshot-steps"),
            rotate=parse_rotations(args.rotate) if args.rotate is not None else (),
            rotate_layer=args.rotate_layer, rotate_seed=args.rotate_seed,
            shipped_comparisons=not args.no_shipped_comparisons, bases=BasisOptions.from_args(args),
            input_size=args.input_size, kind=args.kind, z_dim=args.z_dim,
            data=args.data, data_size=args.data_size, data_seed=args.data_seed, split=args.split,
            config=config, formulas=FormulaOptions.from_args(args), ablation=_ablation_config(args), ablation_data=args.ablation_data,
            class_names=args.class_names,
            segmenter=args.segmenter, segmenter_weights=args.segmenter_weights, generator_quantile=args.quantile,
            generator_quantile_space=args.quantile_space, interventions=_generator_config(args),
            out=args.out, reproducible=args.reproducible, notes=args.notes, zip_path=args.zip,
            thumb_height=args.thumb_height, jpeg_quality=args.jpeg_quality,
            cache_dir=args.cache_dir, force=args.force, hash_files=args.hash_files, progress=not args.quiet,
            labeler=options_from_args(args),
            label_cache=LabelCacheOptions.from_args(args),
            command=" ".join(["dissect"] + [shlex.quote(a) for a in argv])))
    elif args.command == "data" and args.dataset == "toyworld":
        from .data.toyworld_probe import write_toyworld
        path = write_toyworld(Path(args.out), n=args.size, seed=args.seed, image_size=args.image_size)
        print(f"dissect: wrote {args.size} toy-world scenes to {path}")
    elif args.command == "data" and args.dataset == "broden":
        from .data.broden import fetch_broden
        path = fetch_broden(Path(args.out), args.variant, url=args.url, sha256=args.sha256)
        print(f"dissect: Broden is in {path}")
    elif args.command == "fetch":
        from .download import ensure_files, format_bytes
        from .labelers.clip import options_from_args
        from .pipeline import DEFAULT_MODELS, ReportOptions
        from .requirements import report_files
        opts = ReportOptions(model=args.model or list(DEFAULT_MODELS), weights=args.weights,
                             data=args.data, ablation_data=args.ablation_data,
                             segmenter=args.segmenter, cache_dir=args.cache_dir,
                             labeler=options_from_args(args))
        opts.labeler.validate()
        files = report_files(opts)
        if args.list:
            for f in files:
                state = "present" if f.is_present() else "missing"
                print(f"{state:8s} {f.missing_line()}")
            return 0
        paths = ensure_files(files, progress=not args.quiet)
        for f, path in zip(files, paths):
            size = f" ({format_bytes(f.size)})" if f.size else ""
            print(f"dissect: {f.what}{size}: {path} ({f.checksum()})")
        print(f"dissect: {len(files)} file(s) in place" + ("" if files else " (nothing to download)"))
    elif args.command == "models":
        from .models.catalog import model_rows
        for row in model_rows():
            print(row)
    elif args.command == "layers":
        from .models.catalog import layer_rows
        from .models.loading import load_model
        loaded = load_model(args.model, weights="none", progress=False, input_size=args.input_size,
                            kind=args.kind, z_dim=args.z_dim)
        print("\n".join(layer_rows(loaded)))
    elif args.command == "train" and args.what == "toy-segmenter":
        from .training.segmenter import train_segmenter
        rec = train_segmenter(args.out, seed=args.seed, train_size=args.train_size, steps=args.steps)
        print(f"dissect: toy segmenter: held-out pixel accuracy {rec['heldout']['object_pixel_accuracy']:.4f} "
              f"(objects), {rec['heldout']['part_pixel_accuracy']:.4f} (parts)")
    elif args.command == "train" and args.what == "toy-generator":
        from .models.zoo.toy import TOYGAN_WIDTH
        from .training.generator import TOYGAN_DISC_WIDTH, reevaluate_record, train_generator
        if args.evaluate_only:
            rec = reevaluate_record(args.out)
            tree = rec["segmenter_finds"]["objects"]["tree"]
            print(f"dissect: toy generator record updated: the segmenter finds trees in "
                  f"{tree['generated']:.1%} of generated images, {tree['real_segmented']:.1%} of real scenes")
            return 0
        rec = train_generator(args.out, seed=args.seed, train_size=args.train_size, steps=args.steps,
                              batch_size=args.batch_size, resume=args.resume, variant=args.variant,
                              width=args.width or TOYGAN_WIDTH, disc_width=args.disc_width or TOYGAN_DISC_WIDTH)
        print(f"dissect: toy generator trained, {rec['steps']} steps in {rec['train_seconds']} s")
    elif args.command == "train" and args.what == "toy-classifier":
        from .training.classifier import train_classifier
        train_classifier(out_dir=args.out, seed=args.seed, train_size=args.train_size,
                         epochs=args.epochs, snapshots=_int_list(args.snapshots, "--snapshots"))
    elif args.command == "train" and args.what == "toy-finetune":
        from .training.finetune import finetune_classifier
        finetune_classifier(out_dir=args.out, seed=args.seed, train_size=args.train_size, epochs=args.epochs)
    return 0


#: Errors of the machine, not of dissect: a full disk, a read-only or forbidden folder.
_SYSTEM_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _terminate(signum, frame):
    """SIGTERM ends the run as Ctrl-C does, so that temporary files and folders are removed."""
    raise KeyboardInterrupt


def _ranks():
    """:mod:`dissect.distributed` when this process is one rank of several (it is loaded only
    by a report), else None."""
    ranks = sys.modules.get("dissect.distributed")
    return ranks if ranks is not None and ranks.active() else None


def _fail(e: BaseException, message: str) -> str | None:
    """The line to print for the error ``e`` (``message``: what one process says after
    ``dissect: error``): None on a rank that stopped because another rank failed and said why;
    on a rank of several, the line names the rank and is left for the others (and torchrun)."""
    ranks = _ranks()
    if ranks is None:
        return f"dissect: error: {message}"
    if isinstance(e, ranks.PeerFailure) and e.told:
        return None   # a collective broken by another rank's failure: that rank printed why
    line = f"dissect: error (rank {ranks.rank()} of {ranks.world_size()}): {message}"
    if not isinstance(e, ranks.PeerFailure):
        ranks.record_failure(line)
    return line


def _say(line: str | None) -> None:
    if line:
        print(line, file=sys.stderr)


def _one_line_warnings(show):
    """``warnings.showwarning`` for a run of the CLI: dissect's own warnings (a skipped
    image) as one line, ``dissect: warning: ...``, on stderr, between the progress bars;
    every other warning as ``show`` (Python's) prints it."""
    from .errors import SkippedImageWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, SkippedImageWarning):
            return show(message, category, filename, lineno, file, line)
        from tqdm.auto import tqdm
        tqdm.write(f"dissect: warning: {message}", file=sys.stderr)
    return showwarning


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warnings(warnings.showwarning)
                return run(args, argv)
        except BaseException:
            if on_main and _ranks() is not None:   # stopping already: torchrun's SIGTERM, sent when
                signal.signal(signal.SIGTERM, signal.SIG_IGN)   # another rank failed, must not cut the report
            raise
    except DissectError as e:
        _say(_fail(e, str(e)))
        return 2
    except BrokenPipeError:  # e.g. `dissect layers vgg16 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in _SYSTEM_ERRNOS:
            _fail(e, f"{type(e).__name__}: {e}")   # (a bug: its traceback follows)
            raise
        where = f" ({e.filename})" if e.filename else ""
        _say(_fail(e, f"{e.strerror or e}{where}; nothing half-written was left in place"))
        return 2
    except KeyboardInterrupt:
        ranks = _ranks()
        if ranks is not None and ranks.peer_failure() is not None:
            return 2   # torchrun's SIGTERM: another rank failed, and its line says why
        where = "" if ranks is None else f" (rank {ranks.rank()} of {ranks.world_size()})"
        print(f"dissect: interrupted{where}; nothing half-written was left in place", file=sys.stderr)
        return 130
    except Exception as e:   # a bug: its traceback, and under torchrun the other ranks told
        _fail(e, f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        ranks = _ranks()
        if ranks is None or not isinstance(e, ranks.PeerFailure):
            raise
        _say(_fail(e, str(e)))   # another rank failed: said by it, or here if it could not
        return 2
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
