"""Several weights of one architecture: expanding ``--weights`` globs, reading training steps
from checkpoint names, and the comparison weights shipped with the toy classifier.

No torch here: these are names and JSON records.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from dissect.errors import DissectError
from dissect.models.weights import WEIGHTS_DIR

#: The record of the toy classifier's shipped training snapshots (``dissect train toy-classifier --snapshots``).
TOY_SNAPSHOTS_RECORD = WEIGHTS_DIR / "toy_classifier_snapshots.json"
#: The toy classifier fine-tuned on a changed task (``dissect train toy-finetune``).
TOY_FINETUNED = WEIGHTS_DIR / "toy_finetuned.safetensors"

_NUMBER = re.compile(r"\d+")
_GLOB = re.compile(r"[*?\[]")


def expand_weights(choices: Sequence[str]) -> list[str]:
    """Each ``--weights`` choice, globs expanded (sorted); a glob that matches nothing is an error."""
    out: list[str] = []
    for choice in choices:
        if _GLOB.search(choice) and not Path(choice).exists():
            found = sorted(glob.glob(str(Path(choice).expanduser())))
            if not found:
                raise DissectError(f"--weights {choice!r} matches no file")
            out += found
        else:
            out.append(choice)
    if len(set(out)) != len(out):
        raise DissectError(f"--weights names the same file twice: {', '.join(out)}")
    return out


def steps_from_names(paths: Sequence[str]) -> list[int] | None:
    """Training steps read from checkpoint names (``ckpt-100.pth``, ``ckpt-200.pth``: the
    last number of each file name), or None unless every name has one, the names differ
    only in it, and the steps are distinct."""
    if len(paths) < 2:
        return None
    stems, steps = set(), []
    for p in paths:
        name = Path(p).name
        found = list(_NUMBER.finditer(name))
        if not found:
            return None
        m = found[-1]
        stems.add(name[:m.start()] + "#" + name[m.end():])
        steps.append(int(m.group()))
    if len(stems) != 1 or len(set(steps)) != len(steps):
        return None
    return steps


def weights_section_name(path: str) -> str:
    """The site section of one of several weights: its file name without the extension."""
    name = Path(path).name
    for ext in (".safetensors", ".pth", ".pt"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


@dataclass(frozen=True)
class ShippedWeights:
    """Weights shipped for comparisons: a file, its label, its training step (or None), its role."""

    path: Path
    name: str
    step: int | None
    role: str


def toy_comparison_weights() -> tuple[list[ShippedWeights], int | None, str | None]:
    """The toy classifier's shipped snapshots and its fine-tuned weights, the step of the
    shipped trained weights (the end of the snapshots' training run) and the record's note
    on how the snapshot run relates to the shipped weights' run; ``([], None, None)`` when
    the files are missing."""
    try:
        record = json.loads(TOY_SNAPSHOTS_RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], None, None
    snaps = [s for s in record.get("snapshots", []) if (WEIGHTS_DIR / s["file"]).is_file()]
    out = [ShippedWeights(WEIGHTS_DIR / s["file"], f"toy @ step {s['step']}", int(s["step"]), "snapshot")
           for s in snaps]
    if TOY_FINETUNED.is_file():
        out.append(ShippedWeights(TOY_FINETUNED, "toy fine-tuned (object presence)", None, "finetuned"))
    shipped_run = record.get("shipped_run") or {}
    note = None if shipped_run.get("same_epochs") or not shipped_run.get("note") else (
        f"The training snapshots (steps {', '.join(str(s['step']) for s in snaps)}) come from a rerun of "
        f"`{shipped_run.get('command')}`, the command that trained the shipped weights (step "
        f"{record.get('total_steps')}); {shipped_run['note']}.")
    return out, record.get("total_steps"), note
