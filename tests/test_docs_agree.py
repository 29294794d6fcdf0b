"""The README's and the guide's commands and stated defaults are the program's.

Every ``dissect ...`` command line of README.md and docs/*.md (code blocks and inline code)
is parsed by the real parser (:func:`dissect.cli.build_parser`) without being run: every flag
exists, every value of a flag with choices is one of them, every registered name (a model, a
segmenter) is registered. A synopsis (``[--flag VALUE]``, ``a|b|c``) is checked flag by flag,
and a literal value in it is a stated default that must be the parser's (or its ``--help``'s).
The prose that says what a plain ``dissect report`` does names every default model, and
docs/cli.md is the parser's ``--help`` today.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from dissect.cli import build_parser
from dissect.data.probe import TOYWORLD_DEFAULT_SIZE
from dissect.experiments.dissection import DissectConfig
from dissect.models.registry import get_model_spec, is_registered
from dissect.pipeline import DEFAULT_MODELS
from dissect.segmenters.registry import list_segmenters

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
FENCE = re.compile(r"^```(\w*)\s*$")
#: Words that stand for a value the reader supplies (never checked as a value).
PLACEHOLDER = re.compile(r"^(\.\.\.|…|[A-Z][A-Z0-9_.,]*(\.\.\.)?|[A-Z]+\.[a-z]+|\$.*|.*[<>].*)$")
#: How the docs name each default model in prose.
MODEL_WORDS = {"toy": ("`toy`", "toy classifier", "toy scene classifier", "both toy models"),
               "toygan": ("`toygan`", "toy generator", "toy gan", "both toy models")}


COMMAND = re.compile(r"^\s*(\S+=\S+\s+|/usr/bin/time\s+|time\s+)*dissect [a-z]|(&&|\||;|-m)\s+dissect [a-z]")


def _commands() -> list[tuple[str, int, str, str | None]]:
    """``(file, line, command, what it is said to do)`` for every ``dissect ...`` command
    (docs/cli.md, the parser's own help, aside): code-block lines (continuations joined; the
    rest of a pipeline or ``&&`` chain dropped) with their trailing comment, else the first
    paragraph after the block; and inline code (said: None; read as a synopsis)."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        block, lang = None, ""
        for i, line in enumerate(lines):
            fence = FENCE.match(line)
            if fence and block is None:
                block, lang = [], fence.group(1)
                continue
            if fence and block is not None:
                if lang in ("", "bash", "sh", "shell", "console"):
                    after = _paragraph_after(lines, i + 1)
                    joined, first = "", None
                    for j, text in block:
                        first = j if not joined else first
                        joined += text.rstrip("\\") + " " if text.rstrip().endswith("\\") else text
                        if text.rstrip().endswith("\\"):
                            continue
                        cmd, comment = _split_comment(joined)
                        if COMMAND.search(cmd):
                            found.append((path.name, first + 1, cmd.strip(), comment or after))
                        joined = ""
                block = None
                continue
            if block is not None:
                block.append((i, line))
                continue
            for span in re.findall(r"`(dissect [a-z][^`]*)`", line):
                found.append((path.name, i + 1, span, None))
    return found


def _paragraph_after(lines: list[str], i: int) -> str:
    while i < len(lines) and not lines[i].strip():
        i += 1
    out = []
    while i < len(lines) and lines[i].strip() and not FENCE.match(lines[i]):
        out.append(lines[i])
        i += 1
    return " ".join(out)


def _split_comment(line: str) -> tuple[str, str]:
    """A shell line and its ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k], line[k + 1:].strip()
    return line, ""


def _argv(cmd: str) -> list[str]:
    """The arguments after ``dissect`` in the shell command ``cmd``."""
    words = shlex.split(cmd.replace("~", "HOME"))
    for stop in ("&&", "||", "|", ";"):
        if stop in words:
            at = words.index(stop)
            words = words[:at] if "dissect" in words[:at] else words[at + 1:]
    start = max(i for i, w in enumerate(words) if w == "dissect")
    return words[start + 1:]


def _subparser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of the (nested) subcommand that ``argv`` names, and the rest of ``argv``."""
    while argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or argv[0] not in subs[0].choices:
            break
        parser, argv = subs[0].choices[argv[0]], argv[1:]
    return parser, argv


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _check_values(flag: str, values: list[str], where: str) -> None:
    """Registered names are registered (a model, a segmenter)."""
    for v in values:
        if PLACEHOLDER.match(v) or ":" in v or "/" in v:
            continue
        if flag == "--model" or flag == "model":
            assert is_registered(v), f"{where}: {v!r} is not a registered model"
        if flag in ("--segmenter",):
            assert v in list_segmenters(), f"{where}: {v!r} is not a registered segmenter"


def _check_synopsis(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    """``[--flag VALUE]`` / ``--flag a|b|c``: the flag exists, each listed choice is valid,
    and a literal value is the stated default (the parser's, or its help's "default ...")."""
    sub, rest = _subparser(parser, argv)
    options = _options(sub)
    text = " ".join(rest)
    stated: dict[str, list[str]] = {}
    for group in re.findall(r"\[([^\[\]]*)\]", text):
        words = group.split()
        for k, w in enumerate(words):
            if w.startswith("--"):
                value = words[k + 1] if k + 1 < len(words) and not words[k + 1].startswith("--") else None
                if value is not None and not PLACEHOLDER.match(value) and "|" not in value:
                    stated.setdefault(w, []).append(value)
    for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text):
        assert flag in options, f"{where}: `{' '.join(argv[:1])}` has no option {flag}"
    for flag, alts in re.findall(r"(--[a-z][a-z0-9-]*) ([^\s\[\]]+\|[^\s\[\]]+)", text):
        action = options[flag]
        names = [a for a in alts.split("|") if a not in ("...", "…") and not PLACEHOLDER.match(a)]
        if action.choices is not None:
            bad = [a for a in names if a not in action.choices]
            assert not bad, f"{where}: {flag} does not accept {bad} (choices: {sorted(action.choices)})"
        _check_values(flag, names, where)
    for flag, values in stated.items():
        action = options[flag]
        _check_values(flag, values, where)
        if action.default is not None and not isinstance(action.default, list):
            assert values == [str(action.default)], \
                f"{where}: states {flag} {' '.join(values)}, the parser's default is {action.default!r}"
        else:
            for v in values:
                assert re.search(rf"default[^)]*\b{re.escape(v)}\b", action.help or ""), \
                    f"{where}: states {flag} {v} as the default; its help says {action.help!r}"


