"""Both `pip install .` and `pip install -e .` must find the templates, assets and weights."""

import importlib.resources
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_resources_importable():
    assert (importlib.resources.files("dissect._templates") / "base.html").is_file()
    assert (importlib.resources.files("dissect._site_assets") / "style.css").is_file()


@pytest.mark.slow
def test_wheel_carries_templates_assets_and_weights(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("netdissect_toolkit-*.whl"))).namelist())
    for t in (ROOT / "templates").glob("*.html"):
        assert f"dissect/_templates/{t.name}" in names
    for a in (ROOT / "site_assets").glob("*.*"):
        assert f"dissect/_site_assets/{a.name}" in names
    assert "dissect/models/weights/toy_classifier.safetensors" in names
    assert "dissect/models/weights/toy_classifier.json" in names
    for model in ("toy_generator", "toy_segmenter", "toy_finetuned"):
        assert f"dissect/models/weights/{model}.safetensors" in names
        assert f"dissect/models/weights/{model}.json" in names
    # the toy classifier's training snapshots, for the comparison page
    assert "dissect/models/weights/toy_classifier_snapshots.json" in names
    assert "dissect/models/weights/toy_classifier_step_00000.safetensors" in names


def test_distribution_name_is_not_the_forensics_framework():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'name = "netdissect-toolkit"' in text and 'dissect = "dissect.cli:main"' in text


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """The built wheel, installed into a new virtual environment (torch from the system
    site, nothing downloaded), runs `dissect` from the venv with the templates, assets and
    toy weights it carries: a small report is written.

    The system site-packages are added to the venv as a plain path (a ``.pth`` line), not
    with ``--system-site-packages``: a checkout installed there in editable mode (``pip
    install -e .``, as in development and CI) registers an import hook that would otherwise
    win over the wheel."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True)
    wheel = next(wheels.glob("netdissect_toolkit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "dissect"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "_system_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the checkout
    env["DISSECT_CACHE"] = str(tmp_path / "cache")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, env=env, cwd=tmp_path)
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    where = subprocess.run([str(py), "-c", "import dissect, importlib.resources as r; print(dissect.__file__); "
                            "print(r.files('dissect._templates') / 'base.html')"], **run)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(venv)), where.stdout   # the wheel's files, not a checkout's
    assert subprocess.run([str(exe), "--help"], **run).returncode == 0
    done = subprocess.run([str(exe), "report", "--model", "toy", "--layer", "conv4_2", "--data-size", "8",
                           "--no-ablation", "--quiet", "--out", str(tmp_path / "site")], **run)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "toy" / "index.html").is_file()
    assert (tmp_path / "site" / "assets" / "style.css").is_file()
