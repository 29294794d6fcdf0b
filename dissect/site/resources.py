"""Templates and static assets shipped with dissect.

Installed, ``templates/`` is the package ``dissect._templates`` and ``site_assets/`` is
``dissect._site_assets``; from a source checkout that is not installed they are read from
the repository's top-level folders.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

import jinja2

#: The repository root of a source checkout (this file is ``dissect/site/resources.py``).
_CHECKOUT = Path(__file__).resolve().parent.parent.parent
_FALLBACK = {"dissect._templates": "templates", "dissect._site_assets": "site_assets"}

#: Files of ``site_assets/`` copied into every site's ``assets/`` folder.
ASSETS = ("style.css", "site.js")


def resource_dir(package: str) -> Traversable:
    """The folder of a data package, installed or in a source checkout. Code run from a
    checkout (``pyproject.toml`` beside this ``dissect/``) reads its own checkout's folders,
    even when another checkout of dissect is installed in editable mode."""
    own = _CHECKOUT / _FALLBACK[package]
    if (_CHECKOUT / "pyproject.toml").is_file() and own.is_dir():
        return own
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError:
        return _CHECKOUT / _FALLBACK[package]


class _TraversableLoader(jinja2.BaseLoader):
    """Load templates from a :class:`Traversable` (works inside wheels and zips too)."""

    def __init__(self, root: Traversable) -> None:
        self.root = root

    def get_source(self, environment: jinja2.Environment, template: str):
        """The text of ``template`` (a ``/``-separated path below the root; no ``..``)."""
        node = self.root
        for part in template.split("/"):
            if part in ("", ".", ".."):
                raise jinja2.TemplateNotFound(template)
            node = node.joinpath(part)
        if not node.is_file():
            raise jinja2.TemplateNotFound(template)
        return node.read_text(encoding="utf-8"), None, lambda: True


def environment() -> jinja2.Environment:
    """The Jinja2 environment for the site: autoescape on, undefined names are errors."""
    env = jinja2.Environment(
        loader=_TraversableLoader(resource_dir("dissect._templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "allow_nan": False}
    return env


def asset_bytes(name: str) -> bytes:
    """The bytes of one file of ``site_assets/``."""
    return resource_dir("dissect._site_assets").joinpath(name).read_bytes()


def plotly_js() -> bytes:
    """``plotly.min.js`` as carried by the plotly Python package."""
    return importlib.resources.files("plotly").joinpath("package_data", "plotly.min.js").read_bytes()
