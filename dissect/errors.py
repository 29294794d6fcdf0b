"""User-facing errors and warnings.

A :class:`DissectError` carries a one-line message that says what went wrong and what to
do. The CLI prints it as ``dissect: error: <message>`` and exits with status 2.

An image that cannot be read is skipped, counted in the report and warned about once
(:func:`warn_skipped_image`, a :class:`SkippedImageWarning`); the CLI prints it as one line,
``dissect: warning: skipped unreadable image <file>: <reason>``, on stderr.
"""

from __future__ import annotations

import difflib
import os
import threading
import warnings
from typing import Iterable


class DissectError(Exception):
    """An error caused by the user's input; the message is one line and actionable."""


class SkippedImageWarning(UserWarning):
    """An image that could not be read was skipped (and counted in the report)."""


_WARNED: set[tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_skipped_image(path: str | os.PathLike, reason: str) -> bool:
    """Warn that the image ``path`` was skipped because of ``reason`` (one line), once per
    file and reason in this process, whichever part of a run (an image folder's labeling,
    the dissection's loader, the ablation's) met it first. Returns whether it warned."""
    key = (os.path.abspath(os.fspath(path)), " ".join(str(reason).split()))
    with _WARNED_LOCK:
        if key in _WARNED:
            return False
        _WARNED.add(key)
    warnings.warn(SkippedImageWarning(f"skipped unreadable image {os.fspath(path)}: {key[1]}"), stacklevel=2)
    return True


def nearest_first(name: str, choices: Iterable[str], limit: int = 12) -> list[str]:
    """Return ``choices`` ordered by similarity to ``name`` (most similar first)."""
    choices = list(dict.fromkeys(choices))
    lname = name.lower()

    def score(c: str) -> float:
        s = difflib.SequenceMatcher(None, lname, c.lower()).ratio()
        if lname and lname in c.lower():
            s += 0.5
        return -s

    return sorted(choices, key=score)[:limit]


def unknown_choice(kind: str, name: str, choices: Iterable[str], hint: str = "",
                   where: str = "") -> DissectError:
    """Build the error for an unknown name, listing valid ones nearest first:
    ``unknown {kind} {name!r} {where}; valid: a, b, c (and n more); {hint}``. ``where`` says
    where the name was looked up (``in module mynet``), ``hint`` what else the user can do
    (a lower-case clause: ``or give your own as package.module:callable``)."""
    choices = list(choices)
    ordered = nearest_first(name, choices, limit=12)
    more = f" (and {len(choices) - len(ordered)} more)" if len(choices) > len(ordered) else ""
    msg = f"unknown {kind} {name!r}{' ' + where if where else ''}; valid: {', '.join(ordered) or 'none'}{more}"
    if hint:
        msg += f"; {hint}"
    return DissectError(msg)


class SkipError(DissectError):
    """A step that is skipped rather than fatal (e.g. the ablation without labeled images).

    ``reason`` is what a published page or ``results.json`` may carry: what is missing, with no
    local path and no option name. ``cli`` and ``python`` say what to do, in the terms of the
    command line and of the Python API; ``str(error)`` is the command line's full message.
    """

    def __init__(self, reason: str, cli: str = "", python: str = ""):
        self.reason = reason
        self.advice = {"cli": cli, "python": python or cli}
        super().__init__(f"{reason}; {cli}" if cli else reason)

    def advise(self, frontend: str) -> str:
        """The full message for ``frontend`` (``"cli"`` or ``"python"``)."""
        advice = self.advice.get(frontend) or ""
        return f"{self.reason}; {advice}" if advice else self.reason
