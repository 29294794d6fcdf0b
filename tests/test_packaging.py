"""Both `pip install .` and `pip install -e .` must find the templates, assets and weights."""

import importlib.resources
import subprocess
import sys
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
    names = set(zipfile.ZipFile(next(tmp_path.glob("dissect-*.whl"))).namelist())
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
