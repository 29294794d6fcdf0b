"""User-facing errors.

A :class:`DissectError` carries a one-line message that says what went wrong and what to
do. The CLI prints it as ``dissect: error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class DissectError(Exception):
    """An error caused by the user's input; the message is one line and actionable."""


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


def unknown_choice(kind: str, name: str, choices: Iterable[str], hint: str = "") -> DissectError:
    """Build the error for an unknown name, listing valid ones nearest first."""
    choices = list(choices)
    ordered = nearest_first(name, choices, limit=12)
    more = f" (and {len(choices) - len(ordered)} more)" if len(choices) > len(ordered) else ""
    msg = f"unknown {kind} {name!r}; valid: {', '.join(ordered)}{more}"
    if hint:
        msg += f". {hint}"
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
