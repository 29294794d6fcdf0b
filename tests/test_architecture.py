"""The package's shape: no import circle, no import of another module's private names, and
the public API as the README writes it."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import dissect

PKG = Path(dissect.__file__).resolve().parent
REPO = PKG.parent


def module_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Every module of the package with the package modules it imports (module-level and
    function-local imports alike, package ``__init__`` modules included), and the imports of
    another module's private names."""
    files = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = f
    edges: dict[str, set[str]] = {m: set() for m in files}
    private = []
    for mod, f in files.items():
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [(f"{source}.{a.name}", None) if f"{source}.{a.name}" in files else (source, a.name)
                           for a in node.names]
            else:
                continue
            for target, name in targets:
                while target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in files and target != mod:
                    edges[mod].add(target)
                    if name and name.startswith("_") and not name.startswith("__"):
                        private.append(f"{mod} imports {target}.{name}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_circle_and_a_private_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    edges, _ = module_graph()
    assert len(edges) > 30
    assert "dissect.pipeline" in edges and "dissect.experiments.dissection" in edges["dissect.pipeline"]
    assert cycles(edges) == []


def test_no_imports_of_private_names():
    _, private = module_graph()
    assert private == []


def test_import_dissect_is_light():
    """``import dissect`` (and so the command line's start) does not load torch; the public
    API is there all the same, loaded on first use."""
    code = ("import sys, dissect; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(dissect.report) and callable(dissect.from_module); "
            "assert callable(dissect.dissect_layers); print(dissect.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dissect.__version__


def test_model_registry_needs_no_torch():
    tree = ast.parse((PKG / "models" / "registry.py").read_text(encoding="utf-8"))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and not _type_checking_only(tree, n)}
    assert "torch" not in imported and "torchvision" not in imported


def _type_checking_only(tree: ast.Module, node: ast.AST) -> bool:
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
            if any(node is n for b in block.body for n in ast.walk(b)):
                return True
    return False


def readme_python_api() -> str:
    """The README's Python API example (the code block after the 'From Python' heading)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_runs_as_written(tmp_path):
    code = readme_python_api()
    assert "dissect.report(" in code and "dissect.dissect_layers(" in code and "dissect.from_module(" in code
    env = {**os.environ, "DISSECT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = tmp_path / "site" / "index.html"
    assert index.is_file()
    assert (tmp_path / "site" / "mynet" / "results.json").is_file()
    # the example prints the first unit's threshold from dissect_layers: the same as the site's
    import json
    results = json.loads((tmp_path / "site" / "mynet" / "results.json").read_text())
    site_threshold = results["layers"][0]["units"][0]["threshold"]
    printed = float(proc.stdout.strip().splitlines()[-1])
    assert abs(printed - site_threshold) <= 1e-5 * max(1.0, abs(site_threshold))


def test_every_package_is_installed():
    """A new subpackage must be in pyproject.toml's package list, or `pip install .` (not -e)
    would leave it out."""
    tomllib = __import__("pytest").importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PKG.parent).parts) for p in PKG.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