def _check_command(parser: argparse.ArgumentParser, argv: list[str], where: str, inline: bool) -> None:
    if inline or any("[" in w or "|" in w for w in argv) or any(PLACEHOLDER.match(w) for w in argv):
        _check_synopsis(parser, argv, where)
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            assert e.code == 0, f"{where}: the parser refuses it: {err.getvalue().strip().splitlines()[-1:]}"
            return
    _check_values("--model", list(getattr(args, "model", None) or []) if args.command != "layers" else [args.model],
                  where)
    _check_values("--segmenter", [args.segmenter] if getattr(args, "segmenter", None) else [], where)


COMMANDS = _commands()


def test_the_docs_hold_commands():
    files = {f for f, _, _, _ in COMMANDS}
    assert {"README.md", "quickstart.md", "downloads.md"} <= files and len(COMMANDS) > 60


@pytest.mark.parametrize("doc, line, cmd, said", COMMANDS, ids=[f"{f}:{n}" for f, n, _, _ in COMMANDS])
def test_every_documented_command_parses(doc, line, cmd, said):
    _check_command(build_parser(), _argv(cmd), f"{doc}:{line}: {cmd}", inline=said is None)


def _is_plain_report(cmd: str) -> bool:
    argv = _argv(cmd)
    return argv[:1] == ["report"] and "--model" not in argv


PLAIN_REPORTS = [c for c in COMMANDS if _is_plain_report(c[2]) and c[3] is not None]


@pytest.mark.parametrize("doc, line, cmd, said", PLAIN_REPORTS, ids=[f"{f}:{n}" for f, n, _, _ in PLAIN_REPORTS])
def test_what_a_plain_report_does_names_every_default_model(doc, line, cmd, said):
    """Where the docs say which model a ``dissect report`` without ``--model`` runs, they
    name every default model (the toy classifier and the toy generator), never one alone."""
    said = said.lower()
    named = {m for m, words in MODEL_WORDS.items() if any(w.lower() in said for w in words)}
    assert named in (set(), set(DEFAULT_MODELS)), \
        f"{doc}:{line}: `{cmd}` is said to run {sorted(named)}, the default is {list(DEFAULT_MODELS)}: {said!r}"


def test_help_says_the_default_models():
    parser = build_parser()
    report, _ = _subparser(parser, ["report"])
    for text in (report.description, _options(report)["--model"].help):
        for m in DEFAULT_MODELS:
            assert f"`{m}`" in text or re.search(rf"\b{m}\b(?!-)", text), (m, text)
    assert "the toy classifier on toy-world scenes)" not in report.description


def test_readme_models_marked_default_are_the_defaults():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    marked = set(re.findall(r"^- `([\w-]+)` \(default", readme, re.M))
    assert marked == set(DEFAULT_MODELS)


def test_stated_numbers_are_the_defaults():
    """The numbers the README and the quick start state as defaults."""
    parser = build_parser()
    report, _ = _subparser(parser, ["report"])
    opts, d = _options(report), DissectConfig()
    assert (d.quantile, d.iou_threshold, d.top_k, d.batch_size) == (0.005, 0.04, 10, 64)
    assert opts["--iou-threshold"].default == d.iou_threshold and opts["--top-k"].default == d.top_k
    assert opts["--batch-size"].default == d.batch_size and "default 0.005" in opts["--quantile"].help
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for flag, value in (("--quantile", d.quantile), ("--iou-threshold", d.iou_threshold),
                        ("--top-k", d.top_k), ("--batch-size", d.batch_size)):
        assert f"[{flag} {value}]" in readme, flag
    quick = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    scenes = re.search(r"generates ([\d,]+)\s+toy-world scenes \((\d+)×(\d+)", quick)
    assert int(scenes.group(1).replace(",", "")) == TOYWORLD_DEFAULT_SIZE[64] == 2000
    assert int(scenes.group(2)) == get_model_spec("toy").input_size
    assert f"best IoU above\n  {d.iou_threshold}" in quick or f"best IoU above {d.iou_threshold}" in quick
    layers = re.search(r"classifier \(`toy`\) over them, dissects its default layers \(([^)]*)\)", quick)
    assert re.findall(r"`(\w+)`", layers.group(1)) == list(get_model_spec("toy").default_layer)
    gan = re.search(r"at its default layers \(([^)]*)\)", quick)
    assert re.findall(r"`(\w+)`", gan.group(1)) == list(get_model_spec("toygan").default_layer)


def test_cli_reference_is_the_parsers_help():
    """docs/cli.md holds each command's --help as the parser gives it today; regenerate it
    with `python3 docs/hooks/dissect_docs.py`."""
    spec = importlib.util.spec_from_file_location("dissect_docs", ROOT / "docs" / "hooks" / "dissect_docs.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert hooks.CLI_END in committed and "## `dissect report`" in committed
    assert committed == hooks.with_cli_reference(committed), \
        "docs/cli.md is not the parser's --help of today: run `python3 docs/hooks/dissect_docs.py`"
