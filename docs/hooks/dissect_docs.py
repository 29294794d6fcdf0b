"""mkdocs hooks of the user guide (see ``mkdocs.yml``).

* ``docs/cli.md`` holds the ``--help`` of every command, generated from the argparse
  parser between ``<!-- dissect:cli-reference -->`` and ``<!-- dissect:cli-reference-end -->``
  (so that it reads on GitHub too). ``python3 docs/hooks/dissect_docs.py`` rewrites it;
  ``tests/test_docs_agree.py`` fails when the committed text is not what the parser gives,
  and the guide's build puts the parser's text there in any case.
* ``<!-- dissect:defaults -->`` becomes a table of the dissection defaults
  (:class:`dissect.experiments.dissection.DissectConfig`).
* A real example site is built by the project (``dissect report`` on the toy classifier)
  and published under ``example/`` in the guide. ``DISSECT_DOCS_EXAMPLE=/path/to/site``
  uses a site you built instead (for example a larger one in a Pages workflow).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.dissect")

CLI_MARK = "<!-- dissect:cli-reference -->"
CLI_END = "<!-- dissect:cli-reference-end -->"
CLI_PAGE = Path(__file__).resolve().parent.parent / "cli.md"
DEFAULTS_MARK = "<!-- dissect:defaults -->"
EXAMPLE_DIR = "example"
#: The example site: the shipped toy classifier on generated toy-world scenes.
EXAMPLE_ARGS = {"model": "toy", "data_size": 300}

_tmp: tempfile.TemporaryDirectory | None = None


@contextlib.contextmanager
def _columns(n: int):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser, prefix: str):
    for action in parser._actions:  # argparse keeps sub-parsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                yield f"{prefix} {name}", sub, nested
                if nested:
                    yield from _subcommands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    from dissect.cli import build_parser

    parser = build_parser()
    parts = []
    with _columns(96):
        parts.append("## `dissect`\n\n```text\n" + parser.format_help().rstrip() + "\n```\n")
        for name, sub, nested in _subcommands(parser, "dissect"):
            if nested:
                continue
            sub.prog = name
            parts.append(f"## `{name}`\n\n```text\n" + sub.format_help().rstrip() + "\n```\n")
    return "\n".join(parts)


def defaults_table() -> str:
    from dissect.experiments.dissection import DissectConfig

    rows = ["| setting | default | CLI option |", "| --- | --- | --- |"]

    def settings(config, prefix=""):
        """``(name, default)`` of every field, a nested options dataclass's fields expanded."""
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if dataclasses.is_dataclass(value):
                yield from settings(value, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name, value

    for name, default in settings(DissectConfig()):
        opt = "--" + name.replace("_", "-")
        opt = {"--num-workers": "--workers", "--activation-cache-mb": "--cache-budget",
               "--tile-size": "(Python API)", "--top-concepts": "(Python API)",
               "--intervals.replicates": "--bootstrap", "--intervals.seed": "--bootstrap-seed",
               "--intervals.level": "(Python API)"}.get(opt, opt)
        rows.append(f"| `{name}` | `{default!r}` | `{opt}` |" if opt.startswith("--") else
                    f"| `{name}` | `{default!r}` | {opt} |")
    return "\n".join(rows) + "\n"


def with_cli_reference(markdown: str) -> str:
    """``markdown`` with the text between :data:`CLI_MARK` and :data:`CLI_END` (or after a
    lone :data:`CLI_MARK`) replaced by today's :func:`cli_reference`."""
    head, mark, rest = markdown.partition(CLI_MARK)
    if not mark:
        return markdown
    _, end, tail = rest.partition(CLI_END)
    return f"{head}{CLI_MARK}\n\n{cli_reference()}\n{CLI_END}\n" + (tail.lstrip("\n") if end else "")


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARK in markdown:
        markdown = with_cli_reference(markdown)
    if DEFAULTS_MARK in markdown:
        markdown = markdown.replace(DEFAULTS_MARK, defaults_table())
    return markdown


def _build_example(dest: Path) -> Path:
    from dissect.errors import DissectError
    from dissect import report

    notes = dest.parent / "notes.md"
    try:
        import dissect.models
        trained = (Path(dissect.models.__file__).parent / "weights" / "toy_classifier.safetensors").is_file()
        weights = None if trained else "none"
        notes.write_text(
            "This example site was built while building the dissect user guide, with\n"
            f"`dissect report --model toy --data-size {EXAMPLE_ARGS['data_size']} --reproducible`"
            + ("." if trained else " and **random weights** (`--weights none`): the trained toy weights "
               "were not in this checkout, so few units are detectors.") + "\n",
            encoding="utf-8")
        report(**EXAMPLE_ARGS, weights=weights, out=dest, reproducible=True, notes=notes,
               command=f"dissect report --model toy --data-size {EXAMPLE_ARGS['data_size']} --reproducible"
               + ("" if trained else " --weights none"), progress=False)
    except DissectError as exc:
        raise SystemExit(f"dissect docs: cannot build the example site: {exc}") from exc
    return dest


def on_files(files, config):
    from mkdocs.structure.files import File

    global _tmp
    given = os.environ.get("DISSECT_DOCS_EXAMPLE")
    if given:
        site = Path(given)
        if not (site / "index.html").is_file():
            raise SystemExit(f"dissect docs: DISSECT_DOCS_EXAMPLE={given} holds no site (no index.html)")
    else:
        _tmp = tempfile.TemporaryDirectory(prefix="dissect-docs-example-")
        log.info("dissect: building the example site (toy classifier) for the guide")
        site = _build_example(Path(_tmp.name) / "site")
    for path in sorted(site.rglob("*")):
        rel = path.relative_to(site).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):
            continue
        files.append(File.generated(config, f"{EXAMPLE_DIR}/{rel}", abs_src_path=str(path)))
    return files


def on_post_build(config) -> None:
    global _tmp
    if _tmp is not None:
        _tmp.cleanup()
        _tmp = None


if __name__ == "__main__":   # python3 docs/hooks/dissect_docs.py: rewrite docs/cli.md from the parser
    import sys
    sys.path.insert(0, str(CLI_PAGE.parent.parent))   # this checkout's dissect
    text = CLI_PAGE.read_text(encoding="utf-8")
    new = with_cli_reference(text)
    if new != text:
        CLI_PAGE.write_text(new, encoding="utf-8")
    print(f"{CLI_PAGE}: {'rewritten' if new != text else 'already current'}")
